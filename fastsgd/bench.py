"""Benchmarks of every kernel, and of a whole training epoch, on every backend.

Shared by ``fastsgd bench`` and the pytest-benchmark suites in ``benchmarks/``:

    from fastsgd import bench
    rows = bench.run_bench(kernels="matmul*", sizes="64,256")   # validate, then time
    bench.print_table(rows, bench.machine_info())

Vocabulary:
    case     one kernel at one shape, e.g. ``matmul 64x784x128``; its *group* is the
             table (and pytest-benchmark group) whose rows are the runners.
    runner   what computes a case: every fastsgd backend that
             ``fastsgd.backends.available()`` reports usable (``numpy`` is the
             reference and the baseline), and the peer ``torch`` (PyTorch on the
             CPU) when it is installed.

Shapes.  The matmul family is labelled ``BxIxO`` (batch x in-features x
out-features; ``MxKxN`` for a plain matmul): ``matmul`` is ``x (B, I) @ w (I, O)``,
``matmul_backward_input`` is ``dy (B, O) @ w.T``, ``matmul_backward_weight`` is
``x.T @ dy``; each costs ``2*B*I*O`` flops.  "small" cases are the shapes the two
book models train at (784-30-1 with ``mnist_loss``, 784-128-10 with
``cross_entropy``) for each batch size; "large" cases are a 1024^3 matmul and
4 Mi-element elementwise arrays, which show compute and memory throughput.
The ``epoch`` cases train one epoch of 60,000 random 784-pixel samples with
plain SGD (lr 0.1) through ``fastsgd.Learner``; the torch peer trains the same
model, loss, batch size and rate on the same tensors.

Every case is validated against the reference before it is timed: kernels
against the ``numpy`` backend evaluated in float64 on the same float32 inputs,
epochs by comparing weights after a short unshuffled run from the same
initial weights.  Kernels are timed as the trainer calls them: through the
contract (argument checks included) inside ``skip_value_checks()``.

Rates are GFLOP/s for the matmuls and epochs (compared with the machine's
measured sgemm peak) and GB/s of compulsory traffic for the others (compared
with a measured copy bandwidth).  While a runner other than ``numpy`` is timed,
OpenBLAS is held to one thread, and while ``numpy`` is timed, OpenMP pools are
(two thread pools on few cores stall each other); this needs ``threadpoolctl``.
"""
from __future__ import annotations

import contextlib
import fnmatch
import functools
import importlib.util
import math
import os
import platform
import statistics
import sys
import time
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from . import backends, files

__all__ = ["Case", "Job", "ValidationError", "BATCH_SIZES", "EPOCH_SAMPLES", "MODELS",
           "KERNEL_NAMES", "cases", "epoch_case", "runners", "prepare", "timing", "time_call",
           "machine_info", "percent_of_peak", "on_device", "torch_installed", "run_bench",
           "print_table", "write_json", "parse_kernels", "parse_backends", "parse_sizes"]

#: Batch sizes of the training shapes.
BATCH_SIZES = (64, 256)
#: The two book models: name -> (in, hidden, out, loss).
MODELS = {"784-30-1": (784, 30, 1, "mnist_loss"), "784-128-10": (784, 128, 10, "cross_entropy")}
#: Samples in one benchmarked epoch, and in the held-out set validated after it.
EPOCH_SAMPLES = 60_000
EPOCH_VALID = 1_000
#: Learning rate of the SGD update and the epochs (plain SGD: no momentum, no weight decay).
LR = 0.1
#: Side of the large square matmul; rows x columns of the large elementwise cases.
LARGE_MATMUL = 1024
LARGE_ELEMENTWISE = (4096, 1024)
#: The peer library that may run beside the fastsgd backends.
PEER = "torch"
#: Kernels benchmarked (the contract's compute kernels) plus the whole-epoch "kernel".
KERNEL_NAMES = ("matmul", "matmul_backward_input", "matmul_backward_weight",
                "sigmoid_forward", "sigmoid_backward", "relu_forward", "relu_backward",
                "mnist_loss_forward", "mnist_loss_backward",
                "cross_entropy_forward", "cross_entropy_backward", "sgd_update", "epoch")

_F32_EPS = float(np.finfo(np.float32).eps)
_MATMULS = KERNEL_NAMES[:3]


class ValidationError(AssertionError):
    """A runner's result does not match the reference; the message says by how much."""


# ===================================================================== cases
@dataclass(frozen=True)
class Case:
    """One kernel at one shape.

    ``dims`` are the kernel's dimensions (``(B, I, O)`` for the matmul family,
    the array shape for the others, ``(I, H, O, bs, samples)`` for an epoch);
    ``flop`` and ``nbytes`` are per call (``nbytes``: the compulsory memory
    traffic, each input read and each output written once).
    """

    kernel: str
    shape: str
    dims: tuple
    size: str                 # "small" (training shapes) or "large"
    batch: int | None = None  # the batch size of a training shape, when it has one
    flop: float = 0.0
    nbytes: float = 0.0

    @property
    def group(self) -> str:
        """The table this case's rows line up in: ``"<kernel> <shape>"``."""
        return f"{self.kernel} {self.shape}"

    @property
    def unit(self) -> str:
        return "GFLOP/s" if self.flop else "GB/s"

    def rate(self, seconds: float) -> float:
        """GFLOP/s (matmuls, epochs) or GB/s (the others) at ``seconds`` per call."""
        return (self.flop or self.nbytes) / seconds / 1e9

    def __str__(self):
        return f"{self.kernel}-{self.shape.replace(' ', '-')}"


