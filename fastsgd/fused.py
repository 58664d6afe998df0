"""The fused training path: a model, its loss and SGD compiled into one layer program.

``plan(model, loss, opt, dl)`` turns a ``Sequential`` of ``Linear``, ``ReLU``,
``Sigmoid`` and ``Tanh`` layers of any depth, a loss whose ``kind`` is
``mnist_loss``, ``cross_entropy`` or ``mse``, and ``SGD`` into a ``LayerProgram``:
a declared table of layers (``fastsgd.backends.program``) and three flat blocks
holding every parameter, gradient and velocity.  The model's parameters and the
optimiser's velocities become views into those blocks, so the fused path and the
layer-by-layer path share the same memory.  Each epoch is then one call of the
backend's ``train_epoch`` kernel, which walks the table: forward over the layers,
the loss, backward in reverse, one SGD update of the whole block.  It draws the
same batch order from the DataLoader and runs the same kernels in the same order
as the layer path, so the two agree to rounding.

When a combination cannot run fused, ``plan`` raises ``NotFusable`` saying why
(``reason`` returns that text, or None).
"""
from __future__ import annotations

import math
import time

import numpy as np

from .backends import program as prog
from .backends import skip_value_checks
from .layers import Linear, Module, Sequential

__all__ = ["LayerProgram", "NotFusable", "plan", "reason"]



def _kind_name(layer) -> str | None:
    """The registry's kind (``program.LAYER_KINDS``) of a fastsgd layer, or None: Linear,
    or an activation class declaring a registered ``kind``."""
    if type(layer) is Linear:
        return "linear"
    kind = getattr(type(layer), "kind", None)
    record = prog.LAYERS.get(prog.LAYER_KINDS.get(kind, -1)) if isinstance(kind, str) else None
    if record is None or record.saves == "params" or not isinstance(layer, Module):
        return None
    return kind


class NotFusable(ValueError):
    """This model, loss, optimiser or backend cannot train on the fused path; the message says why."""


BLOCK_ALIGNMENT = 64  # bytes: a cache line, and one AVX-512 vector


