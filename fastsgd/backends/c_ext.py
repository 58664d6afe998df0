"""The C backend: every kernel of the contract in C99, compiled by cffi.

The sources live in ``csrc/`` (``kernels.h`` lists every C function with its
shapes); ``pip install .`` or ``pip install -e .`` builds them into
``fastsgd._ckernels``.  The matmuls pack their operands into panels and run a
register-blocked micro-kernel on the library's own threads (see ``set_threads``).  The micro-kernel exists
for AVX-512, AVX2 and baseline x86-64 (each with its own register tile) and the
elementwise kernels are compiled for the same three; the best the CPU runs is
picked at run time (``isa()`` says which matmul kernel is in use).

This is the only module that touches ``ffi`` / ``lib``.  Arguments normally arrive
validated by ``contract.Backend``, but each function here still checks, cheaply,
everything memory safety depends on before calling C, reading the shapes from the
same declaration as the contract (``spec.SIGNATURES``, through one checker,
``_checked``): every array must be a
``numpy.ndarray`` of dtype float32 (labels int64), C-contiguous (non-contiguous
input is rejected, never copied), writable where it is an output, and of the size
the kernel will read or write.  A violation raises ``TypeError`` or ``ValueError``
naming the argument.  Values (NaN, labels in range for the accuracy) are the
contract's business, except what C indexes with: out-of-range labels of the
cross-entropy raise ``ValueError`` here too, and so do ``train_epoch``'s row order and
its layer table (checked by ``program.check_layer_table``), and so is overlap in
``train_epoch`` (``program.check_epoch_apart``: C indexes memory with the order and
labels it reads).  Elsewhere an output that overlaps an input gives wrong numbers, not a
crash (``contract.Backend`` refuses it); elementwise kernels may run in place.

Set ``FASTSGD_DISABLE_C=1`` to make this backend report itself unavailable.
Dimension letters as in ``contract.py``.
"""
import importlib.util
import os

import numpy as np

from . import program
from .spec import (
    SIGNATURES,
    array_shape,
    bind_dims,
    check_epoch,
    dim_sources,
    expect_shape,
    host_array,
)

if os.environ.get("FASTSGD_DISABLE_C", "") not in ("", "0"):
    raise ImportError("C extension disabled by FASTSGD_DISABLE_C=1")
if importlib.util.find_spec("fastsgd._ckernels") is None:
    raise ImportError("C extension not built: fastsgd._ckernels is missing; install with a "
                      "C compiler (pip install -e .) or run `python csrc/build.py`, and set "
                      "FASTSGD_REQUIRE_C=1 to make a failed build an error")

from fastsgd._ckernels import ffi, lib  # noqa: E402  (after the availability checks)

_ndarray = np.ndarray
_F32 = np.dtype(np.float32)
_I64 = np.dtype(np.int64)
_F64 = np.dtype(np.float64)
_from_buffer = ffi.from_buffer
_NULL = ffi.NULL


# ----------------------------------------------------------- argument checks
#: The kinds of pointer ``_ptr`` makes: cffi item type and the NumPy dtype it needs.
_FLOAT, _INT64, _DOUBLE = ("float[]", _F32), ("int64_t[]", _I64), ("double[]", _F64)
#: The kind for each array dtype of ``spec.SIGNATURES`` (``Param.dtype``).
_POINTERS = {"float": _FLOAT, "int64": _INT64}


def _ptr(name, x, kind, writable=False):
    """A cffi pointer into ndarray ``x`` of ``kind`` (``_FLOAT``, ``_INT64``, ``_DOUBLE``)
    after checking its type, dtype and layout.

    ``ffi.from_buffer`` keeps ``x`` alive for the call and refuses (raising) buffers
    that are not C-contiguous or, with ``writable``, read-only; it does not look at
    the dtype, which is checked here.  ``len()`` of the result is ``x.size``.
    """
    ctype, dtype = kind
    if type(x) is not _ndarray or x.dtype is not dtype:
        host_array(name, x, dtype)  # the fast test fails for subclasses too
    try:
        return _from_buffer(ctype, x, require_writable=writable)
    except (TypeError, ValueError, BufferError) as exc:
        raise _layout_error(name, x, writable, exc) from None


def _same_size(name, ptr, n, source):
    """Check that the array behind ``ptr`` has ``n`` elements (``source`` says whose)."""
    if len(ptr) != n:
        raise ValueError(f"{name}: expected {n} elements = {source}, got {len(ptr)}")


