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
everything memory safety depends on before calling C: every array must be a
``numpy.ndarray`` of dtype float32 (labels int64), C-contiguous (non-contiguous
input is rejected, never copied), writable where it is an output, and of the size
the kernel will read or write.  A violation raises ``TypeError`` or ``ValueError``
naming the argument.  Values (NaN, labels in range for the accuracy) are the
contract's business, except what C indexes with: out-of-range labels of the
cross-entropy raise ``ValueError`` here too, and so do ``train_epoch``'s row order and
its layer table (checked by ``program.check_layer_table``).  So is overlap: an output
that overlaps an input of a matmul-family kernel gives wrong numbers, not a crash
(``contract.Backend`` rejects it); elementwise kernels may run in place.

Set ``FASTSGD_DISABLE_C=1`` to make this backend report itself unavailable.
Dimension letters as in ``contract.py``.
"""
import importlib.util
import operator
import os

import numpy as np

from . import program

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
def _f32(name, x, writable=False):
    """A cffi ``float *`` into ndarray ``x`` after checking its type, dtype and layout.

    ``ffi.from_buffer`` keeps ``x`` alive for the call and refuses (raising) buffers
    that are not C-contiguous or, with ``writable``, read-only; it does not look at
    the dtype, which is checked here.  ``len()`` of the result is ``x.size``.
    """
    if type(x) is not _ndarray or x.dtype is not _F32:
        _check_array(name, x, _F32)  # the fast test fails for subclasses too
    try:
        return _from_buffer("float[]", x, require_writable=writable)
    except (TypeError, ValueError, BufferError) as exc:
        raise _layout_error(name, x, writable, exc) from None


def _i64(name, x):
    """A cffi ``int64_t *`` into ndarray ``x`` (labels), checked as in ``_f32``."""
    if type(x) is not _ndarray or x.dtype is not _I64:
        _check_array(name, x, _I64)
    try:
        return _from_buffer("int64_t[]", x)
    except (TypeError, ValueError, BufferError) as exc:
        raise _layout_error(name, x, False, exc) from None


def _f64(name, x, writable=False):
    """A cffi ``double *`` into ndarray ``x``, checked as in ``_f32``."""
    if type(x) is not _ndarray or x.dtype is not _F64:
        _check_array(name, x, _F64)
    try:
        return _from_buffer("double[]", x, require_writable=writable)
    except (TypeError, ValueError, BufferError) as exc:
        raise _layout_error(name, x, writable, exc) from None


def _check_array(name, x, dtype):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype != dtype:
        raise TypeError(f"{name}: expected dtype {dtype}, got {x.dtype}")


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


def _shape(name, x, ndim):
    """``x.shape`` after checking it has ``ndim`` dimensions."""
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if len(shape) != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {shape}")
    return shape


def _expect(name, x, shape, source):
    """Check that array ``x`` has exactly ``shape`` (the size C will touch).

    ``source`` says where the shape comes from, e.g. ``"(a.shape[0], b.shape[1])"``.
    """
    got = getattr(x, "shape", None)
    if got is None:
        raise TypeError(f"{name}: expected a numpy.ndarray, got {type(x).__name__}")
    if got != shape:
        raise ValueError(f"{name}: expected shape {shape} = {source}, got {got}")


def _bad_labels(name, count, n_classes):
    if count:
        raise ValueError(f"{name}: labels must lie in [0, {n_classes}); "
                         f"{count} do not")


# ------------------------------------------------------------------ matmul
def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    M, K = _shape("a", a, 2)
    K2, N = _shape("b", b, 2)
    if K2 != K:
        raise ValueError(f"b.shape[0] is {K2} but a.shape[1] is {K}; expected them equal")
    _expect("out", out, (M, N), "(a.shape[0], b.shape[1])")
    lib.matmul(_f32("out", out, True), _f32("a", a), _f32("b", b), M, K, N)


def matmul_backward_input(dy, w, dx):
    """dx = dy @ w.T, no transposed copy.   dy (B, O), w (I, O) -> dx (B, I)."""
    B, O = _shape("dy", dy, 2)
    I, O2 = _shape("w", w, 2)
    if O2 != O:
        raise ValueError(f"w.shape[1] is {O2} but dy.shape[1] is {O}; expected them equal")
    _expect("dx", dx, (B, I), "(dy.shape[0], w.shape[0])")
    lib.matmul_backward_input(_f32("dx", dx, True), _f32("dy", dy), _f32("w", w), B, I, O)


def matmul_backward_weight(x, dy, dw):
    """dw = x.T @ dy, no transposed copy.   x (B, I), dy (B, O) -> dw (I, O)."""
    B, I = _shape("x", x, 2)
    B2, O = _shape("dy", dy, 2)
    if B2 != B:
        raise ValueError(f"dy.shape[0] is {B2} but x.shape[0] is {B}; expected them equal")
    _expect("dw", dw, (I, O), "(x.shape[1], dy.shape[1])")
    lib.matmul_backward_weight(_f32("dw", dw, True), _f32("x", x), _f32("dy", dy), B, I, O)


def bias_backward(dy, db):
    """db[o] = sum_b dy[b, o].   dy (B, O) -> db (O,)."""
    B, O = _shape("dy", dy, 2)
    _expect("db", db, (O,), "(dy.shape[1],)")
    lib.bias_backward(_f32("db", db, True), _f32("dy", dy), B, O)


# ------------------------------------------------------------------ linear
def linear_forward(x, w, b, out):
    """out = x @ w + b.   x (B, I), w (I, O), b (O,) -> out (B, O)."""
    B, I = _shape("x", x, 2)
    I2, O = _shape("w", w, 2)
    if I2 != I:
        raise ValueError(f"w.shape[0] is {I2} but x.shape[1] is {I}; expected them equal")
    _expect("b", b, (O,), "(w.shape[1],)")
    _expect("out", out, (B, O), "(x.shape[0], w.shape[1])")
    lib.linear_forward(_f32("out", out, True), _f32("x", x), _f32("w", w), _f32("b", b),
                       B, I, O)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w.T (B, I), skipped when dx is None;  dw = x.T @ dy (I, O);  db = dy.sum(0) (O,).

    x (B, I), w (I, O), dy (B, O).
    """
    B, I = _shape("x", x, 2)
    I2, O = _shape("w", w, 2)
    if I2 != I:
        raise ValueError(f"w.shape[0] is {I2} but x.shape[1] is {I}; expected them equal")
    _expect("dy", dy, (B, O), "(x.shape[0], w.shape[1])")
    _expect("dw", dw, (I, O), "w.shape")
    _expect("db", db, (O,), "(w.shape[1],)")
    if dx is None:
        dx_ptr = _NULL
    else:
        _expect("dx", dx, (B, I), "x.shape")
        dx_ptr = _f32("dx", dx, True)
    lib.linear_backward(dx_ptr, _f32("dw", dw, True), _f32("db", db, True),
                        _f32("x", x), _f32("w", w), _f32("dy", dy), B, I, O)