def _aligned_concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    """The float32 arrays, flattened end to end into one vector whose first element
    starts a 64-byte line.

    NumPy's large arrays start 16 bytes into a page; the matmuls read a weight in place,
    and AVX-512 loads that straddle two cache lines made the forward product ~20% slower.
    """
    itemsize = np.dtype(np.float32).itemsize
    size = sum(a.size for a in arrays)
    buffer = np.empty(size + BLOCK_ALIGNMENT // itemsize, np.float32)
    start = (-buffer.ctypes.data % BLOCK_ALIGNMENT) // itemsize
    block = buffer[start:start + size]
    np.concatenate([a.reshape(-1) for a in arrays], out=block)
    return block


class LayerProgram:
    """A model + loss + SGD laid out for a backend's ``train_epoch`` kernel.

    ``layers`` (L, 4) is the declared table, ``kinds`` and ``widths`` its layer
    names and activation widths, ``loss`` the loss kind; ``params``, ``grads`` and
    ``velocities`` are the flat blocks (P,) on the backend.
    """

    def __init__(self, model: Sequential, loss_kind: str, opt, dl):
        self.backend = model.backend
        self.model, self.opt, self.dl = model, opt, dl
        self.kinds = tuple(_kind_name(layer) for layer in model.layers)
        self.layers, self.n_params = prog.layer_table(
            [(kind, *_sizes(layer, width)) for kind, layer, width
             in zip(self.kinds, model.layers, _input_widths(model))])
        self.widths = prog.widths(self.layers)
        self.loss = loss_kind
        self.loss_kind = prog.LOSS_KINDS[loss_kind]
        self._rows = None
        # this program's shape in _STEPS_PER_CALL (see run)
        self._part_key = (self.backend.name, self.layers.tobytes(), loss_kind, dl.bs)
        self._point_parameters()

    def __repr__(self):
        return (f"LayerProgram({' -> '.join(map(str, self.widths))}, "
                f"layers={list(self.kinds)}, loss={self.loss}, params={self.n_params})")

    def _point_parameters(self):
        """Copy parameters, gradients and velocities into flat blocks and point them there."""
        backend, params = self.backend, self.model.parameters()
        opt_velocities = self.opt.velocities()
        blocks = []
        for arrays in ([p.value for p in params], [p.grad_value for p in params], opt_velocities):
            host = [np.zeros(p.value.shape, np.float32) if a is None else backend.to_numpy(a)
                    for a, p in zip(arrays, params)]
            blocks.append(backend.asarray(_aligned_concatenate(host)))
        self.params, self.grads, self.velocities = blocks
        offset, views = 0, []
        for p in params:
            size = int(np.prod(p.value.shape))
            views.append(tuple(block[offset:offset + size].reshape(p.value.shape)
                               for block in blocks))
            offset += size
        for p, (value, grad, _) in zip(params, views):
            p.value, p.grad_value = value, grad
        self.opt.set_velocities([velocity for _, _, velocity in views])
        self._views = views

    def _still_pointed(self) -> bool:
        """Whether the model and optimiser still use this program's blocks (no reload since)."""
        params, velocities = self.model.parameters(), self.opt.velocities()
        return len(params) == len(self._views) and all(
            p.value is value and p.grad_value is grad and v is velocity
            for p, v, (value, grad, velocity) in zip(params, velocities, self._views))

    def bind(self) -> None:
        """Point the model's parameters and the optimiser's velocities at this program's
        blocks again, when they were replaced since (a checkpoint loaded, say)."""
        if not self._still_pointed():
            self._point_parameters()

    def step(self, x, targets, lr, grads=None, momentum=0.0, weight_decay=0.0,
             velocities=None) -> float:
        """One SGD step on the batch ``x`` (B, I) with the loss's ``targets`` (all B rows
        of it, one batch); ``grads`` (P,), this program's block by default, receives the
        batch's mean gradient.  Returns the batch's loss (the step is skipped when it is
        not finite)."""
        n = x.shape[0]
        if self._rows is None or self._rows.shape[0] < n:
            self._rows = np.arange(max(n, 1), dtype=np.int64)
        losses = self.backend.train_epoch(
            self.layers, self.loss_kind, x, targets, self._rows[:n], n,
            np.array([lr], np.float32), self.params, self.grads if grads is None else grads,
            velocities, momentum, weight_decay)
        return float(losses[0])

    def gradient(self, x, targets, grads=None) -> float:
        """The mean loss of the batch ``x`` / ``targets`` and its gradient w.r.t. every
        parameter, into ``grads`` (P,) (this program's block by default); the
        parameters stay as they are."""
        return self.step(x, targets, 0.0, grads)

    def run(self, lrs) -> np.ndarray:
        """One epoch with learning rate ``lrs[step]``; returns the loss of each step run.

        Stops after the first step whose loss is not finite (its loss is the last).  The
        epoch runs as compiled calls of about ``PART_SECONDS`` each, so that Ctrl-C, which
        Python raises between them, lands within a part, not at the epoch's end.  The
        first calls of a program's shape are shorter, to measure (1 step, then up to 8
        times more each call); later ones, in this fit or the next, start from the size
        the last call measured.
        """
        self.bind()
        dl, opt = self.dl, self.opt
        order = self.backend.asarray(dl.next_order(), dtype=np.int64)
        lrs = np.asarray(lrs, np.float32)
        bs, steps = dl.bs, len(lrs)
        if steps != math.ceil(order.shape[0] / bs):
            raise ValueError(f"lrs: expected {math.ceil(order.shape[0] / bs)} rates, one a "
                             f"step, got {steps}")
        losses = np.zeros(steps)
        done = 0
        with skip_value_checks():  # the data was checked once by the DataLoader
            while done < steps:
                part = _STEPS_PER_CALL.get(self._part_key, 1)
                end = min(steps, done + part)
                started = time.perf_counter()
                ran = self.backend.train_epoch(
                    self.layers, self.loss_kind, dl.x, dl.y, order[done * bs:end * bs], bs,
                    lrs[done:end], self.params, self.grads, self.velocities, opt.momentum,
                    opt.weight_decay, losses=losses[done:end])
                if len(ran) < end - done:             # a loss that is not finite: stop
                    return losses[:done + len(ran)]
                per_step = max(time.perf_counter() - started, 1e-9) / (end - done)
                _STEPS_PER_CALL[self._part_key] = max(1, min(8 * part,
                                                             int(PART_SECONDS / per_step)))
                done = end
        return losses


#: About how long each compiled call of a fused epoch runs (``LayerProgram.run``): the
#: longest a Ctrl-C waits.  Each call costs a few checks (tens of microseconds).
PART_SECONDS = 0.1

#: The steps of a compiled call that took about ``PART_SECONDS`` last, by program shape
#: (backend, layer table, loss, batch size): a new ``fit`` starts from them.
_STEPS_PER_CALL: dict = {}


def _input_widths(model) -> list[int]:
    """The width entering each layer: from the Linear layers, carried through activations."""
    width, widths = model.n_in, []
    for layer in model.layers:
        widths.append(width)
        if isinstance(layer, Linear):
            width = layer.n_out
    return widths


def _sizes(layer, width) -> tuple[int, int]:
    return (layer.n_in, layer.n_out) if isinstance(layer, Linear) else (width, width)


def reason(model, loss_func, opt, dl) -> str | None:
    """Why this combination cannot train fused, or None when it can."""
    from .optim import SGD
    backend = getattr(model, "backend", None)
    if backend is None or not backend.supports("train_epoch"):
        name = getattr(backend, "name", "?")
        return f"backend {name!r} has no fused train_epoch kernel"
    if not isinstance(model, Sequential):
        return f"the model is a {type(model).__name__}, not a Sequential"
    for i, layer in enumerate(model.layers):
        if _kind_name(layer) is None:
            names = ", ".join(kind.layer for kind in prog.LAYERS.values())
            return f"layer {i} is a {type(layer).__name__}; a program holds {names}"
    if not any(isinstance(layer, Linear) for layer in model.layers):
        return "the model has no Linear layer"
    if any(p.value.dtype != np.float32 for p in model.parameters()):
        return "the parameters are not float32"
    width = model.n_in
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Linear):
            if layer.n_in != width:
                return f"layer {i} takes {layer.n_in} features but receives {width}"
            width = layer.n_out
    kind = getattr(loss_func, "kind", None)
    if kind not in prog.LOSS_KINDS:
        return (f"loss {loss_func!r} declares no fused kind (its kind is {kind!r}; the fused "
                f"path runs {', '.join(prog.LOSS_KINDS)})")
    if type(opt) is not SGD:
        return f"the optimiser is a {type(opt).__name__}, not fastsgd.SGD"
    if getattr(dl, "shuffle", None) is None or not hasattr(dl, "next_order"):
        return "the training DataLoader cannot give its batch order"
    return None


def plan(model, loss_func, opt, dl) -> LayerProgram:
    """The ``LayerProgram`` for training ``model`` with ``loss_func`` and ``opt`` on ``dl``.

    ``model`` must already be on its backend (``model.to(backend)``).  Raises
    ``NotFusable`` with the reason when the fused path cannot run it.
    """
    why = reason(model, loss_func, opt, dl)
    if why:
        raise NotFusable(why)
    return LayerProgram(model, loss_func.kind, opt, dl)
