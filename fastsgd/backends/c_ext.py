"""The C backend: every kernel of the contract in C99, compiled by cffi.

The sources live in ``csrc/`` (``kernels.h`` lists every C function with its
shapes); ``pip install .`` or ``pip install -e .`` builds them into
``fastsgd._ckernels``.  The matmuls pack their operands into panels and run a
register-blocked micro-kernel, threaded with OpenMP.  The micro-kernel exists
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
contract's business, except that out-of-range labels of the cross-entropy raise
``ValueError`` here too since C would index with them.  So is overlap: an output
that overlaps an input of a matmul-family kernel gives wrong numbers, not a crash
(``contract.Backend`` rejects it); elementwise kernels may run in place.

Set ``FASTSGD_DISABLE_C=1`` to make this backend report itself unavailable.
Dimension letters as in ``contract.py``.
"""
import importlib.util
import operator
import os

import numpy as np

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
_PARAM_NAMES = ("w1", "b1", "w2", "b2")


def _as_count(name, value):
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__}") from None


def train_epoch(x, targets, order, bs, params, velocities, grads, lrs, momentum, weight_decay,
                binary, losses):
    """One pass of SGD over a Linear model or a Linear-ReLU-Linear MLP, in one C call.

    x (N, I) float32; targets (N,) int64: 0/1 when ``binary`` (mnist_loss, one output),
    else class labels in [0, O) (cross-entropy); order (N,) int64 row order, values in
    [0, N); bs >= 1 the batch size; params, velocities, grads: lists of two arrays
    [w1 (I, O), b1 (O,)] or four [w1 (I, H), b1 (H,), w2 (H, O), b2 (O,)], updated in
    place; lrs (steps,) float32 the learning rate of each step and losses (steps,)
    float64, filled, with steps = ceil(N / bs).  Per parameter and step:
    v = momentum * v + (g + weight_decay * p);  p -= lr * v.  Returns the steps done:
    ``steps``, or s when the loss of step s is not finite (losses[s] written).
    """
    N, I = _shape("x", x, 2)
    px = _f32("x", x)
    _expect("targets", targets, (N,), "(x.shape[0],)")
    pt = _i64("targets", targets)
    _expect("order", order, (N,), "(x.shape[0],)")
    po = _i64("order", order)
    if N and (order.min() < 0 or order.max() >= N):
        raise ValueError(f"order: row indices must lie in [0, {N}); got values in "
                         f"[{order.min()}, {order.max()}]")
    bs = _as_count("bs", bs)
    if bs < 1:
        raise ValueError(f"bs: expected a batch size >= 1, got {bs}")
    groups = {"params": params, "velocities": velocities, "grads": grads}
    for name, group in groups.items():
        if not isinstance(group, (list, tuple)):
            raise TypeError(f"{name}: expected a list of 2 or 4 arrays, got "
                            f"{type(group).__name__}")
    n_params = len(params)
    if n_params not in (2, 4):
        raise ValueError(f"params: expected 2 arrays (Linear) or 4 (Linear-ReLU-Linear), "
                         f"got {n_params}")
    for name in ("velocities", "grads"):
        if len(groups[name]) != n_params:
            raise ValueError(f"{name}: expected {n_params} arrays like params, "
                             f"got {len(groups[name])}")
    two_layers = n_params == 4
    I2, H = _shape("params[0] (w1)", params[0], 2)
    if I2 != I:
        raise ValueError(f"params[0] (w1): shape[0] is {I2} but x.shape[1] is {I}; "
                         f"expected them equal")
    if two_layers:
        H2, O = _shape("params[2] (w2)", params[2], 2)
        if H2 != H:
            raise ValueError(f"params[2] (w2): shape[0] is {H2} but w1.shape[1] is {H}; "
                             f"expected them equal")
        shapes = [(I, H), (H,), (H, O), (O,)]
    else:
        O = H
        shapes = [(I, O), (O,)]
    ptrs = {}
    for name, group in groups.items():
        for k, (array, shape) in enumerate(zip(group, shapes)):
            label = f"{name}[{k}] ({_PARAM_NAMES[k]})"
            _expect(label, array, shape, "its parameter's shape")
            ptrs[name, k] = _f32(label, array, True)
    if not two_layers:
        for name in groups:
            ptrs[name, 2] = ptrs[name, 3] = _NULL

    binary = bool(binary)
    if N:
        t_min, t_max = targets.min(), targets.max()
        if binary:
            if O != 1:
                raise ValueError(f"binary: mnist_loss needs one output, the model has {O}")
            if t_min < 0 or t_max > 1:
                raise ValueError(f"targets: mnist_loss targets must be 0 or 1; got values "
                                 f"in [{t_min}, {t_max}]")
        elif t_min < 0 or t_max >= O:
            raise ValueError(f"targets: labels must lie in [0, {O}); got values in "
                             f"[{t_min}, {t_max}]")
    steps = -(-N // bs)
    _expect("lrs", lrs, (steps,), "(ceil(N / bs),)")
    pl = _f32("lrs", lrs)
    _expect("losses", losses, (steps,), "(ceil(N / bs),)")
    ploss = _f64("losses", losses, True)
    done = lib.train_epoch(
        ploss, *(ptrs["params", k] for k in range(4)),
        *(ptrs["velocities", k] for k in range(4)), *(ptrs["grads", k] for k in range(4)),
        px, pt, po, pl, N, I, H if two_layers else O, O, bs, two_layers, binary,
        float(momentum), float(weight_decay))
    if done < 0:
        raise MemoryError("train_epoch: cannot allocate the scratch arrays")
    return done


# ------------------------------------------------------------------ threads
def threads() -> int:
    """How many threads the matmul kernels may use (OpenMP's default at first)."""
    return lib.matmul_threads()


def set_threads(n: int) -> int:
    """Let the matmul kernels use at most ``n`` threads; returns the previous limit."""
    return lib.set_matmul_threads(int(n))


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