# ------------------------------------------------------------- activations
# Elementwise kernels work on the flat arrays: any shape, sizes must agree.
def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), never overflowing; any shape.  out may be x."""
    px, po = _f32("x", x), _f32("out", out, True)
    _same_size("out", po, len(px), "x.size")
    lib.sigmoid_forward(po, px, len(px))


def sigmoid_backward(y, dy, dx):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output; any shape."""
    py, pdy, pdx = _f32("y", y), _f32("dy", dy), _f32("dx", dx, True)
    _same_size("dy", pdy, len(py), "y.size")
    _same_size("dx", pdx, len(py), "y.size")
    lib.sigmoid_backward(pdx, py, pdy, len(py))


def relu_forward(x, out):
    """out = max(x, 0); any shape.  out may be x."""
    px, po = _f32("x", x), _f32("out", out, True)
    _same_size("out", po, len(px), "x.size")
    lib.relu_forward(po, px, len(px))


def relu_backward(x, dy, dx):
    """dx = dy where x > 0 else 0, x the forward input; any shape."""
    px, pdy, pdx = _f32("x", x), _f32("dy", dy), _f32("dx", dx, True)
    _same_size("dy", pdy, len(px), "x.size")
    _same_size("dx", pdx, len(px), "x.size")
    lib.relu_backward(pdx, px, pdy, len(px))


def tanh_forward(x, out):
    """out = tanh(x), within a few ulp relative; any shape.  out may be x."""
    px, po = _f32("x", x), _f32("out", out, True)
    _same_size("out", po, len(px), "x.size")
    lib.tanh_forward(po, px, len(px))


def tanh_backward(y, dy, dx):
    """dx = dy * (1 - y**2), y = tanh(x) the forward output; any shape."""
    py, pdy, pdx = _f32("y", y), _f32("dy", dy), _f32("dx", dx, True)
    _same_size("dy", pdy, len(py), "y.size")
    _same_size("dx", pdx, len(py), "y.size")
    lib.tanh_backward(pdx, py, pdy, len(py))


# ------------------------------------------------------------------ losses
def mnist_loss_forward(preds, targets):
    """mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,)."""
    (B,) = _shape("preds", preds, 1)
    _expect("targets", targets, (B,), "preds.shape")
    return lib.mnist_loss_forward(_f32("preds", preds), _f32("targets", targets), B)