def _layout_error(name, x, writable, exc):
    if not x.flags.c_contiguous:
        return ValueError(f"{name}: expected a C-contiguous array (non-contiguous input is "
                          f"rejected, not copied); pass np.ascontiguousarray({name})")
    if writable and not x.flags.writeable:
        return ValueError(f"{name}: expected a writable array (it is an output)")
    return ValueError(f"{name}: cannot pass this array to C ({exc})")


def _bad_labels(name, count, n_classes):
    if count:
        raise ValueError(f"{name}: labels must lie in [0, {n_classes}); "
                         f"{count} do not")


# ----------------------------------------------------------------- kernels
def _plan(params):
    """What ``_checked`` checks for a kernel of these ``spec.SIGNATURES`` params, in this
    order: the shapes of the arrays read (they set the dimensions), the exact shapes of
    the arrays written, then every array's type, dtype and layout as it becomes a
    pointer, and the sizes of the "n" arrays; then the scalars."""
    sources = dim_sources(params)
    reads = [(i, p, len(p.dims)) for i, p in enumerate(params)
             if p.dims and p.dims != "n" and not p.written]
    writes = [(i, p.name, p.dims, f"({', '.join(sources[d] for d in p.dims)}"
               f"{',' * (len(p.dims) == 1)})")
              for i, p in enumerate(params) if p.dims and p.dims != "n" and p.written]
    arrays = [(i, p.name, _POINTERS[p.dtype], p.written, p.optional)
              for i, p in enumerate(params) if p.dims]
    flat = [p.name for p in params if p.dims == "n"]
    scalars = [(i, p.name) for i, p in enumerate(params) if not p.dims]
    return reads, writes, arrays, flat, scalars


_PLANS = {kernel: _plan(params) for kernel, params in SIGNATURES.items()}


def _checked(kernel, args) -> dict:
    """The C arguments of ``kernel``'s ``args`` by name (pointers, dimension letters, "n"
    for an elementwise size, scalars as floats), after checking every array against
    ``spec.SIGNATURES[kernel]`` (``_plan``), so no call can make C read or write outside
    the arrays it was given.  An optional array given as None becomes NULL."""
    reads, writes, arrays, flat, scalars = _PLANS[kernel]
    values = bind_dims([(p, array_shape(p.name, args[i], ndim)) for i, p, ndim in reads])
    for i, name, dims, source in writes:
        if args[i] is not None:  # None: an optional output, checked below
            expect_shape(name, args[i], tuple(map(values.__getitem__, dims)), source)
    for i, name, kind, writable, optional in arrays:
        x = args[i]
        values[name] = _NULL if x is None and optional else _ptr(name, x, kind, writable)
    if flat:
        n = values["n"] = len(values[flat[0]])
        for name in flat[1:]:
            if values[name] is not _NULL:
                _same_size(name, values[name], n, f"{flat[0]}.size")
    for i, name in scalars:
        values[name] = float(args[i])
    return values


def _prechecked_products():
    """``PRECHECKED``: the matmul family's C calls for arguments already checked as
    ``_checked`` would (float32 ndarrays, C-contiguous, outputs writable and of the
    shapes the inputs give): pointers and sizes only, about 1 us instead of 4.  Each
    takes the kernel's arrays and ``scan``, and returns False only when ``scan`` is set
    and an output holds NaN or Inf (C scans each part of the output where it computed
    it, while it is in that core's cache)."""
    def r(x):
        return _from_buffer("float[]", x)

    def w(x):
        return _from_buffer("float[]", x, require_writable=True)

    def matmul(a, b, out, scan):
        return lib.matmul(w(out), r(a), r(b), a.shape[0], a.shape[1], b.shape[1], scan)

    def matmul_backward_input(dy, w_, dx, scan):
        return lib.matmul_backward_input(w(dx), r(dy), r(w_), dy.shape[0], w_.shape[0],
                                         dy.shape[1], scan)

    def matmul_backward_weight(x, dy, dw, scan):
        return lib.matmul_backward_weight(w(dw), r(x), r(dy), x.shape[0], x.shape[1],
                                          dy.shape[1], scan)

    def bias_backward(dy, db, scan):
        return lib.bias_backward(w(db), r(dy), dy.shape[0], dy.shape[1], scan)

    def linear_forward(x, w_, b, out, scan):
        return lib.linear_forward(w(out), r(x), r(w_), r(b), x.shape[0], x.shape[1],
                                  w_.shape[1], scan)

    def linear_backward(x, w_, dy, dx, dw, db, scan):
        return lib.linear_backward(_NULL if dx is None else w(dx), w(dw), w(db), r(x), r(w_),
                                   r(dy), x.shape[0], x.shape[1], w_.shape[1], scan)

    return {f.__name__: f for f in (matmul, matmul_backward_input, matmul_backward_weight,
                                    bias_backward, linear_forward, linear_backward)}