def _matmul_case(kernel, b, i, o, size, batch=None):
    return Case(kernel, f"{b}x{i}x{o}", (b, i, o), size, batch,
                flop=2.0 * b * i * o, nbytes=4.0 * (b * i + i * o + b * o))


def _array_case(kernel, shape, size, batch=None):
    n = math.prod(shape)
    arrays = {"sigmoid_forward": 2, "relu_forward": 2, "sigmoid_backward": 3, "relu_backward": 3,
              "mnist_loss_forward": 2, "mnist_loss_backward": 3, "sgd_update": 3}
    if kernel.startswith("cross_entropy"):   # logits (+ dlogits) and int64 labels
        nbytes = 4.0 * n * (1 if kernel.endswith("forward") else 2) + 8.0 * shape[0]
    else:
        nbytes = 4.0 * n * arrays[kernel]
    return Case(kernel, "x".join(map(str, shape)), tuple(shape), size, batch, nbytes=nbytes)


def epoch_case(model: str, bs: int, samples: int = EPOCH_SAMPLES) -> Case:
    """One training epoch of ``model`` ("784-30-1" or "784-128-10") at batch size ``bs``.

    Flops per sample: forward ``2*(I*H + H*O)``, backward ``2*I*H`` (first-layer
    weights; its input gradient is never computed) plus ``4*H*O`` (second layer).
    """
    n_in, hidden, n_out, _ = MODELS[model]
    flop = samples * (4.0 * n_in * hidden + 6.0 * hidden * n_out)
    return Case("epoch", f"{model} bs{bs}", (n_in, hidden, n_out, bs, samples), "small", bs,
                flop=flop, nbytes=4.0 * samples * n_in)