def mnist_loss_backward(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, +1) * s_b * (1 - s_b) / B.   (B,) -> dpreds (B,)."""
    (B,) = _shape("preds", preds, 1)
    _expect("targets", targets, (B,), "preds.shape")
    _expect("dpreds", dpreds, (B,), "preds.shape")
    lib.mnist_loss_backward(_f32("dpreds", dpreds, True), _f32("preds", preds),
                            _f32("targets", targets), B)


def cross_entropy_forward(logits, labels):
    """mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int64."""
    B, C = _shape("logits", logits, 2)
    _expect("labels", labels, (B,), "(logits.shape[0],)")
    loss = ffi.new("double *")
    bad = lib.cross_entropy_forward(loss, _f32("logits", logits), _i64("labels", labels), B, C)
    _bad_labels("labels", bad, C)
    return loss[0]


def cross_entropy_backward(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B.   (B, C) -> dlogits (B, C)."""
    B, C = _shape("logits", logits, 2)
    _expect("labels", labels, (B,), "(logits.shape[0],)")
    _expect("dlogits", dlogits, (B, C), "logits.shape")
    bad = lib.cross_entropy_backward(_f32("dlogits", dlogits, True), _f32("logits", logits),
                                     _i64("labels", labels), B, C)
    _bad_labels("labels", bad, C)


def mse_forward(preds, targets):
    """mean_n (p_n - t_n)^2 over every element.   preds, targets (n,) (any shape, equal sizes)."""
    pp, pt = _f32("preds", preds), _f32("targets", targets)
    _same_size("targets", pt, len(pp), "preds.size")
    return lib.mse_forward(pp, pt, len(pp))


def mse_backward(preds, targets, dpreds):
    """dpreds_n = 2 (p_n - t_n) / n.   preds, targets, dpreds (n,) (any shape, equal sizes)."""
    pp, pt, pd = _f32("preds", preds), _f32("targets", targets), _f32("dpreds", dpreds, True)
    _same_size("targets", pt, len(pp), "preds.size")
    _same_size("dpreds", pd, len(pp), "preds.size")
    lib.mse_backward(pd, pp, pt, len(pp))


# --------------------------------------------------------------- optimizer
def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """In place:  g = grad + wd * param;  v = momentum * v + g (if velocity);  param -= lr * g.

    velocity is None when momentum == 0.  Any shape; sizes must agree.
    """
    pp, pg = _f32("param", param, True), _f32("grad", grad)
    _same_size("grad", pg, len(pp), "param.size")
    if velocity is None:
        pv = _NULL
    else:
        pv = _f32("velocity", velocity, True)
        _same_size("velocity", pv, len(pp), "param.size")
    lib.sgd_update(pp, pv, pg, len(pp), float(lr), float(momentum), float(weight_decay))


