"""Peers: other libraries doing the same work, each optional.

Kernel peer: ``torch`` (PyTorch on the CPU) computes each kernel with the fused
ATen op where one exists, else a short composition of them, as a PyTorch user
would write it.  Epoch peers train the same MLP (ReLU between ``Linear``
layers, softmax cross-entropy mean, plain SGD) on the same samples from the
same initial weights, drawing the same order each epoch:

    torch          PyTorch eager: gather by index, forward, backward, ``optim.SGD``
    torch.compile  the same step compiled by ``torch.compile`` (inductor, static shapes)
    jax.jit        one jitted step (gather, value_and_grad, update) per batch
    jax.scan       ``jax.lax.scan`` over every batch of the epoch: one call per epoch

``numpy`` is not a peer: it is fastsgd's reference backend and the baseline.
Each trainer's ``epoch(check_steps)`` returns, once the work is done, the mean
training loss, the held-out loss (as ``Learner.fit(1)`` reports them) and the
losses of the first ``check_steps`` steps.
"""
from __future__ import annotations

import functools
import importlib.util
import shutil

import numpy as np

from .cases import LR

KERNEL_PEERS = ("torch",)
EPOCH_PEERS = ("torch", "torch.compile", "jax.jit", "jax.scan")
_INSTALL = "pip install 'fastsgd[peers]'"


def status(name: str) -> bool | str:
    """``True`` when peer ``name`` can run here, else the reason it cannot."""
    if name not in EPOCH_PEERS:
        raise ValueError(f"peer: unknown name {name!r}; expected one of {', '.join(EPOCH_PEERS)}")
    if name.startswith("torch") and importlib.util.find_spec("torch") is None:
        return f"PyTorch is not installed ({_INSTALL})"
    if name == "torch.compile" and not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        return "torch.compile needs a C++ compiler (g++ or clang++) for its CPU code"
    if name.startswith("jax") and (importlib.util.find_spec("jax") is None
                                   or importlib.util.find_spec("jaxlib") is None):
        return f"JAX is not installed ({_INSTALL})"
    return True


# ----------------------------------------------------------------- kernels
def _torch():
    import torch
    return torch


def _mnist_loss_forward(torch, preds, targets):
    s = torch.sigmoid(preds)
    return torch.where(targets == 1, 1 - s, s).mean().item()


def _mnist_loss_backward(torch, preds, targets, dpreds):
    s = torch.sigmoid(preds)
    return torch.mul(s * (1 - s), (1 - 2 * targets) / len(targets), out=dpreds)


def _cross_entropy_backward(torch, logits, labels, dlogits):
    g = torch.softmax(logits, dim=1)
    g[torch.arange(len(labels)), labels] -= 1
    return torch.div(g, len(labels), out=dlogits)


TORCH_KERNELS = {
    "matmul": lambda torch, a, b, out: torch.matmul(a, b, out=out),
    "matmul_backward_input": lambda torch, dy, w, dx: torch.matmul(dy, w.T, out=dx),
    "matmul_backward_weight": lambda torch, x, dy, dw: torch.matmul(x.T, dy, out=dw),
    "bias_backward": lambda torch, dy, db: torch.sum(dy, 0, out=db),
    "sigmoid_forward": lambda torch, x, out: torch.sigmoid(x, out=out),
    "sigmoid_backward": lambda torch, y, dy, dx:
        torch.ops.aten.sigmoid_backward.grad_input(dy, y, grad_input=dx),
    "relu_forward": lambda torch, x, out: torch.clamp(x, min=0.0, out=out),
    "relu_backward": lambda torch, x, dy, dx:
        torch.ops.aten.threshold_backward.grad_input(dy, x, 0.0, grad_input=dx),
    "tanh_forward": lambda torch, x, out: torch.tanh(x, out=out),
    "tanh_backward": lambda torch, y, dy, dx:
        torch.ops.aten.tanh_backward.grad_input(dy, y, grad_input=dx),
    "mnist_loss_forward": _mnist_loss_forward,
    "mnist_loss_backward": _mnist_loss_backward,
    "cross_entropy_forward": lambda torch, logits, labels:
        torch.nn.functional.cross_entropy(logits, labels).item(),
    "cross_entropy_backward": _cross_entropy_backward,
    "sgd_update": lambda torch, param, grad: param.add_(grad, alpha=-LR),
}


def torch_kernel(kernel: str, inputs, outputs):
    """(fn, result): ``fn()`` runs ``kernel`` in PyTorch on copies of ``inputs``;
    ``result(value)`` is what to compare with the reference."""
    torch = _torch()
    args = [torch.from_numpy(x.copy()) for x in inputs]
    outs = [torch.empty(shape, dtype=torch.float32) for shape, _ in outputs]
    call = functools.partial(TORCH_KERNELS[kernel], torch, *args, *outs)
    produced = args[0] if kernel == "sgd_update" else (outs[0] if outs else None)
    return call, lambda value: produced.numpy() if produced is not None else value