def cases(kernels: Iterable[str] | None = None, sizes: Iterable | None = None,
          epoch_samples: int = EPOCH_SAMPLES) -> list[Case]:
    """Every case of ``kernels`` (default: all) at ``sizes``, in table order.

    ``sizes`` holds batch sizes (ints) and/or ``"small"`` (the training shapes
    at ``BATCH_SIZES``) and ``"large"``; default: both.  Batch-independent
    training shapes (the SGD update of the models' weights) come with any batch size.
    """
    kernels = list(KERNEL_NAMES if kernels is None else kernels)
    sizes = list(("small", "large") if sizes is None else sizes)
    batches = sorted({b for s in sizes for b in (BATCH_SIZES if s == "small" else
                                                  [s] if isinstance(s, int) else [])})
    large = "large" in sizes
    layers = [(i, o) for n_in, h, n_out, _ in MODELS.values() for i, o in ((n_in, h), (h, n_out))]
    first_layers = {(n_in, h) for n_in, h, _, _ in MODELS.values()}
    hidden = [h for _, h, _, _ in MODELS.values()]
    classes = max(n_out for _, _, n_out, _ in MODELS.values())
    rows, cols = LARGE_ELEMENTWISE
    out = []
    for kernel in kernels:
        if kernel in _MATMULS:
            for bs in batches:
                for i, o in layers:
                    # training never asks the first layer for its input gradient
                    if not (kernel == "matmul_backward_input" and (i, o) in first_layers):
                        out.append(_matmul_case(kernel, bs, i, o, "small", bs))
            if large:
                n = LARGE_MATMUL
                out.append(_matmul_case(kernel, n, n, n, "large"))
        elif kernel.startswith(("sigmoid", "relu")):
            out += [_array_case(kernel, (bs, h), "small", bs) for bs in batches for h in hidden]
            if large:
                out.append(_array_case(kernel, (rows, cols), "large"))
        elif kernel.startswith("mnist_loss"):
            out += [_array_case(kernel, (bs, 1), "small", bs) for bs in batches]
            if large:
                out.append(_array_case(kernel, (rows * cols, 1), "large"))
        elif kernel.startswith("cross_entropy"):
            out += [_array_case(kernel, (bs, classes), "small", bs) for bs in batches]
            if large:
                out.append(_array_case(kernel, (rows * cols // 8, classes), "large"))
        elif kernel == "sgd_update":
            if batches:
                out += [_array_case(kernel, (n_in, h), "small") for n_in, h, _, _ in MODELS.values()]
            if large:
                out.append(_array_case(kernel, (rows, cols), "large"))
        elif kernel == "epoch":
            out += [epoch_case(model, bs, epoch_samples) for model in MODELS for bs in batches]
        else:
            raise ValueError(f"unknown kernel {kernel!r}")
    return out


# =================================================================== runners
def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def runners(include_unavailable: bool = False) -> dict[str, bool | str]:
    """``{name: True | reason}``: the fastsgd backends, ``numpy`` first, then ``torch``.

    Only usable ones unless ``include_unavailable``.
    """
    status = backends.available()
    order = ["numpy"] + [n for n in status if n != "numpy"]
    found = {n: status[n] for n in order}
    found[PEER] = True if torch_installed() else "PyTorch is not installed (pip install torch)"
    return {n: s for n, s in found.items() if include_unavailable or s is True}


def _torch():
    import torch
    return torch


# =============================================================== one runner's job
@dataclass
class Job:
    """A case ready to time on one runner: call ``fn()`` repeatedly."""

    case: Case
    runner: str
    fn: Callable[[], object]
    max_error: float = 0.0     # the largest deviation from the reference seen while validating


def prepare(case: Case, runner: str, validate: bool = True) -> Job:
    """Set ``case`` up on ``runner``, run it once and check the result against the reference.

    Raises ``ValidationError`` on a mismatch.  The first call also compiles
    whatever a JIT compiles, so the returned ``fn`` is warm.
    """
    if case.kernel == "epoch":
        return _prepare_epoch(case, runner, validate)
    inputs, outputs, expected, tol = _kernel_data(case)
    if runner == PEER:
        fn, result = _torch_kernel(case, inputs, outputs)
    else:
        fn, result = _backend_kernel(case, backends.get(runner), inputs, outputs)
    with backends.skip_value_checks():
        value = fn()
    error = _check(case, runner, result(value), expected, tol) if validate else 0.0
    return Job(case, runner, fn, error)


@contextlib.contextmanager
def timing(runner: str):
    """The conditions a runner is timed under: quiet thread pools, no NaN/Inf scans."""
    with _quiet_other_pools(runner), backends.skip_value_checks():
        yield


def _quiet_other_pools(runner):
    """Hold the thread pools that ``runner`` does not use to one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="openmp" if runner == "numpy" else "blas")


def time_call(fn: Callable, budget: float = 0.05, min_rounds: int = 5, max_rounds: int = 2000,
              min_round_s: float = 2e-4, calibrate: bool = True) -> dict:
    """Median seconds per call of ``fn`` (already warm).

    A first, untimed call measures ``fn``; then calls are grouped so one round
    lasts at least ``min_round_s`` (timer resolution), and rounds run until
    about ``budget`` seconds are spent, at least ``min_rounds`` and at most
    ``max_rounds`` of them.  Without ``calibrate`` (slow calls), exactly
    ``min_rounds`` single calls are timed.
    """
    if calibrate:
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-9)
        iterations = max(1, math.ceil(min_round_s / once))
        rounds = int(min(max_rounds, max(min_rounds, budget / (once * iterations))))
    else:
        iterations, rounds = 1, min_rounds
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iterations):
            fn()
        times.append((time.perf_counter() - t0) / iterations)
    return {"median_s": statistics.median(times), "mean_s": statistics.fmean(times),
            "min_s": min(times), "rounds": rounds, "iterations": iterations}


# ----------------------------------------------------------- kernel inputs
@functools.lru_cache(maxsize=2)
def _kernel_data(case: Case):
    """(float32 inputs, output shapes and dtypes, float64 reference result, tolerance).

    The reference is the ``numpy`` backend run in float64 on the float32 inputs.
    """
    rng = np.random.default_rng(zlib.crc32(case.group.encode()))
    kernel, dims = case.kernel, case.dims

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if kernel in _MATMULS:
        b, i, o = dims
        inputs = {"matmul": lambda: (normal(b, i), normal(i, o)),
                  "matmul_backward_input": lambda: (normal(b, o), normal(i, o)),
                  "matmul_backward_weight": lambda: (normal(b, i), normal(b, o))}[kernel]()
        outputs = [({"matmul": (b, o), "matmul_backward_input": (b, i),
                     "matmul_backward_weight": (i, o)}[kernel], np.float32)]
        reduction = {"matmul": i, "matmul_backward_input": o, "matmul_backward_weight": b}[kernel]
    elif kernel in ("sigmoid_forward", "relu_forward"):
        inputs, outputs, reduction = (normal(*dims, scale=4.0),), [(dims, np.float32)], 4
    elif kernel == "sigmoid_backward":
        y = (1.0 / (1.0 + np.exp(-normal(*dims, scale=4.0)))).astype(np.float32)
        inputs, outputs, reduction = (y, normal(*dims)), [(dims, np.float32)], 4
    elif kernel == "relu_backward":
        inputs, outputs, reduction = (normal(*dims), normal(*dims)), [(dims, np.float32)], 4
    elif kernel.startswith("mnist_loss"):
        targets = rng.integers(0, 2, dims).astype(np.float32)
        inputs = (normal(*dims, scale=2.0), targets)
        outputs = [(dims, np.float32)] if kernel.endswith("backward") else []
        reduction = dims[0] if kernel.endswith("forward") else 8
    elif kernel.startswith("cross_entropy"):
        labels = rng.integers(0, dims[1], dims[0]).astype(np.int64)
        inputs = (normal(*dims, scale=3.0), labels)
        outputs = [(dims, np.float32)] if kernel.endswith("backward") else []
        reduction = dims[0] * dims[1] if kernel.endswith("forward") else 4 * dims[1]
    elif kernel == "sgd_update":
        inputs, outputs, reduction = (normal(*dims), normal(*dims)), [], 4
    else:
        raise ValueError(f"no kernel data for {kernel!r}")

    ref = backends.get("numpy")
    wide = [x.astype(np.float64) if x.dtype == np.float32 else x for x in inputs]
    if kernel == "sgd_update":
        expected = ref.sgd_update(wide[0], wide[1], LR)
    else:
        expected = getattr(ref, kernel)(*wide)
    return inputs, outputs, np.asarray(expected, np.float64), 8 * _F32_EPS * (reduction + 4)


def _backend_kernel(case, k, inputs, outputs):
    """(fn, result) for fastsgd backend ``k``: fn calls the kernel through the contract."""
    # copies: the numpy backend would otherwise compute on (and sgd_update write into) the cache
    args = [k.asarray(x.copy(), dtype=x.dtype) for x in inputs]
    outs = [k.empty(shape, dtype) for shape, dtype in outputs]
    if case.kernel == "sgd_update":
        param, grad = args
        call = functools.partial(k.sgd_update, param, grad, LR)
        produced = param
    else:
        call = functools.partial(getattr(k, case.kernel), *args, *outs)
        produced = outs[0] if outs else None
    on_device = any(hasattr(a, "__cuda_array_interface__") for a in args + outs)
    fn = _synchronized(call) if on_device else call
    return fn, lambda value: k.to_numpy(produced) if produced is not None else value


@functools.lru_cache(maxsize=None)
def on_device(runner: str) -> bool:
    """True when ``runner`` computes on an accelerator (its arrays are not host memory).

    Such rows get no % of peak: the peak and bandwidth measured here are the CPU's.
    """
    if runner == PEER:
        return False
    return hasattr(backends.get(runner).empty((1,)), "__cuda_array_interface__")


def _synchronized(call):
    """``call`` followed by a wait for the GPU, so the time covers the kernel itself."""
    from numba import cuda

    def fn():
        value = call()
        cuda.synchronize()
        return value
    return fn


def _torch_kernel(case, inputs, outputs):
    """(fn, result) for the PyTorch peer: the fused ATen op where one exists, else a
    short composition of them, as a PyTorch user would write it."""
    torch = _torch()
    args = [torch.from_numpy(x.copy()) for x in inputs]
    outs = [torch.empty(shape, dtype=torch.float32) for shape, _ in outputs]
    call = functools.partial(_TORCH_KERNELS[case.kernel], torch, *args, *outs)
    produced = args[0] if case.kernel == "sgd_update" else (outs[0] if outs else None)
    return call, lambda value: produced.numpy() if produced is not None else value


def _torch_mnist_loss_forward(torch, preds, targets):
    s = torch.sigmoid(preds)
    return torch.where(targets == 1, 1 - s, s).mean().item()


def _torch_mnist_loss_backward(torch, preds, targets, dpreds):
    s = torch.sigmoid(preds)
    return torch.mul(s * (1 - s), (1 - 2 * targets) / len(targets), out=dpreds)


def _torch_cross_entropy_backward(torch, logits, labels, dlogits):
    g = torch.softmax(logits, dim=1)
    g[torch.arange(len(labels)), labels] -= 1
    return torch.div(g, len(labels), out=dlogits)


_TORCH_KERNELS = {
    "matmul": lambda torch, a, b, out: torch.matmul(a, b, out=out),
    "matmul_backward_input": lambda torch, dy, w, dx: torch.matmul(dy, w.T, out=dx),
    "matmul_backward_weight": lambda torch, x, dy, dw: torch.matmul(x.T, dy, out=dw),
    "sigmoid_forward": lambda torch, x, out: torch.sigmoid(x, out=out),
    "sigmoid_backward": lambda torch, y, dy, dx:
        torch.ops.aten.sigmoid_backward.grad_input(dy, y, grad_input=dx),
    "relu_forward": lambda torch, x, out: torch.clamp(x, min=0.0, out=out),
    "relu_backward": lambda torch, x, dy, dx:
        torch.ops.aten.threshold_backward.grad_input(dy, x, 0.0, grad_input=dx),
    "mnist_loss_forward": _torch_mnist_loss_forward,
    "mnist_loss_backward": _torch_mnist_loss_backward,
    "cross_entropy_forward": lambda torch, logits, labels:
        torch.nn.functional.cross_entropy(logits, labels).item(),
    "cross_entropy_backward": _torch_cross_entropy_backward,
    "sgd_update": lambda torch, param, grad: param.add_(grad, alpha=-LR),
}


def _check(case, runner, actual, expected, tol) -> float:
    """Largest |actual - expected| / (|expected| + rms(expected)); raise past ``tol``."""
    actual = np.asarray(actual, np.float64)
    if actual.shape != expected.shape:
        raise ValidationError(f"{case.group} on {runner}: result has shape {actual.shape}, "
                              f"the reference {expected.shape}")
    scale = float(np.sqrt(np.mean(expected ** 2))) or 1.0
    error = float(np.max(np.abs(actual - expected) / (np.abs(expected) + scale)))
    if not error <= tol:   # also catches NaN
        raise ValidationError(f"{case.group} on {runner}: differs from the reference by "
                              f"{error:.3g} (relative), more than the tolerance {tol:.3g}")
    return error


# ------------------------------------------------------------------- epochs
#: Samples and batches of the short unshuffled run that validates an epoch runner.
_EPOCH_CHECK_SAMPLES = 512


@functools.lru_cache(maxsize=1)
def _epoch_data(samples: int, n_in: int, n_out: int):
    """Random float32 pixels in [0, 1) and targets: 0/1 floats (one output) or labels."""
    rng = np.random.default_rng(n_out)
    n = samples + EPOCH_VALID
    x = rng.random((n, n_in), dtype=np.float32)
    y = (rng.integers(0, 2, n).astype(np.float32) if n_out == 1
         else rng.integers(0, n_out, n).astype(np.int64))
    return x[:samples], y[:samples], x[samples:], y[samples:]


def _initial_weights(n_in, hidden, n_out):
    from .layers import simple_net
    return [p.value for p in simple_net(n_in, hidden, n_out, np.random.default_rng(0)).parameters()]


def _prepare_epoch(case, runner, validate):
    n_in, hidden, n_out, bs, samples = case.dims
    x, y, vx, vy = _epoch_data(samples, n_in, n_out)
    weights = _initial_weights(n_in, hidden, n_out)
    error = 0.0
    if validate:
        m = min(_EPOCH_CHECK_SAMPLES, samples)
        expected = _train_unshuffled("numpy", case, weights, x[:m], y[:m], vx, vy)
        actual = _train_unshuffled(runner, case, weights, x[:m], y[:m], vx, vy)
        error = max(_check(case, runner, a, e, 1e-3) for a, e in zip(actual, expected))
    make = _TorchEpoch if runner == PEER else _learner_epoch
    fn = make(case, runner, weights, x, y, vx, vy, shuffle=True)
    return Job(case, runner, fn, error)


def _train_unshuffled(runner, case, weights, x, y, vx, vy):
    """Weights (as float64 arrays) after one unshuffled epoch over ``x``."""
    if runner == PEER:
        epoch = _TorchEpoch(case, runner, weights, x, y, vx, vy, shuffle=False)
        epoch()
        return [w.astype(np.float64) for w in epoch.weights()]
    epoch = _learner_epoch(case, runner, weights, x, y, vx, vy, shuffle=False)
    epoch()
    learn = epoch.learn
    return [learn.backend.to_numpy(p.value).astype(np.float64) for p in learn.model.parameters()]


def _learner_epoch(case, runner, weights, x, y, vx, vy, shuffle):
    """``Learner.fit(1)`` of the case's model on ``runner`` (a fastsgd backend)."""
    from .layers import load_weights, simple_net
    from .learner import DataLoader, DataLoaders, Learner
    from .losses import batch_accuracy, cross_entropy, mnist_loss
    from .optim import SGD
    n_in, hidden, n_out, bs, _ = case.dims
    model = simple_net(n_in, hidden, n_out, np.random.default_rng(0))
    load_weights(model, [w.copy() for w in weights])   # training updates them in place
    dls = DataLoaders(DataLoader(x, y, bs, shuffle=shuffle, seed=0),
                      DataLoader(vx, vy, max(bs, 1024)))
    loss = mnist_loss if n_out == 1 else cross_entropy
    learn = Learner(dls, model, loss, SGD(LR), [batch_accuracy], backend=runner,
                    show=False, progress=False)
    return _OneEpoch(learn)


class _OneEpoch:
    """``learn.fit(1)`` as a zero-argument callable; ``learn`` stays reachable."""

    def __init__(self, learn):
        self.learn = learn

    def __call__(self):
        return self.learn.fit(1)


class _TorchEpoch:
    """One epoch of the same model, loss, batch size and rate in PyTorch on the CPU.

    Data are tensors made once; each epoch draws a permutation and gathers
    batches by index, then evaluates the held-out set, as ``Learner.fit(1)`` does.
    """

    def __init__(self, case, runner, weights, x, y, vx, vy, shuffle):
        torch = self.torch = _torch()
        n_in, hidden, n_out, self.bs, _ = case.dims
        self.x, self.y = torch.from_numpy(x), torch.from_numpy(y)
        self.vx, self.vy = torch.from_numpy(vx), torch.from_numpy(vy)
        self.model = torch.nn.Sequential(torch.nn.Linear(n_in, hidden), torch.nn.ReLU(),
                                         torch.nn.Linear(hidden, n_out))
        with torch.no_grad():   # fastsgd stores w as (in, out), PyTorch as (out, in)
            for p, w in zip(self.model.parameters(), weights):
                p.copy_(torch.from_numpy(w.T if w.ndim == 2 else w))
        self.loss = self._mnist_loss if n_out == 1 else torch.nn.functional.cross_entropy
        self.opt = torch.optim.SGD(self.model.parameters(), lr=LR)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(0)

    def _mnist_loss(self, preds, targets):
        s = preds.sigmoid().reshape(-1)
        return self.torch.where(targets == 1, 1 - s, s).mean()

    def __call__(self):
        torch, model, n = self.torch, self.model, len(self.x)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        total = 0.0
        for start in range(0, n, self.bs):
            idx = order[start:start + self.bs]
            loss = self.loss(model(self.x[idx]), self.y[idx])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            total += loss.item() * len(idx)
        with torch.no_grad():
            preds = model(self.vx)
            self.loss(preds, self.vy).item()
        return total / n

    def weights(self) -> list[np.ndarray]:
        """Parameters in fastsgd's layout."""
        return [p.detach().numpy().T.copy() if p.ndim == 2 else p.detach().numpy().copy()
                for p in self.model.parameters()]


# ==================================================================== machine
@functools.lru_cache(maxsize=1)
def machine_info() -> dict:
    """The machine, library versions, and the peak and bandwidth that rates are compared with.

    The peak is measured: the fastest of five float32 2048^3 matmuls in NumPy
    (OpenBLAS, all threads).  A computed estimate from the CPU's features and
    clock is given beside it, as are its assumptions.
    """
    import numba
    from .cli import cpu_summary
    cpu = cpu_summary()
    info = {
        "cpu": cpu["name"], "cores": cpu["cores"], "features": cpu["features"],
        "clock_ghz": _clock_ghz(), "platform": platform.platform(),
        "python": platform.python_version(), "numpy": np.__version__, "blas": _blas(),
        "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
        "torch": None, "torch_threads": None, "load_average": _load_average(),
        "thread_limiting": "threadpoolctl" if importlib.util.find_spec("threadpoolctl")
        else "off (threadpoolctl is not installed)",
    }
    if torch_installed():
        torch = _torch()
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    n = 2048
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    with _quiet_other_pools("numpy"):   # a peak is the best the machine does: the fastest call
        seconds = time_call(lambda: np.matmul(a, b, out=out), budget=0.0, min_rounds=5)["min_s"]
    info["peak_gflops"] = 2.0 * n**3 / seconds / 1e9
    info["peak_source"] = f"measured: NumPy ({info['blas']}) float32 matmul {n}^3, best of 5"
    info.update(_computed_peak(cpu, info["clock_ghz"]))
    src = np.ones(1 << 24, np.float32)   # 64 MiB, well past the caches
    dst = np.empty_like(src)
    seconds = time_call(lambda: np.copyto(dst, src), budget=0.0, min_rounds=5)["min_s"]
    info["bandwidth_gbs"] = 2.0 * src.nbytes / seconds / 1e9
    info["bandwidth_source"] = "measured: NumPy copy of 64 MiB (read + write), best of 5, one thread"
    return info


def _load_average() -> float | None:
    """The 1-minute load average when the run started (other work skews timings)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _clock_ghz() -> float | None:
    """The clock /proc/cpuinfo reports (Linux), in GHz."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                return round(float(line.split(":")[1]) / 1000, 3)
    except (OSError, ValueError):
        pass
    return None


def _blas() -> str:
    try:
        from threadpoolctl import threadpool_info
        for lib in threadpool_info():
            if lib["user_api"] == "blas":
                return f"{lib['internal_api']} {lib['version']}"
    except ImportError:
        pass
    return "BLAS"


def _computed_peak(cpu, clock_ghz) -> dict:
    """cores x clock x float32 flops per cycle: lanes x 2 (FMA) x 2 pipes.

    AMD Zen 4 runs 512-bit instructions on 256-bit pipes, so it counts 8 lanes.
    """
    features = set(cpu["features"])
    lanes = 16 if "avx512f" in features else 8 if "avx" in features else 4
    if lanes == 16 and cpu["name"] == "znver4":
        lanes = 8
    per_cycle = lanes * (2 if "fma" in features else 1) * 2
    if not clock_ghz:
        return {"computed_peak_gflops": None, "computed_peak_basis": "clock unknown"}
    return {"computed_peak_gflops": cpu["cores"] * clock_ghz * per_cycle,
            "computed_peak_basis": f"{cpu['cores']} cores x {clock_ghz:.2f} GHz (reported) x "
                                   f"{per_cycle} float32 flops/cycle ({lanes} lanes x FMA x 2 pipes)"}


def percent_of_peak(case: Case, seconds: float, machine: dict) -> float:
    """The rate as a percentage of the peak (flops) or of the copy bandwidth (bytes)."""
    peak = machine["peak_gflops"] if case.flop else machine["bandwidth_gbs"]
    return 100.0 * case.rate(seconds) / peak


# ====================================================================== CLI
def parse_kernels(spec) -> list[str]:
    """Comma-separated kernel names or patterns (``matmul*``, ``*_backward``, ``epoch``)."""
    if spec is None:
        return list(KERNEL_NAMES)
    items = _items(spec, "--kernels")
    chosen = []
    for item in items:
        matched = fnmatch.filter(KERNEL_NAMES, item)
        if not matched:
            raise ValueError(f"--kernels: no kernel matches {item!r}; expected names or patterns "
                             f"from {', '.join(KERNEL_NAMES)}")
        chosen += [k for k in matched if k not in chosen]
    return [k for k in KERNEL_NAMES if k in chosen]


def parse_backends(spec) -> list[str]:
    """Comma-separated runner names; ``numpy``, the baseline, is always added."""
    usable = runners()
    if spec is None:
        return list(usable)
    known = runners(include_unavailable=True)
    for name in _items(spec, "--backends"):
        if name not in known:
            raise ValueError(f"--backends: unknown backend {name!r}; expected some of "
                             f"{', '.join(known)}")
        if known[name] is not True:
            raise ValueError(f"--backends: {name} is unavailable: {known[name]}")
    chosen = set(_items(spec, "--backends")) | {"numpy"}
    return [n for n in usable if n in chosen]


def parse_sizes(spec) -> list:
    """Comma-separated batch sizes and/or ``small`` / ``large``; default both."""
    if spec is None:
        return ["small", "large"]
    sizes = []
    for item in _items(spec, "--sizes"):
        if item in ("small", "large"):
            sizes.append(item)
            continue
        try:
            bs = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"--sizes: expected batch sizes like 64,256 or small,large, "
                             f"got {item!r}") from None
        if not 1 <= bs <= 65536:
            raise ValueError(f"--sizes: batch size must lie in [1, 65536], got {bs}")
        sizes.append(bs)
    return sizes


def _items(spec, option) -> list:
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    items = [i.strip() if isinstance(i, str) else i for i in items]
    if not items or any(i == "" for i in items):
        raise ValueError(f"{option}: expected a comma-separated list, got {spec!r}")
    return items


def run_bench(kernels=None, backends=None, sizes=None, json_path=None, plot_path=None,
              progress=True, budget: float = 0.05) -> list[dict]:
    """Validate, then time, every case of ``kernels`` x ``sizes`` on every runner of ``backends``.

    Arguments take lists or comma-separated strings (see ``parse_*``); bad
    ones raise ``ValueError`` before anything runs.  ``budget`` is about the
    seconds spent timing each row (an epoch row runs 3 epochs).  Returns one
    row per case and runner::

        kernel, shape, group, size, batch, backend, device ("cpu" or "gpu"),
        status ("ok" or what failed), median_s, mean_s, min_s, rounds, iterations,
        flop, bytes, rate, unit, pct_peak (None on a GPU: the peaks are the CPU's),
        speedup_vs_numpy, speedup_vs_torch, max_error

    ``json_path`` gets ``{"machine": machine_info(), "rows": rows}``;
    ``plot_path`` a PNG of the speed-ups over numpy (needs matplotlib).
    """
    chosen_kernels = parse_kernels(kernels)
    chosen_runners = parse_backends(backends)
    chosen_sizes = parse_sizes(sizes)
    if plot_path is not None:
        from .plots import require_matplotlib
        require_matplotlib()
    selected = cases(chosen_kernels, chosen_sizes)
    if not selected:
        raise ValueError(f"--sizes {','.join(map(str, chosen_sizes))} selects no case of "
                         f"{','.join(chosen_kernels)}")
    jobs = [(case, runner) for case in selected for runner in chosen_runners]
    bar = _progress_bar(len(jobs) + 1, progress)
    bar.set_postfix_str("measuring the peak")
    machine = machine_info()
    bar.update()
    rows = []
    with warnings.catch_warnings():
        # small shapes launch small GPU grids on purpose: the timing says what that costs
        warnings.filterwarnings("ignore", message=r"(?s).*will likely result in GPU under-utilization")
        for case, runner in jobs:
            bar.set_postfix_str(f"{case.group} {runner}")
            rows.append(_run_row(case, runner, machine, budget))
            bar.update()
    bar.close()
    _add_speedups(rows)
    if json_path is not None:
        write_json(json_path, rows, machine)
    if plot_path is not None:
        from .plots import plot_speedups
        plot_speedups(rows, plot_path)
    return rows


def _run_row(case, runner, machine, budget) -> dict:
    row = {"kernel": case.kernel, "shape": case.shape, "group": case.group, "size": case.size,
           "batch": case.batch, "backend": runner, "device": "cpu", "status": "ok", "median_s": None,
           "mean_s": None, "min_s": None, "rounds": 0, "iterations": 0, "flop": case.flop,
           "bytes": case.nbytes, "rate": None, "unit": case.unit, "pct_peak": None,
           "speedup_vs_numpy": None, "speedup_vs_torch": None, "max_error": None}
    try:
        row["device"] = "gpu" if on_device(runner) else "cpu"
        job = prepare(case, runner)
        row["max_error"] = job.max_error
        with timing(runner):
            if case.kernel == "epoch":   # ~0.1-1 s a call: three calls, no warm-up
                stats = time_call(job.fn, min_rounds=3, calibrate=False)
            else:
                stats = time_call(job.fn, budget=budget)
    except ValidationError as exc:
        row["status"] = f"mismatch: {exc}"
        return row
    except Exception as exc:   # a broken backend fails its row, not the run
        row["status"] = f"error: {type(exc).__name__}: {exc}"
        return row
    row.update(stats)
    row["rate"] = case.rate(stats["median_s"])
    if row["device"] == "cpu":
        row["pct_peak"] = percent_of_peak(case, stats["median_s"], machine)
    return row


def _add_speedups(rows):
    base = {}
    for row in rows:
        if row["status"] == "ok" and row["backend"] in ("numpy", PEER):
            base[(row["group"], row["backend"])] = row["median_s"]
    for row in rows:
        if row["status"] != "ok":
            continue
        for peer, key in (("numpy", "speedup_vs_numpy"), (PEER, "speedup_vs_torch")):
            if (row["group"], peer) in base:
                row[key] = base[(row["group"], peer)] / row["median_s"]


class _NoBar:
    def set_postfix_str(self, text):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


def _progress_bar(total, enabled):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="bench", unit="row", leave=False, dynamic_ncols=True,
                file=sys.stderr)


def write_json(path, rows, machine=None) -> Path:
    """``{"machine": ..., "rows": [...]}`` to ``path`` (written to a temporary name, then renamed)."""
    return files.write_json(path, {"machine": machine if machine is not None else machine_info(),
                                   "rows": rows})


def _format_seconds(s) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}" if s / scale < 100 else f"{s / scale:.0f} {unit}"
    return f"{s / 1e-9:.0f} ns"


