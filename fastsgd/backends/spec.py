"""What a backend module must export, the shapes its kernels take, and the value-check switch.

``contract.Backend`` checks a module against ``KERNELS`` when it wraps it; its matmul
and elementwise methods take their shape rules from ``SIGNATURES``, and so does every
``c_ext`` kernel before it calls C.  The value-check switch is read by every validated
call.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import re
from typing import NamedTuple

import numpy as np

from . import program

#: Every kernel's implementation parameters, in order, with the shapes implementations
#: receive (``contract.Backend`` checks them, ``c_ext`` again before calling C):
#: ``name:DIMS`` an array read, ``name=DIMS`` an array written, a bare name a scalar.
#: DIMS are dimension letters (``contract.py``), equal letters equal sizes; ``n`` is any
#: shape of ``n`` elements (elementwise: equal sizes).  ``?``: the array may be None;
#: ``/int64``: integer labels (every other array is float).  The activations' and the
#: losses' signatures come from their records in the registry (``activation_signatures``,
#: ``loss_signatures``).
_SIGNATURES = """
matmul                  a:MK       b:KN            out=MN
matmul_backward_input   dy:BO      w:IO            dx=BI
matmul_backward_weight  x:BI       dy:BO           dw=IO
bias_backward           dy:BO      db=O
linear_forward          x:BI       w:IO            b:O      out=BO
linear_backward         x:BI       w:IO            dy:BO    dx=BI?   dw=IO   db=O
sgd_update              param=n    grad:n          velocity=n?  lr  momentum  weight_decay
binary_accuracy         preds:B    targets:B
multiclass_accuracy     logits:BC  labels:B/int64
"""


class Param(NamedTuple):
    """One parameter of a kernel, as declared in ``_SIGNATURES``."""

    name: str
    dims: str | None  #: dimension letters, "n" for any shape, None for a scalar
    written: bool = False
    optional: bool = False
    dtype: str = "float"


def _param(token: str) -> Param:
    name, sep, rest = re.fullmatch(r"(\w+)([:=]?)(.*)", token).groups()
    if not sep:
        return Param(name, None)
    dims, _, dtype = rest.rstrip("?").partition("/")
    return Param(name, dims, sep == "=", rest.endswith("?"), dtype or "float")


def activation_signatures(kind) -> dict[str, tuple[Param, ...]]:
    """The two kernels of a parameter-free layer kind (a ``program.LayerKind``):
    ``forward(x, out)`` and ``backward(saved, dy, dx)``, ``saved`` its input x or its
    output y as the record says; every array of one shape."""
    return {kind.forward: (Param("x", "n"), Param("out", "n", written=True)),
            kind.backward: (Param(kind.saves, "n"), Param("dy", "n"),
                            Param("dx", "n", written=True))}


def loss_signatures(kind) -> dict[str, tuple[Param, ...]]:
    """The two kernels of a loss kind (a ``program.LossKind``), by its targets:
    "binary" ``forward(preds (B,), targets (B,))``, "labels" ``forward(logits (B, C),
    labels (B,) int64)``, "real" ``forward(preds, targets)`` of any one shape; each
    ``backward`` takes the same and writes the gradient shaped like the first."""
    if kind.targets == "labels":
        inputs = (Param("logits", "BC"), Param("labels", "B", dtype="int64"))
        out = Param("dlogits", "BC", written=True)
    else:
        dims = "B" if kind.targets == "binary" else "n"
        inputs = (Param("preds", dims), Param("targets", dims))
        out = Param("dpreds", dims, written=True)
    return {kind.forward: inputs, kind.backward: (*inputs, out)}


#: kernel name -> its ``Param``s in order: the table above, then the activations and
#: losses of the registry's built-in kinds.
SIGNATURES: dict[str, tuple[Param, ...]] = {
    line.split()[0]: tuple(_param(token) for token in line.split()[1:])
    for line in _SIGNATURES.strip().splitlines()}
for _kind in program.activations():
    if _kind.code in program.BUILT_IN_LAYERS:
        SIGNATURES.update(activation_signatures(_kind))
for _kind in program.LOSSES.values():
    if _kind.code in program.BUILT_IN_LOSSES:
        SIGNATURES.update(loss_signatures(_kind))
del _kind

#: Implementation names and parameters every backend module must export.
KERNELS: dict[str, tuple[str, ...]] = {
    kernel: tuple(p.name for p in params) for kernel, params in SIGNATURES.items()}


def same(name, value, other_name, other):
    """Raise ``ValueError`` unless ``value`` (of ``name``) equals ``other``."""
    if value != other:
        raise ValueError(f"{name} is {value} but {other_name} is {other}; expected them equal")


def bind_dims(arrays) -> dict[str, int]:
    """The size of each dimension letter, from ``(Param, shape)`` pairs of the arrays read.

    In parameter order, the first array with a letter sets its size; a later one that
    disagrees raises ``ValueError`` naming both (e.g. "b.shape[0] is 3 but a.shape[1] is 4").
    """
    dims = {}
    for p, shape in arrays:
        for letter, size in zip(p.dims, shape):
            if dims.setdefault(letter, size) != size:
                first = next(q for q, _ in arrays if letter in q.dims)
                same(f"{p.name}.shape[{p.dims.index(letter)}]", size,
                     f"{first.name}.shape[{first.dims.index(letter)}]", dims[letter])
    return dims


def dim_sources(params) -> dict[str, str]:
    """Where each dimension letter of ``params`` is read from, e.g. ``{"M": "a.shape[0]"}``."""
    sources = {}
    for p in params:
        if p.dims and p.dims != "n" and not p.written:
            for axis, letter in enumerate(p.dims):
                sources.setdefault(letter, f"{p.name}.shape[{axis}]")
    return sources


def describe(params) -> str:
    """The shapes of ``params`` for a docstring, e.g. ``a (M, K), b (K, N) -> out (M, N)``."""
    def one(p):
        if p.dims is None or p.dims == "n":
            return p.name if p.dims is None else f"{p.name} (any shape)"
        return f"{p.name} ({', '.join(p.dims)}{',' * (len(p.dims) == 1)})"
    read = ", ".join(one(p) for p in params if not p.written)
    written = ", ".join(one(p) for p in params if p.written)
    return f"{read} -> {written}" if written else read


def overlap_error(written, read, may_overlap, in_place=None) -> ValueError | None:
    """The overlap rule of every kernel: the error for the first array of ``written`` that
    shares memory with an array of ``read`` or with an earlier one of ``written``; None
    when every one is apart.

    ``written`` and ``read`` are ``(name, array)`` pairs (an array may be None: absent),
    of any dtypes; ``may_overlap(a, b)`` says whether two arrays may share memory.  With
    ``in_place(out, x)``, a written array that is exactly a read one (an elementwise
    kernel run in place) is allowed; any other overlap never is, since a compiled loop
    would read what it already overwrote, or index memory with what it wrote.
    """
    for i, (name, out) in enumerate(written):
        if out is None:
            continue
        for other, x in read:
            if x is None or not may_overlap(out, x):
                continue
            if in_place is None:
                return ValueError(f"{name}: must not overlap {other}, an input of this "
                                  f"kernel; pass a separate array")
            if not in_place(out, x):
                return ValueError(f"{name}: partly overlaps an input, {other}; pass the "
                                  f"input itself (in place) or a separate array")
        for other, x in written[:i]:
            if x is not None and may_overlap(out, x):
                return ValueError(f"{name}: must not overlap {other}, another output of "
                                  f"this kernel; pass a separate array")
    return None


def check_host_apart(written, read):
    """Raise ``overlap_error``'s error for host (NumPy) arrays, if there is one."""
    error = overlap_error(written, read, _host_may_overlap)
    if error is not None:
        raise error