#: The matmul family's C calls, for arguments checked once: by ``_checked`` in the
#: functions below, or by ``contract.Backend``'s host lane (``host_lane.accept``), which
#: calls them directly, with the NaN/Inf scan of their outputs (``host_lane``'s
#: docstring says why that suffices).
PRECHECKED = _prechecked_products()


def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    _checked("matmul", (a, b, out))
    PRECHECKED["matmul"](a, b, out, 0)


def matmul_backward_input(dy, w, dx):
    """dx = dy @ w.T.   dy (B, O), w (I, O) -> dx (B, I)."""
    _checked("matmul_backward_input", (dy, w, dx))
    PRECHECKED["matmul_backward_input"](dy, w, dx, 0)


def matmul_backward_weight(x, dy, dw):
    """dw = x.T @ dy.   x (B, I), dy (B, O) -> dw (I, O)."""
    _checked("matmul_backward_weight", (x, dy, dw))
    PRECHECKED["matmul_backward_weight"](x, dy, dw, 0)


def bias_backward(dy, db):
    """db = dy.sum(0).   dy (B, O) -> db (O,)."""
    _checked("bias_backward", (dy, db))
    PRECHECKED["bias_backward"](dy, db, 0)


def linear_forward(x, w, b, out):
    """out = x @ w + b.   x (B, I), w (I, O), b (O,) -> out (B, O)."""
    _checked("linear_forward", (x, w, b, out))
    PRECHECKED["linear_forward"](x, w, b, out, 0)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w.T (skipped when dx is None), dw = x.T @ dy, db = dy.sum(0)."""
    _checked("linear_backward", (x, w, dy, dx, dw, db))
    PRECHECKED["linear_backward"](x, w, dy, dx, dw, db, 0)


def _losses(kind):
    """The two entries of a loss kind (a registry record) compiled into C, by its
    targets: "binary" ``f(preds (B,), targets (B,))``, "real" the same of n elements
    (C: ``fwd(preds, targets, n)``, ``bwd(dpreds, preds, targets, n)``), "labels"
    ``f(logits (B, C), labels (B,))`` (C: the loss through a pointer, and the count of
    labels outside [0, C), which raises).  ``forward`` returns the mean."""
    c_forward, c_backward = getattr(lib, kind.forward), getattr(lib, kind.backward)
    if kind.targets == "labels":
        def forward(logits, labels):
            v = _checked(kind.forward, (logits, labels))
            loss = ffi.new("double *")
            _bad_labels("labels", c_forward(loss, v["logits"], v["labels"], v["B"], v["C"]),
                        v["C"])
            return loss[0]

        def backward(logits, labels, dlogits):
            v = _checked(kind.backward, (logits, labels, dlogits))
            _bad_labels("labels", c_backward(v["dlogits"], v["logits"], v["labels"], v["B"],
                                             v["C"]), v["C"])
    else:
        size = "B" if kind.targets == "binary" else "n"

        def forward(preds, targets):
            v = _checked(kind.forward, (preds, targets))
            return c_forward(v["preds"], v["targets"], v[size])

        def backward(preds, targets, dpreds):
            v = _checked(kind.backward, (preds, targets, dpreds))
            c_backward(v["dpreds"], v["preds"], v["targets"], v[size])

    forward.__name__ = forward.__qualname__ = kind.forward
    backward.__name__ = backward.__qualname__ = kind.backward
    forward.__doc__ = f"The mean {kind.name} loss in C ({kind.targets} targets)."
    backward.__doc__ = f"The gradient of {kind.forward} in C, shaped like its first input."
    return forward, backward


def _activations(kind):
    """The two entries of a parameter-free layer kind (a registry record) compiled into
    C: ``forward(x, out)`` and ``backward(x or y, dy, dx)``, through the C switch
    ``activation_forward`` / ``activation_backward``; any shape, n elements."""
    code = kind.code

    def forward(x, out):
        v = _checked(kind.forward, (x, out))
        lib.activation_forward(code, v["out"], v["x"], v["n"])

    def backward_x(x, dy, dx):
        v = _checked(kind.backward, (x, dy, dx))
        lib.activation_backward(code, v["dx"], v["x"], v["x"], v["dy"], v["n"])

    def backward_y(y, dy, dx):
        v = _checked(kind.backward, (y, dy, dx))
        lib.activation_backward(code, v["dx"], v["y"], v["y"], v["dy"], v["n"])

    backward = backward_x if kind.saves == "x" else backward_y
    forward.__name__ = forward.__qualname__ = kind.forward
    backward.__name__ = backward.__qualname__ = kind.backward
    forward.__doc__ = f"The {kind.name} layer of x in C.   x, out (n,), any shape."
    backward.__doc__ = f"dx from dy for the {kind.name} layer in C.   (n,), any shape."
    return forward, backward


def sgd_update(param, grad, lr, momentum, weight_decay, velocity):
    """One SGD step in place (``velocity`` None without momentum).   param, grad (n,)."""
    v = _checked("sgd_update", (param, grad, lr, momentum, weight_decay, velocity))
    lib.sgd_update(v["param"], v["velocity"], v["grad"], v["n"], v["lr"], v["momentum"],
                   v["weight_decay"])


def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)).   preds, targets (B,)."""
    v = _checked("binary_accuracy", (preds, targets))
    return lib.binary_accuracy(v["preds"], v["targets"], v["B"])