def _format_ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x"


def print_table(rows: list[dict], machine: dict | None = None, file=None) -> None:
    """One table: kernel, shape, backend, median time, rate, % of peak, speed-ups.

    With ``machine`` (``machine_info()``), a header says what the peak and the
    bandwidth are and how they were obtained.
    """
    file = file or sys.stdout
    if machine:
        print(f"machine: {machine['cpu']}, {machine['cores']} cores; numpy {machine['numpy']} "
              f"({machine['blas']}), numba {machine['numba']}"
              f"{', torch ' + machine['torch'] if machine.get('torch') else ''}", file=file)
        print(f"% peak of GFLOP/s: {machine['peak_gflops']:.0f} GFLOP/s, {machine['peak_source']}",
              file=file)
        if machine.get("computed_peak_gflops"):
            print(f"  (computed: {machine['computed_peak_gflops']:.0f} GFLOP/s = "
                  f"{machine['computed_peak_basis']})", file=file)
        print(f"% peak of GB/s: {machine['bandwidth_gbs']:.1f} GB/s, {machine['bandwidth_source']}"
              f" (arrays that fit in cache can exceed it)", file=file)
        if any(row.get("device") == "gpu" for row in rows):
            print("rows run on a GPU show no % peak: the peaks above are the CPU's", file=file)
        load = machine.get("load_average")
        if load is not None and load > 0.5 * machine["cores"]:
            print(f"warning: the machine was busy (load average {load:.1f} on {machine['cores']} "
                  f"cores); these timings are unreliable", file=file)
    has_torch = any(r["backend"] == PEER for r in rows)
    header = ["kernel", "shape", "backend", "median", "rate", "% peak", "vs numpy"]
    header += ["vs torch"] if has_torch else []
    table = []
    for row in rows:
        if row["status"] != "ok":
            cells = [row["kernel"], row["shape"], row["backend"], row["status"].upper()]
        else:
            cells = [row["kernel"], row["shape"], row["backend"], _format_seconds(row["median_s"]),
                     f"{row['rate']:.3g} {row['unit']}",
                     "-" if row["pct_peak"] is None else f"{row['pct_peak']:.1f}%",
                     _format_ratio(row["speedup_vs_numpy"])]
            cells += [_format_ratio(row["speedup_vs_torch"])] if has_torch else []
        table.append(cells)
    widths = [max([len(h)] + [len(c[i]) for c in table if len(c) > i and len(c) == len(header)])
              for i, h in enumerate(header)]
    right = {3, 4, 5, 6, 7}

    def line(cells):
        return "  ".join((c.rjust(w) if i in right else c.ljust(w))
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header), file=file)
    previous = None
    for row, cells in zip(rows, table):
        if previous is not None and row["group"] != previous:
            print(file=file)
        previous = row["group"]
        if len(cells) == len(header):
            print(line(cells), file=file)
        else:   # a failed row: the reason, unpadded
            print(line(cells[:3]) + "  " + cells[3], file=file)