# ------------------------------------------------------------------ epochs
class TorchEpoch:
    """The MLP in PyTorch.  ``compiled``: ``torch.compile`` compiles the forward pass and
    loss (its backward with it, static shapes) and the optimiser's step."""

    def __init__(self, data, weights, bs: int, seed: int, compiled: bool = False):
        torch = self.torch = _torch()
        self.x, self.y = torch.from_numpy(data.x), torch.from_numpy(data.y)
        self.vx, self.vy = torch.from_numpy(data.vx), torch.from_numpy(data.vy)
        layers = []
        for i in range(0, len(weights), 2):   # fastsgd stores w as (I, O), PyTorch as (O, I)
            w, b = weights[i], weights[i + 1]
            linear = torch.nn.Linear(*w.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(w.T.copy()))
                linear.bias.copy_(torch.from_numpy(b))
            layers += [linear, torch.nn.ReLU()]
        self.model = torch.nn.Sequential(*layers[:-1])
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.bs, self.rng = bs, np.random.default_rng(seed)
        self.loss_of, self.update = self._loss, self.opt.step
        if compiled:
            self.loss_of = torch.compile(self._loss, dynamic=False)
            self.update = torch.compile(self.opt.step)

    def _loss(self, idx):
        return self.torch.nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx])

    def epoch(self, check_steps: int = 0):
        """(mean training loss, held-out loss, the first ``check_steps`` step losses)."""
        torch, n, bs = self.torch, len(self.x), self.bs
        order = torch.from_numpy(self.rng.permutation(n))
        total, first = 0.0, []
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            loss = self.loss_of(idx)
            self.opt.zero_grad()
            loss.backward()
            self.update()
            value = loss.item()
            total += value * len(idx)
            if len(first) < check_steps:
                first.append(value)
        with torch.no_grad():
            valid = torch.nn.functional.cross_entropy(self.model(self.vx), self.vy).item()
        return total / n, valid, first


class JaxEpoch:
    """The MLP in JAX; ``scan``: the whole epoch is one ``lax.scan`` in one jitted call."""

    def __init__(self, data, weights, bs: int, seed: int, scan: bool = False):
        import jax
        import jax.numpy as jnp
        self.jax = jax
        self.x, self.y = jnp.asarray(data.x), jnp.asarray(data.y.astype(np.int32))
        self.vx, self.vy = jnp.asarray(data.vx), jnp.asarray(data.vy.astype(np.int32))
        self.params = [jnp.asarray(w) for w in weights]
        self.bs, self.rng, self.n = bs, np.random.default_rng(seed), len(data.x)

        def loss_fn(params, xb, yb):
            h = xb
            for i in range(0, len(params), 2):
                h = h @ params[i] + params[i + 1]
                if i + 2 < len(params):
                    h = jnp.maximum(h, 0.0)
            logp = jax.nn.log_softmax(h)
            return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

        def sgd(params, x, y, idx):
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            return [p - LR * g for p, g in zip(params, grads)], loss

        def step(params, total, x, y, order, start, size):
            # order (N,) int32 -> the batch's rows order[start:start + size]
            params, loss = sgd(params, x, y, jax.lax.dynamic_slice(order, (start,), (size,)))
            return params, total + loss * size, loss

        def whole_epoch(params, x, y, order):
            full = self.n // bs

            def body(params, idx):
                return sgd(params, x, y, idx)

            # the full batches: order[:full*bs] as (full, bs) rows; then the last, smaller one
            params, losses = jax.lax.scan(body, params, order[:full * bs].reshape(full, bs))
            total = jnp.sum(losses) * bs
            if self.n % bs:
                params, loss = sgd(params, x, y, order[full * bs:])
                total = total + loss * (self.n % bs)
            return params, total, losses

        self.valid = jax.jit(loss_fn)
        if scan:
            self.whole_epoch = jax.jit(whole_epoch, donate_argnums=0)
        else:
            self.whole_epoch = None
            self.step = jax.jit(step, donate_argnums=(0, 1), static_argnames="size")

    def epoch(self, check_steps: int = 0):
        """(mean training loss, held-out loss, the first ``check_steps`` step losses)."""
        order = self.jax.numpy.asarray(self.rng.permutation(self.n).astype(np.int32))
        if self.whole_epoch is not None:
            self.params, total, losses = self.whole_epoch(self.params, self.x, self.y, order)
            first = losses[:check_steps]
        else:
            total, first = self.jax.numpy.float32(0.0), []
            for start in range(0, self.n, self.bs):
                size = min(self.bs, self.n - start)
                self.params, total, loss = self.step(self.params, total, self.x, self.y, order,
                                                     start, size=size)
                if len(first) < check_steps:
                    first.append(loss)
        valid = self.valid(self.params, self.vx, self.vy)
        return float(total) / self.n, float(valid), [float(v) for v in first]


def epoch_trainer(name: str, data, weights, bs: int, seed: int):
    """The trainer of epoch peer ``name`` (see ``EPOCH_PEERS``)."""
    reason = status(name)
    if reason is not True:
        raise RuntimeError(f"{name}: {reason}")
    if name.startswith("torch"):
        return TorchEpoch(data, weights, bs, seed, compiled=name == "torch.compile")
    return JaxEpoch(data, weights, bs, seed, scan=name == "jax.scan")
