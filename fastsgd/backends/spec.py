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
import operator
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
sgd_update              param=n    grad:n          lr  momentum  weight_decay  velocity=n?
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


# ----------------------------------------- what compiled code's memory safety needs
def array_shape(name, x, ndim):
    """``x.shape`` after checking it has ``ndim`` dimensions."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {shape}")
    return shape


def expect_shape(name, x, shape, source):
    """Check that array ``x`` has exactly ``shape`` (the size compiled code will touch);
    ``source`` says where it comes from, e.g. ``"(a.shape[0], b.shape[1])"``."""
    got = getattr(x, "shape", None)
    if got is None:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if got != shape:
        raise ValueError(f"{name}: expected shape {shape} = {source}, got {got}")


def host_buffer(name, x, dtype, writable=False):
    """Check that ``x`` is a host ndarray of exactly ``dtype``, C-contiguous, and writable
    where it is an output: what compiled code may take a pointer into."""
    if type(x) is not np.ndarray or x.dtype != dtype:
        host_array(name, x, dtype)
    if not x.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array (non-contiguous input is "
                         f"rejected, not copied); pass np.ascontiguousarray({name})")
    if writable and not x.flags.writeable:
        raise ValueError(f"{name}: expected a writable array (it is an output)")


def index_range(name, indices, high, what):
    """Check that every value of int64 ``indices`` lies in [0, high) (code indexes with them)."""
    if indices.size:
        low, top = int(indices.min()), int(indices.max())
        if low < 0 or top >= high:
            raise ValueError(f"{name}: {what} must lie in [0, {high}), got values from "
                             f"{low} to {top}")


def as_count(name, value) -> int:
    """``value`` as an int (``TypeError`` unless it is an integer)."""
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None


def as_number(name, value) -> float:
    """``value`` as a float (``TypeError`` unless it is a number)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None


def sgd_scalars(momentum, weight_decay, velocity, required) -> tuple[float, float]:
    """``momentum`` in [0, 1] and ``weight_decay`` >= 0 as floats; a momentum != 0 needs
    ``velocity`` (``required`` names it in the error, e.g. "sgd_update: velocity is")."""
    momentum = bounded_number("momentum", momentum, low=0.0, high=1.0)
    weight_decay = bounded_number("weight_decay", weight_decay, low=0.0)
    if momentum != 0.0 and velocity is None:
        raise ValueError(f"{required} required when momentum != 0")
    return momentum, weight_decay


#: The largest float32: a scalar the kernels take in float32 must not overflow to inf.
F32_MAX = float(np.finfo(np.float32).max)


def bounded_number(name, value, low=None, high=None) -> float:
    """``value`` as a finite float in [low, high] (high: the float32 limit by default)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None
    high = F32_MAX if high is None else high
    if not np.isfinite(value) or (low is not None and value < low) or value > high:
        bounds = f"[{low}, {'3.4e38 (the float32 limit)' if high == F32_MAX else high}]"
        raise ValueError(f"{name}: expected a finite number in {bounds}, got {value}")
    return value


class EpochSizes(NamedTuple):
    """The sizes of a checked ``train_epoch`` call (``check_epoch``)."""

    n_params: int
    n_rows: int          #: N, the rows of x
    n_order: int         #: R, the rows the steps take
    n_out: int
    bs: int
    steps: int
    momentum: float
    weight_decay: float


def check_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads, velocities,
                momentum, weight_decay, losses, backend, layer_codes=None,
                loss_codes=None) -> EpochSizes:
    """Everything a compiled ``train_epoch`` (``backend``: "c", "numba") relies on not to
    read or write out of bounds, checked once for all of them: the table
    (``program.check_layer_table``) and the kinds it compiled (``layer_codes`` and
    ``loss_codes``, default the registry's built-in ones); every array's type, dtype,
    layout, writability and size; the order's and labels' ranges; the scalars; and that
    nothing written overlaps anything read (``program.check_epoch_apart``).  Raises
    ``TypeError`` / ``ValueError`` naming the argument."""
    (P,) = array_shape("params", params, 1)
    host_buffer("params", params, np.float32, True)
    n_in, n_out = program.check_layer_table(layers, P)
    loss_kind = as_count("loss_kind", loss_kind)
    program.check_compiled_kinds(
        layers, loss_kind, backend,
        program.BUILT_IN_LAYERS if layer_codes is None else layer_codes,
        program.BUILT_IN_LOSSES if loss_codes is None else loss_codes)
    expect_shape("grads", grads, (P,), "params.shape")
    host_buffer("grads", grads, np.float32, True)
    momentum = as_number("momentum", momentum)
    weight_decay = as_number("weight_decay", weight_decay)
    if velocities is None:
        if momentum != 0.0:
            raise ValueError(f"velocities: required when momentum != 0 (got {momentum})")
    else:
        expect_shape("velocities", velocities, (P,), "params.shape")
        host_buffer("velocities", velocities, np.float32, True)
    N, I = array_shape("x", x, 2)
    if I != n_in:
        raise ValueError(f"x.shape[1] is {I} but layers[0] n_in is {n_in}; expected them equal")
    host_buffer("x", x, np.float32)
    record = program.LOSSES[loss_kind]
    if record.targets == "labels":
        expect_shape("targets", targets, (N,), "(x.shape[0],)")
        host_buffer("targets", targets, np.int64)
        index_range("targets", targets, n_out, "labels")
    else:
        if record.targets == "binary" and n_out != 1:
            raise ValueError(f"loss_kind: {record.name} needs a program with one output, "
                             f"this one has {n_out}")
        expect_shape("targets", targets, (N, n_out), "(x.shape[0], layers[-1] n_out)")
        host_buffer("targets", targets, np.float32)
    (R,) = array_shape("order", order, 1)
    host_buffer("order", order, np.int64)
    index_range("order", order, N, "row indices")
    bs = as_count("bs", bs)
    if bs < 1:
        raise ValueError(f"bs: expected a batch size >= 1, got {bs}")
    steps = -(-R // bs)
    expect_shape("lrs", lrs, (steps,), "(ceil(order.size / bs),)")
    host_buffer("lrs", lrs, np.float32)
    expect_shape("losses", losses, (steps,), "(ceil(order.size / bs),)")
    host_buffer("losses", losses, np.float64, True)
    program.check_epoch_apart(layers, x, targets, order, lrs, params, grads, velocities, losses)
    return EpochSizes(P, N, R, n_out, bs, steps, momentum, weight_decay)


#: Kernels a backend may implement (``Backend.supports(name)`` says whether it does);
#: when present they must take exactly these parameters.
OPTIONAL_KERNELS: dict[str, tuple[str, ...]] = {
    # one epoch of SGD over a layer program (see ``program.py``): steps done
    "train_epoch": ("layers", "loss_kind", "x", "targets", "order", "bs", "lrs", "params",
                    "grads", "velocities", "momentum", "weight_decay", "losses"),
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