def multiclass_accuracy(logits, labels):
    """mean(argmax(z_b) == label_b).   logits (B, C), labels (B,) int64."""
    v = _checked("multiclass_accuracy", (logits, labels))
    return lib.multiclass_accuracy(v["logits"], v["labels"], v["B"], v["C"])


# ------------------------------------------------------- fused training epoch
def _c_code(kind):
    """The code C compiled for ``kind`` (a registry record): ``FS_<NAME>`` of kernels.h."""
    return getattr(lib, f"FS_{kind.name.upper()}", None)


#: The layer and loss codes the compiled fused epoch runs: the registry's kinds C has.
_C_LAYERS = frozenset(k.code for k in program.LAYERS.values() if _c_code(k) == k.code)
_C_LOSSES = frozenset(k.code for k in program.LOSSES.values() if _c_code(k) == k.code)


def _check_program_consts():
    """The layer and loss codes compiled into C are those of the registry (``program.py``)."""
    wrong = [kind.name for kind in (*program.LAYERS.values(), *program.LOSSES.values())
             if kind.code in program.BUILT_IN_LAYERS | program.BUILT_IN_LOSSES
             and _c_code(kind) != kind.code]
    try:
        row_bytes = ffi.sizeof("fs_layer")
    except ffi.error:
        row_bytes = None
    if wrong or row_bytes != 4 * _I64.itemsize:
        raise ImportError(f"fastsgd._ckernels does not match program.py (layer codes {wrong}, "
                          f"row of {row_bytes} bytes); rebuild it: `python csrc/build.py`")


_check_program_consts()

for _kind in program.activations():
    if _kind.code in _C_LAYERS:
        globals().update({entry.__name__: entry for entry in _activations(_kind)})
for _kind in program.LOSSES.values():
    if _kind.code in _C_LOSSES:
        globals().update({entry.__name__: entry for entry in _losses(_kind)})
del _kind