def _host_may_overlap(a, b) -> bool:
    return bool(np.may_share_memory(a, b))


def host_array(name, x, dtype):
    """Check that ``x`` is a ``numpy.ndarray`` of exactly ``dtype`` (``TypeError`` if not)."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {np.dtype(dtype)}, got {x.dtype}")


#: Kernels a backend may implement (``Backend.supports(name)`` says whether it does);
#: when present they must take exactly these parameters.
OPTIONAL_KERNELS: dict[str, tuple[str, ...]] = {
    # one epoch of SGD over a layer program (see ``program.py``): steps done
    "train_epoch": ("layers", "loss_kind", "x", "targets", "order", "bs", "lrs",
                    "momentum", "weight_decay", "params", "grads", "velocities", "losses"),
}

#: Whether kernels scan their inputs for NaN/Inf: per thread and per asyncio task, so a
#: Learner's ``skip_value_checks`` block never switches the checks off for other code.
_VALUE_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("fastsgd_value_checks",
                                                                     default=True)


def value_checks_enabled() -> bool:
    """Whether kernels called from this thread or task scan their inputs for NaN/Inf."""
    return _VALUE_CHECKS.get()


@contextlib.contextmanager
def skip_value_checks():
    """Within this block, kernels skip the NaN/Inf scan of their inputs.

    Shape, dtype, layout and label-range checks stay on: they guard memory
    safety.  The trainer uses this in its inner loop after checking its data
    once, since a full scan of every input would cost as much as the kernel.
    The switch is a context variable: it applies to this thread (or asyncio task)
    alone and is restored exactly on leaving the block, however blocks nest.
    """
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def missing_kernels(module) -> list[str]:
    """Names in ``KERNELS`` that ``module`` lacks or exports with other parameters."""
    bad = []
    for name, params in KERNELS.items():
        fn = getattr(module, name, None)
        if fn is None or _parameter_names(fn) != params:
            bad.append(name)
    for name, params in OPTIONAL_KERNELS.items():
        fn = getattr(module, name, None)
        if fn is not None and _parameter_names(fn) != params:
            bad.append(name)
    return bad


def _parameter_names(fn) -> tuple[str, ...] | None:
    py_func = getattr(fn, "py_func", fn)  # numba dispatchers keep the Python source
    try:
        return tuple(inspect.signature(py_func).parameters)
    except (TypeError, ValueError):
        return None