# ----------------------------------------------------------------- metrics
def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)): sigmoid(p) > 0.5 exactly when p > 0.   (B,)."""
    (B,) = _shape("preds", preds, 1)
    _expect("targets", targets, (B,), "preds.shape")
    return lib.binary_accuracy(_f32("preds", preds), _f32("targets", targets), B)


def multiclass_accuracy(logits, labels):
    """mean(argmax(z_b) == label_b), first maximum on ties.   logits (B, C), labels (B,)."""
    B, C = _shape("logits", logits, 2)
    _expect("labels", labels, (B,), "(logits.shape[0],)")
    return lib.multiclass_accuracy(_f32("logits", logits), _i64("labels", labels), B, C)


# ------------------------------------------------------- fused training epoch
def _as_count(name, value):
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None


def _index_range(name, indices, high, what):
    """Check that every value of int64 ``indices`` lies in [0, high) (C indexes with them)."""
    if indices.size:
        low, top = int(indices.min()), int(indices.max())
        if low < 0 or top >= high:
            raise ValueError(f"{name}: {what} must lie in [0, {high}), got values from "
                             f"{low} to {top}")


def _number(name, value):
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a number, got {value!r}") from None


def _check_program_consts():
    """The layer and loss codes compiled into C are those of ``program.py``."""
    ours = {"FS_LINEAR": program.LINEAR, "FS_RELU": program.RELU, "FS_SIGMOID": program.SIGMOID,
            "FS_TANH": program.TANH, "FS_MNIST_LOSS": program.MNIST_LOSS,
            "FS_CROSS_ENTROPY": program.CROSS_ENTROPY, "FS_MSE": program.MSE}
    wrong = [name for name, code in ours.items() if getattr(lib, name, None) != code]
    try:
        row_bytes = ffi.sizeof("fs_layer")
    except ffi.error:
        row_bytes = None
    if wrong or row_bytes != 4 * _I64.itemsize:
        raise ImportError(f"fastsgd._ckernels does not match program.py (layer codes {wrong}, "
                          f"row of {row_bytes} bytes); rebuild it: `python csrc/build.py`")


_check_program_consts()


def _program_targets(loss_kind, targets, labels, N, n_out):
    """(targets pointer, its columns, labels pointer) for the loss; the unused one is NULL."""
    loss_kind = _as_count("loss_kind", loss_kind)
    if loss_kind not in program.LOSS_KINDS.values():
        raise ValueError(f"loss_kind: expected one of {program.LOSS_KINDS}, got {loss_kind!r}")
    if loss_kind == program.CROSS_ENTROPY:
        _check_array("targets", targets, _F32)  # unused
        _expect("labels", labels, (N,), "(x.shape[0],)")
        plabels = _i64("labels", labels)
        _index_range("labels", labels, n_out, "labels")
        return _NULL, 1, plabels
    if loss_kind == program.MNIST_LOSS and n_out != 1:
        raise ValueError(f"loss_kind: mnist_loss needs a program with one output, "
                         f"this one has {n_out}")
    _check_array("labels", labels, _I64)  # unused
    _expect("targets", targets, (N, n_out), "(x.shape[0], layers[-1] n_out)")
    return _f32("targets", targets), n_out, _NULL


def train_epoch(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
                params, grads, velocities, losses):
    """One epoch of SGD over a layer program (``program.py``) in one C call; the steps done.

    layers (L, 4) int64 the table; params, grads (P,) float32 the flat blocks it points
    into and velocities (P,) or None (plain SGD, needs momentum == 0), updated in place;
    x (N, I) float32; loss_kind MNIST_LOSS: targets (N, 1) float32, one output;
    MSE: targets (N, O) float32; CROSS_ENTROPY: labels (N,) int64 in [0, O) (the unused
    one of targets / labels may be any array of its dtype); order (N,) int64 in [0, N);
    bs >= 1; lrs (steps,) float32, losses (steps,) float64 filled, steps = ceil(N / bs).
    Returns ``steps``, or s when the loss of step s is not finite (losses[s] written, that
    step's update skipped).
    """
    (P,) = _shape("params", params, 1)
    pparams = _f32("params", params, True)
    n_in, n_out = program.check_layer_table(layers, P)
    players = _from_buffer("fs_layer[]", layers)
    _expect("grads", grads, (P,), "params.shape")
    pgrads = _f32("grads", grads, True)
    momentum = _number("momentum", momentum)
    weight_decay = _number("weight_decay", weight_decay)
    if velocities is None:
        if momentum != 0.0:
            raise ValueError(f"velocities: required when momentum != 0 (got {momentum})")
        pvelocities = _NULL
    else:
        _expect("velocities", velocities, (P,), "params.shape")
        pvelocities = _f32("velocities", velocities, True)

    N, I = _shape("x", x, 2)
    if I != n_in:
        raise ValueError(f"x.shape[1] is {I} but layers[0] n_in is {n_in}; expected them equal")
    px = _f32("x", x)
    ptargets, cols, plabels = _program_targets(loss_kind, targets, labels, N, n_out)
    _expect("order", order, (N,), "(x.shape[0],)")
    porder = _i64("order", order)
    _index_range("order", order, N, "row indices")
    bs = _as_count("bs", bs)
    if bs < 1:
        raise ValueError(f"bs: expected a batch size >= 1, got {bs}")
    steps = -(-N // bs)
    _expect("lrs", lrs, (steps,), "(ceil(N / bs),)")
    plrs = _f32("lrs", lrs)
    _expect("losses", losses, (steps,), "(ceil(N / bs),)")
    plosses = _f64("losses", losses, True)
    done = lib.train_epoch(plosses, pparams, pgrads, pvelocities, players, len(players),
                           int(loss_kind), px, ptargets, cols, plabels, porder, plrs, N, bs, P,
                           momentum, weight_decay)
    if done < 0:
        raise MemoryError("train_epoch: cannot allocate the scratch arrays")
    return done


# ------------------------------------------------------------------ threads
def threads() -> int:
    """How many threads the C kernels may use (see ``set_threads``)."""
    return lib.matmul_threads()


def set_threads(n: int) -> int:
    """Let the C kernels use at most ``n`` threads; returns the previous limit.

    The matmuls, the fused epoch and ``peak_gflops`` run on a small pool of threads of
    this library's own (no OpenMP runtime): the calling thread works too, and between
    jobs the others spin for at most about 50 us, then sleep, so NumPy's BLAS or
    another busy process gets the cores back at once.  The limit starts at
    ``FASTSGD_THREADS`` (read when the library first needs it) when that is a positive
    number, else at the CPUs this process may run on; ``OMP_NUM_THREADS`` does not
    apply.  A kernel called while another Python thread's kernel holds the pool runs on
    its caller's thread alone.  After ``os.fork()`` the child starts its own threads.
    """
    return lib.set_matmul_threads(int(n))


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