def train_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads, velocities,
                momentum, weight_decay, losses):
    """One epoch of SGD over a layer program (``program.py``) in one C call; the steps done.

    layers (L, 4) int64 the table; params, grads (P,) float32 the flat blocks it points
    into and velocities (P,) or None (plain SGD, needs momentum == 0), updated in place;
    x (N, I) float32; targets as the loss's record says: (N, 1) 0/1 float32 ("binary",
    one output), (N, O) float32 ("real") or labels (N,) int64 in [0, O) ("labels");
    order (R,) int64 in [0, N), the rows the steps take; bs >= 1; lrs (steps,) float32,
    losses (steps,) float64 filled, steps = ceil(R / bs).  Checked by
    ``spec.check_epoch``, the one memory-safety check of the compiled epochs.
    Returns ``steps``, or s when the loss of step s is not finite (losses[s] written, that
    step's update skipped).
    """
    sizes = check_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads,
                        velocities, momentum, weight_decay, losses, "c", _C_LAYERS, _C_LOSSES)
    labels = program.LOSSES[int(loss_kind)].targets == "labels"   # C takes them apart
    done = lib.train_epoch(
        _from_buffer("double[]", losses), _from_buffer("float[]", params),
        _from_buffer("float[]", grads),
        _NULL if velocities is None else _from_buffer("float[]", velocities),
        _from_buffer("fs_layer[]", layers), len(layers), int(loss_kind),
        _from_buffer("float[]", x), _NULL if labels else _from_buffer("float[]", targets),
        1 if labels else sizes.n_out, _from_buffer("int64_t[]", targets) if labels else _NULL,
        _from_buffer("int64_t[]", order), _from_buffer("float[]", lrs), sizes.n_order,
        sizes.bs, sizes.n_params, sizes.momentum, sizes.weight_decay)
    if done < 0:
        raise MemoryError("train_epoch: cannot allocate the scratch arrays")
    return done


# ------------------------------------------------------------------ threads
def threads() -> int:
    """How many threads the C kernels may use (see ``set_threads``)."""
    return lib.pool_threads()


def set_threads(n: int) -> int:
    """Let the C kernels use at most ``n`` threads; returns the previous limit.

    The matmuls, the fused epoch and ``peak_gflops`` run on a small pool of threads of
    this library's own (no OpenMP runtime): the calling thread works too, and between
    jobs the others spin for at most about 50 us, then sleep, so NumPy's BLAS or
    another busy process gets the cores back at once.  The limit starts at the CPUs
    this process may run on, or at ``FASTSGD_THREADS`` (read when the library first
    needs it) when that is a positive number below them; ``OMP_NUM_THREADS`` does not
    apply.  A kernel called while another Python thread's kernel holds the pool runs on
    its caller's thread alone.  After ``os.fork()`` the child starts its own threads.
    """
    return lib.set_pool_threads(int(n))


def pool_stalls() -> int:
    """How many times the thread pool found its workers held up (another process on
    their cores: over 2 ms the caller waited for more than half its work) and then ran
    jobs on the calling thread alone for a while (see the README's Threads section)."""
    return int(lib.pool_stalls())


_FINITE_CHECKS = {_F32: (_FLOAT, lib.all_finite_f32), _F64: (_DOUBLE, lib.all_finite_f64)}


def all_finite(x) -> bool:
    """Whether the C-contiguous float32 or float64 ndarray ``x`` has no NaN or Inf.

    One vector pass, with no temporary array (``np.isfinite(x).all()`` writes a bool
    array first); it stops at the first block holding a bad value.  The contract's
    value checks use it for host arrays (``arrays.host_all_finite``).
    """
    kind, check = _FINITE_CHECKS.get(getattr(x, "dtype", None), (_FLOAT, None))
    ptr = _ptr("x", x, kind)  # a dtype it does not read fails here, as float32's
    return bool(check(ptr, len(ptr)))


def peak_gflops(seconds: float = 0.2, threads: int = 0) -> tuple[float, str, int]:
    """The machine's fp32 multiply-add peak, measured: ``(GFLOP/s, isa, threads used)``.

    Independent FMA chains on the widest vectors this CPU runs (``isa``: "avx512",
    "avx2" or "baseline") on ``threads`` threads (0: ``threads()``), the best of a few
    rounds within about ``seconds``.  A busy machine gives less.
    """
    used = ffi.new("int *")
    rate = lib.peak_gflops(float(seconds), int(threads), used)
    return rate, ffi.string(lib.peak_isa()).decode(), used[0]


#: The matmul micro-kernels, fastest first (each has its own register tile).
ISAS = ("avx512", "avx2", "baseline")


def isa() -> str:
    """The matmul micro-kernel in use: the fastest this CPU runs, unless set_isa chose."""
    return ffi.string(lib.matmul_isa()).decode()


def set_isa(name: str) -> str:
    """Use the micro-kernel ``name`` (one of ``ISAS``, e.g. to test a slower one).

    Returns the previous one; raises ``ValueError`` when this CPU or build lacks it.
    """
    previous = isa()
    if lib.set_matmul_isa(str(name).encode()) != 0:
        raise ValueError(f"isa: {name!r} is unknown or unsupported here; "
                         f"expected one of {ISAS} that this CPU runs")
    return previous
