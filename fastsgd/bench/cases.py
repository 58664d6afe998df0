"""What is benchmarked: kernels x shapes, the epoch cases, their inputs and reference results.

Shapes.  The matmul family is labelled ``BxIxO`` (batch x in-features x
out-features; ``MxKxN`` for a plain matmul): ``matmul`` is ``x (B, I) @ w (I, O)``,
``matmul_backward_input`` is ``dy (B, O) @ w.T``, ``matmul_backward_weight`` is
``x.T @ dy``; each costs ``2*B*I*O`` flops.  "small" cases are the shapes the two
book models train at (784-30-1 with ``mnist_loss``, 784-128-10 with
``cross_entropy``) for each batch size; "large" cases are a 1024^3 matmul and
4 Mi-element elementwise arrays.  An ``epoch`` case is one training epoch of
784-128-10 (``bench.epochs`` runs it).

Every kernel result is checked against the ``numpy`` backend evaluated in
float64 on the same float32 inputs, with a tolerance that grows with the
length of the reductions involved.
"""
from __future__ import annotations

import fnmatch
import functools
import math
import zlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from .. import backends

#: Batch sizes of the training shapes.
BATCH_SIZES = (64, 256)
#: The two book models: name -> (in, hidden, out, loss).
MODELS = {"784-30-1": (784, 30, 1, "mnist_loss"), "784-128-10": (784, 128, 10, "cross_entropy")}
#: The model of the epoch cases (softmax cross-entropy, as every peer trains it).
EPOCH_MODEL = "784-128-10"
#: Samples in one benchmarked epoch, and in the held-out set evaluated after it.
EPOCH_SAMPLES = 60_000
EPOCH_VALID = 1_000
#: Learning rate of the SGD update and the epochs (plain SGD: no momentum, no weight decay).
LR = 0.1
#: Side of the large square matmul; rows x columns of the large elementwise cases.
LARGE_MATMUL = 1024
LARGE_ELEMENTWISE = (4096, 1024)
#: Kernels benchmarked (the contract's compute kernels) plus the whole-epoch "kernel".
KERNEL_NAMES = ("matmul", "matmul_backward_input", "matmul_backward_weight", "bias_backward",
                "sigmoid_forward", "sigmoid_backward", "relu_forward", "relu_backward",
                "tanh_forward", "tanh_backward", "mnist_loss_forward", "mnist_loss_backward",
                "cross_entropy_forward", "cross_entropy_backward", "sgd_update", "epoch")
MATMULS = KERNEL_NAMES[:3]
_ACTIVATIONS = ("sigmoid", "relu", "tanh")
_F32_EPS = float(np.finfo(np.float32).eps)


class ValidationError(AssertionError):
    """A runner's result does not match the reference; the message says by how much."""


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
        """The table (and pytest-benchmark group) this case's rows line up in."""
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
    arrays = {"forward": 2, "backward": 3, "update": 3}[kernel.rsplit("_", 1)[1]]
    if kernel.startswith("cross_entropy"):   # logits (+ dlogits) and int64 labels
        nbytes = 4.0 * n * (1 if kernel.endswith("forward") else 2) + 8.0 * shape[0]
    elif kernel == "bias_backward":          # dy (B, O) in, db (O,) out
        nbytes = 4.0 * (n + shape[1])
    else:
        nbytes = 4.0 * n * arrays
    return Case(kernel, "x".join(map(str, shape)), tuple(shape), size, batch, nbytes=nbytes)


def epoch_flop(sizes, samples: int) -> float:
    """Flops of one epoch of an MLP of layer widths ``sizes`` (ReLU between the layers).

    Per sample and layer of ``I*O`` weights: forward ``2*I*O``, weight gradient
    ``2*I*O``, input gradient ``2*I*O`` except for the first layer.
    """
    macs = [i * o for i, o in zip(sizes, sizes[1:])]
    return 2.0 * samples * (2 * sum(macs) + sum(macs[1:]))


def epoch_case(bs: int, samples: int = EPOCH_SAMPLES, model: str = EPOCH_MODEL) -> Case:
    """One training epoch of ``model`` at batch size ``bs``."""
    n_in, hidden, n_out, _ = MODELS[model]
    return Case("epoch", f"{model} bs{bs}", (n_in, hidden, n_out, bs, samples), "small", bs,
                flop=epoch_flop((n_in, hidden, n_out), samples), nbytes=4.0 * samples * n_in)


def select_cases(kernels: Iterable[str] | None = None, sizes: Iterable | None = None,
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
        if kernel in MATMULS:
            for bs in batches:
                for i, o in layers:
                    # training never asks the first layer for its input gradient
                    if not (kernel == "matmul_backward_input" and (i, o) in first_layers):
                        out.append(_matmul_case(kernel, bs, i, o, "small", bs))
            if large:
                out.append(_matmul_case(kernel, LARGE_MATMUL, LARGE_MATMUL, LARGE_MATMUL, "large"))
        elif kernel.startswith(_ACTIVATIONS) or kernel == "bias_backward":
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
            out += [epoch_case(bs, epoch_samples) for bs in batches]
        else:
            raise ValueError(f"kernels: unknown kernel {kernel!r}")
    return out


# -------------------------------------------------------------- inputs, reference
@functools.lru_cache(maxsize=2)
def kernel_data(case: Case):
    """(float32 inputs, [(output shape, dtype)], float64 reference result, tolerance).

    The reference is the ``numpy`` backend run in float64 on the float32 inputs;
    the tolerance is ``8 eps (n + 4)`` for reductions of length ``n``.
    """
    rng = np.random.default_rng(zlib.crc32(case.group.encode()))
    kernel, dims = case.kernel, case.dims

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    if kernel in MATMULS:
        b, i, o = dims
        inputs = {"matmul": lambda: (normal(b, i), normal(i, o)),
                  "matmul_backward_input": lambda: (normal(b, o), normal(i, o)),
                  "matmul_backward_weight": lambda: (normal(b, i), normal(b, o))}[kernel]()
        outputs = [({"matmul": (b, o), "matmul_backward_input": (b, i),
                     "matmul_backward_weight": (i, o)}[kernel], np.float32)]
        reduction = {"matmul": i, "matmul_backward_input": o, "matmul_backward_weight": b}[kernel]
    elif kernel == "bias_backward":
        inputs, outputs, reduction = (normal(*dims),), [((dims[1],), np.float32)], dims[0]
    elif kernel.endswith("_forward") and kernel.startswith(_ACTIVATIONS):
        inputs, outputs, reduction = (normal(*dims, scale=4.0),), [(dims, np.float32)], 4
    elif kernel in ("sigmoid_backward", "tanh_backward"):
        x = normal(*dims, scale=4.0).astype(np.float64)
        y = (1.0 / (1.0 + np.exp(-x)) if kernel == "sigmoid_backward" else np.tanh(x))
        inputs, outputs, reduction = (y.astype(np.float32), normal(*dims)), [(dims, np.float32)], 4
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
        raise ValueError(f"kernels: no kernel data for {kernel!r}")

    ref = backends.get("numpy")
    wide = [x.astype(np.float64) if x.dtype == np.float32 else x for x in inputs]
    if kernel == "sgd_update":
        expected = ref.sgd_update(wide[0], wide[1], LR)
    else:
        expected = getattr(ref, kernel)(*wide)
    return inputs, outputs, np.asarray(expected, np.float64), 8 * _F32_EPS * (reduction + 4)


def check(case: Case, runner: str, actual, expected, tol) -> float:
    """Largest ``|actual - expected| / (|expected| + rms(expected))``; raise past ``tol``."""
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


# ------------------------------------------------------------------ parsing
def items(spec, name: str) -> list:
    """A comma-separated string (or a list) as a list; ``ValueError("<name>: ...")`` if empty."""
    values = spec.split(",") if isinstance(spec, str) else list(spec)
    values = [v.strip() if isinstance(v, str) else v for v in values]
    if not values or any(v == "" for v in values):
        raise ValueError(f"{name}: expected a comma-separated list, got {spec!r}")
    return values


def parse_kernels(spec) -> list[str]:
    """Comma-separated kernel names or patterns (``matmul*``, ``*_backward``, ``epoch``)."""
    if spec is None:
        return list(KERNEL_NAMES)
    chosen = []
    for item in items(spec, "kernels"):
        matched = fnmatch.filter(KERNEL_NAMES, str(item))
        if not matched:
            raise ValueError(f"kernels: no kernel matches {item!r}; expected names or patterns "
                             f"from {', '.join(KERNEL_NAMES)}")
        chosen += [k for k in matched if k not in chosen]
    return [k for k in KERNEL_NAMES if k in chosen]


def parse_sizes(spec) -> list:
    """Comma-separated batch sizes and/or ``small`` / ``large``; default both."""
    if spec is None:
        return ["small", "large"]
    sizes = []
    for item in items(spec, "sizes"):
        if item in ("small", "large"):
            sizes.append(item)
            continue
        try:
            bs = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"sizes: expected batch sizes like 64,256 or small,large, "
                             f"got {item!r}") from None
        if not 1 <= bs <= 65536:
            raise ValueError(f"sizes: batch size must lie in [1, 65536], got {bs}")
        sizes.append(bs)
    return sizes
