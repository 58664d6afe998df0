"""The Numba backend: every kernel of the contract as ``@njit`` loops on the CPU.

No BLAS: the matmuls are written out here.  Each function writes into the
preallocated output(s) passed last; arguments arrive validated by
``contract.Backend`` (C-contiguous float32, shapes checked, labels in range).
Dimension letters as in ``contract.py``.

``parallel=True`` is used only on the matmul family, and only for products large
enough for threads to pay (``PARALLEL_MIN_MACS``); ``fastmath=True`` where it lets
LLVM vectorise a reduction.

Threads: unless ``NUMBA_THREADING_LAYER`` is set (or the process already chose a
layer), importing this module selects Numba's ``workqueue`` layer instead of its
default, GNU OpenMP: OpenMP's workers spin after each kernel, stalling NumPy's BLAS
and other busy processes, and a process that forks after an OpenMP region cannot run
parallel code in the child.  Workqueue workers sleep between kernels and the child of
a fork starts its own.  Workqueue must not be entered by two threads at once, so the
parallel kernels here take a lock (kernels from several Python threads run one at a
time); a forked child makes a new one, since a thread of the parent may have held it
inside a kernel at the fork.  ``numba.set_num_threads`` sets their thread count.

Cache: every compiled function here is kept in Numba's on-disk cache, so only the
first process compiles (``warm_up`` compiles or loads them all; ``cache_dir`` says
where they live).  Numba keeps them next to this file (``__pycache__``) when that is
writable, else in the user's cache folder (``~/.cache/numba``); ``NUMBA_CACHE_DIR``
overrides both.  When neither is writable (a read-only install and home), this module
points Numba at a folder in the temporary directory before anything is compiled.
"""
import functools
import math
import os
import tempfile
import threading

import numba
import numpy as np
from numba import njit, prange

from . import numba_math
from . import program as prog

if not os.environ.get("NUMBA_THREADING_LAYER") and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"



def _writable_dir(path) -> bool:
    """Whether the folder ``path`` exists or can be made, and a file can be written there."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def fallback_cache_dir(package_dir, user_dir):
    """The folder Numba must be told to cache in, or None when its own choice works.

    Numba caches next to the source (``package_dir/__pycache__``), else under
    ``user_dir``; when neither can be written it would refuse to decorate with
    ``cache=True``: then a per-user folder in the temporary directory.
    """
    if numba.config.CACHE_DIR:
        return None
    if _writable_dir(os.path.join(package_dir, "__pycache__")) or _writable_dir(user_dir):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return os.path.join(tempfile.gettempdir(), f"fastsgd-numba-cache-{uid}")


def _user_cache_dir():
    from numba.misc.appdirs import AppDirs
    return AppDirs(appname="numba", appauthor=False).user_cache_dir


_FALLBACK = fallback_cache_dir(os.path.dirname(os.path.abspath(__file__)), _user_cache_dir())
if _FALLBACK:
    numba.config.CACHE_DIR = _FALLBACK

#: Held around every parallel kernel (see the module docstring).
_PARALLEL = threading.Lock()


def _new_lock_after_fork():
    """A forked child gets a free lock: the parent's may have been held by a thread
    inside a kernel at the fork, and that thread does not exist in the child."""
    global _PARALLEL
    _PARALLEL = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)

#: Elementwise kernels use fastmath without the no-NaN / no-Inf assumptions, so NaN in
#: gives NaN out (as in NumPy); the matmuls, which only multiply and add, keep full
#: fastmath (it vectorises their inner loops much better).  The numpy error model: no
#: Python-style ZeroDivisionError checks in compiled loops.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_MATMUL = dict(cache=True, parallel=True, fastmath=True, error_model="numpy")
_ELEMENTWISE = dict(cache=True, fastmath=_FASTMATH, error_model="numpy")
#: Loops over ``numba_math``'s sigmoid and tanh: their exp must not be reassociated.
_TRANSCENDENTAL = dict(cache=True, fastmath=numba_math.FASTMATH, error_model="numpy")
_PLAIN = dict(cache=True, error_model="numpy")

#: Register blocking of the matmuls: ROWS rows of ``out`` are updated together from
#: DEPTH rows of ``b`` at a time, so each loaded vector of b feeds ROWS * DEPTH
#: multiply-adds and each row of out is loaded and stored once per DEPTH steps of k.
#: With 512-bit vectors (``numba_target``) the loop over j compiles, per 16 columns, to
#: 4 loads of b and 4 of out, 16 ``vfmadd231ps`` on zmm registers (the 16 a values
#: broadcast into zmm16-31 before the loop) and 4 stores of out (inspect_asm of
#: ``_gemm_one_thread``, Emerald Rapids); with AVX2, the same on ymm, 8 columns a step.
#: Rows of out stay in L1 while b streams from L2 once per block of ROWS rows.
ROWS = 4
DEPTH = 4


@njit(inline="always")
def _a(a, i, k, transposed):
    """Element (i, k) of A, where A is ``a`` or, when ``transposed``, ``a.T``."""
    return a[k, i] if transposed else a[i, k]


@njit(inline="always")
def _rows_block(a, b, out, i, transposed):
    """out[i:i+4] = A[i:i+4] @ b for four rows at once.   A (M, K), b (K, N), out (M, N)."""
    K, N = b.shape
    for r in range(ROWS):
        for j in range(N):
            out[i + r, j] = np.float32(0.0)
    k_main = K - K % DEPTH
    for k in range(0, k_main, DEPTH):
        a00, a01, a02, a03 = _a(a, i, k, transposed), _a(a, i, k + 1, transposed), \
            _a(a, i, k + 2, transposed), _a(a, i, k + 3, transposed)
        a10, a11, a12, a13 = _a(a, i + 1, k, transposed), _a(a, i + 1, k + 1, transposed), \
            _a(a, i + 1, k + 2, transposed), _a(a, i + 1, k + 3, transposed)
        a20, a21, a22, a23 = _a(a, i + 2, k, transposed), _a(a, i + 2, k + 1, transposed), \
            _a(a, i + 2, k + 2, transposed), _a(a, i + 2, k + 3, transposed)
        a30, a31, a32, a33 = _a(a, i + 3, k, transposed), _a(a, i + 3, k + 1, transposed), \
            _a(a, i + 3, k + 2, transposed), _a(a, i + 3, k + 3, transposed)
        for j in range(N):
            b0, b1, b2, b3 = b[k, j], b[k + 1, j], b[k + 2, j], b[k + 3, j]
            out[i, j] += a00 * b0 + a01 * b1 + a02 * b2 + a03 * b3
            out[i + 1, j] += a10 * b0 + a11 * b1 + a12 * b2 + a13 * b3
            out[i + 2, j] += a20 * b0 + a21 * b1 + a22 * b2 + a23 * b3
            out[i + 3, j] += a30 * b0 + a31 * b1 + a32 * b2 + a33 * b3
    _add_rows(a, b, out, i, ROWS, k_main, transposed)


@njit(inline="always")
def _add_rows(a, b, out, i, rows, k0, transposed):
    """out[i:i+rows] += A[i:i+rows, k0:] @ b[k0:], row by row.   A (M, K), b (K, N), out (M, N)."""
    K, N = b.shape
    for r in range(rows):
        for k in range(k0, K):
            ark = _a(a, i + r, k, transposed)
            for j in range(N):
                out[i + r, j] += ark * b[k, j]


@njit(inline="always")
def _gemm_blocks(a, b, out, transposed):
    """out = A @ b where A is ``a`` (M, K), or ``a.T`` for ``a`` (K, M) when ``transposed``.

    b (K, N) -> out (M, N).  Blocks of ROWS rows are spread over the threads (in a
    ``parallel=True`` caller); the last M % ROWS rows are done one by one.
    """
    M = out.shape[0]
    n_blocks = M // ROWS
    for blk in prange(n_blocks):
        _rows_block(a, b, out, blk * ROWS, transposed)
    out[n_blocks * ROWS:, :] = np.float32(0.0)
    _add_rows(a, b, out, n_blocks * ROWS, M - n_blocks * ROWS, 0, transposed)


@njit(**_MATMUL)
def _gemm(a, b, out, transposed):
    """``_gemm_blocks`` on the threads.   A (M, K), b (K, N) -> out (M, N)."""
    _gemm_blocks(a, b, out, transposed)


def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    _gemm_call(a, b, out, False)


def matmul_backward_input(dy, w, dx):
    """dx = dy @ w.T.   dy (B, O), w (I, O) -> dx (B, I)."""
    _backward_input_call(dy, w, dx)


#: Side of the square tiles ``_transpose`` copies (a tile of the source and of the copy
#: both stay in L1).
TRANSPOSE_TILE = 32


@njit(inline="always")
def _transpose(w):
    """w.T as a new C-contiguous array, copied tile by tile.   w (I, O) -> (O, I)."""
    I, O = w.shape
    w_t = np.empty((O, I), np.float32)
    for i0 in range(0, I, TRANSPOSE_TILE):
        for o0 in range(0, O, TRANSPOSE_TILE):
            for i in range(i0, min(i0 + TRANSPOSE_TILE, I)):
                for o in range(o0, min(o0 + TRANSPOSE_TILE, O)):
                    w_t[o, i] = w[i, o]
    return w_t


@njit(inline="always")
def _backward_input_rows(dy, w, dx):
    """dx = dy @ w.T.   dy (B, O), w (I, O) -> dx (B, I): ``_gemm_blocks`` on a copy of
    w.T (O, I), so that its vectors run along I (dot products along O ran at a third
    of the speed), the blocks of rows spread over the threads in a ``parallel=True``
    caller."""
    _gemm_blocks(dy, _transpose(w), dx, False)


@njit(**_MATMUL)
def _backward_input(dy, w, dx):
    """``_backward_input_rows`` on the threads.   dy (B, O), w (I, O) -> dx (B, I)."""
    _backward_input_rows(dy, w, dx)


#: One-thread twins of the parallel matmuls: a product below ``PARALLEL_MIN_MACS``
#: multiply-adds (a gather in the fused epoch below as many elements) runs on the
#: calling thread: measured on 2 cores, the workqueue layer's threads made the training
#: shapes 2-3x slower (e.g. 256x784x128: 98 GFLOP/s on one thread, 54 on two) and paid
#: only from ~1e8 multiply-adds (1024^3: 43 vs 77).  Measured again with 512-bit
#: vectors on a shared 2-core Xeon: 256x784x128 one thread 110-125 GFLOP/s, two 96-98
#: (medians; 165 at best), 64x784x128 108 vs 61-75: a prange splits its rows evenly, so
#: a busy second core holds the whole product up.  Threads split whole rows: either
#: twin gives the same bits.
#: Each twin is its own cached function over the same inlined body: Numba's disk cache
#: knows a function by its name and line, so a twin compiled from its sibling's
#: ``py_func`` would share (and mix up) the sibling's cache entry.
PARALLEL_MIN_MACS = 1 << 26
_ONE_THREAD = dict(_MATMUL, parallel=False)


@njit(**_ONE_THREAD)
def _gemm_one_thread(a, b, out, transposed):
    """``_gemm_blocks`` on the calling thread.   A (M, K), b (K, N) -> out (M, N)."""
    _gemm_blocks(a, b, out, transposed)


@njit(**_ONE_THREAD)
def _backward_input_one_thread(dy, w, dx):
    """``_backward_input_rows`` on the calling thread.   dy (B, O), w (I, O) -> dx (B, I)."""
    _backward_input_rows(dy, w, dx)


#: Products at most this many columns wide (a layer of 10 classes) go through
#: ``_narrow_gemm``: ``_rows_block``'s vectors run along the columns, and a row of 10
#: fills one and a bit (256x128x10 ran at 4 GFLOP/s, 0.27x NumPy).
NARROW_MAX_N = 16


@njit(cache=True, fastmath=True, error_model="numpy")
def _narrow_gemm(a, b, out, transposed):
    """out = A @ b for a narrow b (K, N), N <= NARROW_MAX_N, with loops whose vectors run
    along K or M instead of N.   A = a (M, K), or a.T for a (K, M) when ``transposed``.

    A = a: dot products of a's rows with the columns of b (copied to rows first), as
    ``_backward_input`` computes them.
    A = a.T: out.T += b[k, j] * a[k] for each depth k, along a's rows, then out = out.T.
    """
    K, N = b.shape
    M = out.shape[0]
    if transposed:
        out_t = np.zeros((N, M), np.float32)
        for k in range(K):
            for j in range(N):
                bkj = b[k, j]
                for i in range(M):
                    out_t[j, i] += bkj * a[k, i]
        for i in range(M):
            for j in range(N):
                out[i, j] = out_t[j, i]
    else:
        _backward_input_one_thread(a, np.ascontiguousarray(b.T), out)


@njit(inline="always")
def _product(a, b, out, transposed):
    """``_gemm`` on the threads, or on this one for a small product, or ``_narrow_gemm``
    (compiled callers)."""
    if b.shape[1] <= NARROW_MAX_N:
        _narrow_gemm(a, b, out, transposed)
    elif out.shape[0] * out.shape[1] * b.shape[0] < PARALLEL_MIN_MACS:
        _gemm_one_thread(a, b, out, transposed)
    else:
        _gemm(a, b, out, transposed)


def _gemm_call(a, b, out, transposed):
    """``_product`` for Python callers: the threads, under the lock, only when they pay."""
    if b.shape[1] <= NARROW_MAX_N:
        _narrow_gemm(a, b, out, transposed)
    elif out.shape[0] * out.shape[1] * b.shape[0] < PARALLEL_MIN_MACS:
        _gemm_one_thread(a, b, out, transposed)
    else:
        with _PARALLEL:
            _gemm(a, b, out, transposed)


@njit(cache=True, fastmath=True, error_model="numpy")
def _narrow_backward_input(dy, w, dx):
    """dx = dy @ w.T for a narrow dy (B, O), O <= NARROW_MAX_N: each row of dx as O
    multiples of the rows of w.T (copied first), so its vectors run along I, not O.
    dy (B, O), w (I, O) -> dx (B, I)."""
    B, O = dy.shape
    w_t = np.ascontiguousarray(w.T)
    for b in range(B):
        dx[b, :] = np.float32(0.0)
        for o in range(O):
            g = dy[b, o]
            for i in range(w_t.shape[1]):
                dx[b, i] += g * w_t[o, i]


@njit(inline="always")
def _backward_input_product(dy, w, dx):
    """dx = dy @ w.T on the threads, on this one for a small product, or narrow
    (compiled callers)."""
    if dy.shape[1] <= NARROW_MAX_N:
        _narrow_backward_input(dy, w, dx)
    elif dy.shape[0] * dy.shape[1] * w.shape[0] < PARALLEL_MIN_MACS:
        _backward_input_one_thread(dy, w, dx)
    else:
        _backward_input(dy, w, dx)


def _backward_input_call(dy, w, dx):
    """``_backward_input_product`` for Python callers: the threads, under the lock,
    only when they pay."""
    if dy.shape[1] <= NARROW_MAX_N:
        _narrow_backward_input(dy, w, dx)
    elif dy.shape[0] * dy.shape[1] * w.shape[0] < PARALLEL_MIN_MACS:
        _backward_input_one_thread(dy, w, dx)
    else:
        with _PARALLEL:
            _backward_input(dy, w, dx)


def matmul_backward_weight(x, dy, dw):
    """dw = x.T @ dy.   x (B, I), dy (B, O) -> dw (I, O)."""
    _gemm_call(x, dy, dw, True)


@njit(**_ELEMENTWISE)
def bias_backward(dy, db):
    """db[o] = sum_b dy[b, o].   dy (B, O) -> db (O,)."""
    B, O = dy.shape
    for o in range(O):
        db[o] = np.float32(0.0)
    for b in range(B):
        for o in range(O):
            db[o] += dy[b, o]


# ------------------------------------------------------------------ linear
@njit(**_ELEMENTWISE)
def _add_bias(out, b):
    """out[r, o] += b[o].   out (B, O), b (O,)."""
    for r in range(out.shape[0]):
        for o in range(out.shape[1]):
            out[r, o] += b[o]


def linear_forward(x, w, b, out):
    """out = x @ w + b.   x (B, I), w (I, O), b (O,) -> out (B, O)."""
    _gemm_call(x, w, out, False)
    _add_bias(out, b)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w.T (skipped when dx is None), dw = x.T @ dy, db = dy.sum(0)."""
    if dx is not None:
        _backward_input_call(dy, w, dx)
    _gemm_call(x, dy, dw, True)
    bias_backward(dy, db)


# ------------------------------------------------------------- activations
@njit(**_TRANSCENDENTAL)
def _sigmoid_flat(x, out):
    """out = 1 / (1 + exp(-x)) on flat arrays (n,), via exp(-|x|) so nothing overflows."""
    for n in range(x.size):
        out[n] = numba_math.sigmoid(x[n])


@njit(**_ELEMENTWISE)
def _sigmoid_backward_flat(y, dy, dx):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output; flat arrays (n,)."""
    for n in range(y.size):
        dx[n] = dy[n] * y[n] * (np.float32(1.0) - y[n])


@njit(**_ELEMENTWISE)
def _relu_flat(x, out):
    """out = max(x, 0) on flat arrays (n,)."""
    for n in range(x.size):
        out[n] = np.float32(0.0) if x[n] <= 0 else x[n]  # NaN stays NaN


@njit(**_ELEMENTWISE)
def _relu_backward_flat(x, dy, dx):
    """dx = dy where x > 0 else 0, x the forward input; flat arrays (n,)."""
    for n in range(x.size):
        dx[n] = dy[n] if x[n] > 0 else np.float32(0.0)


@njit(**_TRANSCENDENTAL)
def _tanh_flat(x, out):
    """out = tanh(x) on flat arrays (n,)."""
    for n in range(x.size):
        out[n] = numba_math.tanh(x[n])


@njit(**_ELEMENTWISE)
def _tanh_backward_flat(y, dy, dx):
    """dx = dy * (1 - y * y), y = tanh(x) the forward output; flat arrays (n,)."""
    for n in range(y.size):
        dx[n] = dy[n] * (np.float32(1.0) - y[n] * y[n])


def _any_shape(flat, name):
    """Kernel ``name``: ``flat`` (same parameters) on flat views of arrays of any shape."""
    def kernel(*arrays):
        flat(*[a.reshape(-1) for a in arrays])
    functools.update_wrapper(kernel, flat.py_func)
    kernel.__name__ = kernel.__qualname__ = name
    return kernel


sigmoid_forward, sigmoid_backward, relu_forward, relu_backward, tanh_forward, tanh_backward = (
    _any_shape(flat, name) for flat, name in zip(
        (_sigmoid_flat, _sigmoid_backward_flat, _relu_flat, _relu_backward_flat, _tanh_flat,
         _tanh_backward_flat), ("sigmoid_forward", "sigmoid_backward", "relu_forward",
                                "relu_backward", "tanh_forward", "tanh_backward")))


# ------------------------------------------------------------------ losses
#: A mean's terms are computed a block of MEAN_BLOCK at a time into a buffer (a loop
#: that vectorizes along the block, without reassociation, which numba_math's exp must
#: not have), and each block is added up by ``_sum_float64``, compiled apart with full
#: fastmath so that its sum vectorizes (LLVM keeps each instruction's flags when it
#: inlines it): 4,194,304 mnist_loss terms 6.5 -> 2.3 ms against 4.3 ms with 16 lanes
#: added in a loop of the caller.
MEAN_BLOCK = 1024


@njit(cache=True, fastmath=True, error_model="numpy")
def _sum_float64(x, n):
    """sum_i x[i] for i < n, in float64 (any order).   x (>= n,)."""
    total = 0.0
    for i in range(n):
        total += np.float64(x[i])
    return total


@njit(inline="always")
def _mnist_term(p, t):
    """1 - sigmoid(p) when t == 1, else sigmoid(p) (float32)."""
    s = numba_math.sigmoid(p)
    return numba_math.ONE - s if t == numba_math.ONE else s


@njit(**_TRANSCENDENTAL)
def mnist_loss_forward(preds, targets):
    """mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,)."""
    n = preds.size
    terms = np.empty(MEAN_BLOCK, np.float32)
    total = 0.0
    main = n - n % MEAN_BLOCK
    for i0 in range(0, main, MEAN_BLOCK):   # whole blocks: a loop of known length
        for j in range(MEAN_BLOCK):
            terms[j] = _mnist_term(preds[i0 + j], targets[i0 + j])
        total += _sum_float64(terms, MEAN_BLOCK)
    for j in range(n - main):
        terms[j] = _mnist_term(preds[main + j], targets[main + j])
    return (total + _sum_float64(terms, n - main)) / n


@njit(**_TRANSCENDENTAL)
def mnist_loss_backward(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    B = preds.size
    inv_b = np.float32(1.0 / B)
    for b in range(B):
        s = numba_math.sigmoid(preds[b])
        slope = s * (numba_math.ONE - s) * inv_b
        dpreds[b] = -slope if targets[b] == numba_math.ONE else slope


@njit(inline="always")
def _row_max(z):
    """max_c z[c] of one row z (C,)."""
    m = z[0]
    for c in range(1, z.size):
        if z[c] > m:
            m = z[c]
    return m


#: Rows of logits whose softmax pieces are computed together (``_softmax_block``).
SOFTMAX_ROWS = 64


@njit(inline="always")
def _softmax_block(z, b0, rows, e, m, s):
    """Softmax pieces of rows b0 .. b0 + rows of z (B, C), rows <= SOFTMAX_ROWS:
    m[r] = max_c z[b0 + r, c], e[r * C + c] = exp(z[b0 + r, c] - m[r]), s[r] = sum_c e.

    e (SOFTMAX_ROWS * C,) is contiguous, so the exps run as one flat loop that
    vectorizes however few the classes are; m, s (SOFTMAX_ROWS,).
    """
    C = z.shape[1]
    for r in range(rows):
        mr = _row_max(z[b0 + r])
        m[r] = mr
        for c in range(C):
            e[r * C + c] = z[b0 + r, c] - mr
    for i in range(rows * C):
        e[i] = numba_math.exp_nonpos(e[i])
    for r in range(rows):
        sr = np.float32(0.0)
        for c in range(C):
            sr += e[r * C + c]
        s[r] = sr


@njit(**_PLAIN)
def _check_labels(labels, B, C):
    """Labels index memory: one per row, each in [0, C) (a direct call gets no contract)."""
    if labels.size != B:
        raise ValueError("labels: expected one label per row of logits")
    for b in range(B):
        if labels[b] < 0 or labels[b] >= C:
            raise ValueError("labels: labels must lie in [0, C), C the columns of logits")


@njit(**_TRANSCENDENTAL)
def cross_entropy_forward(logits, labels):
    """mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int64."""
    B, C = logits.shape
    _check_labels(labels, B, C)
    e = np.empty(SOFTMAX_ROWS * C, np.float32)
    m, s = np.empty(SOFTMAX_ROWS, np.float32), np.empty(SOFTMAX_ROWS, np.float32)
    terms = np.empty(SOFTMAX_ROWS, np.float64)
    total = 0.0
    for b0 in range(0, B, SOFTMAX_ROWS):
        rows = min(SOFTMAX_ROWS, B - b0)
        _softmax_block(logits, b0, rows, e, m, s)
        for r in range(rows):  # z - m first: exact for equal huge logits
            terms[r] = math.log(np.float64(s[r])) - (
                np.float64(logits[b0 + r, labels[b0 + r]]) - np.float64(m[r]))
        total += _sum_float64(terms, rows)
    return total / B


@njit(**_TRANSCENDENTAL)
def cross_entropy_backward(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B.   (B, C) -> (B, C)."""
    B, C = logits.shape
    _check_labels(labels, B, C)
    inv_b = np.float32(1.0 / B)
    e = np.empty(SOFTMAX_ROWS * C, np.float32)
    m, s = np.empty(SOFTMAX_ROWS, np.float32), np.empty(SOFTMAX_ROWS, np.float32)
    for b0 in range(0, B, SOFTMAX_ROWS):
        rows = min(SOFTMAX_ROWS, B - b0)
        _softmax_block(logits, b0, rows, e, m, s)
        for r in range(rows):
            scale = inv_b / s[r]
            for c in range(C):
                dlogits[b0 + r, c] = e[r * C + c] * scale
            dlogits[b0 + r, labels[b0 + r]] -= inv_b


@njit(**_PLAIN)
def mse_forward(preds, targets):
    """mean_n (p_n - t_n)^2.   preds, targets (n,)."""
    total = 0.0
    for n in range(preds.size):
        diff = float(preds[n]) - float(targets[n])
        total += diff * diff
    return total / preds.size


@njit(**_PLAIN)
def mse_backward(preds, targets, dpreds):
    """dpreds_n = 2 (p_n - t_n) / n.   (n,) -> (n,)."""
    scale = np.float32(2.0 / preds.size)
    for n in range(preds.size):
        dpreds[n] = (preds[n] - targets[n]) * scale


# --------------------------------------------------------------- optimizer
@njit(**_ELEMENTWISE)
def _sgd_flat(p, g, lr, weight_decay):
    """p -= lr * (g + wd * p) on flat arrays (n,)."""
    for n in range(p.size):
        p[n] -= lr * (g[n] + weight_decay * p[n])


@njit(**_ELEMENTWISE)
def _sgd_momentum_flat(p, g, v, lr, momentum, weight_decay):
    """v = momentum * v + (g + wd * p);  p -= lr * v, on flat arrays (n,)."""
    for n in range(p.size):
        v[n] = momentum * v[n] + (g[n] + weight_decay * p[n])
        p[n] -= lr * v[n]


def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """In place: g = grad + wd * param; v = momentum * v + g (if velocity); param -= lr * g."""
    p, g = param.reshape(-1), grad.reshape(-1)
    lr, momentum, weight_decay = np.float32(lr), np.float32(momentum), np.float32(weight_decay)
    if velocity is None:
        _sgd_flat(p, g, lr, weight_decay)
    else:
        _sgd_momentum_flat(p, g, velocity.reshape(-1), lr, momentum, weight_decay)


# ----------------------------------------------------------------- metrics
@njit(**_PLAIN)
def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)): sigmoid(p) > 0.5 exactly when p > 0.   (B,)."""
    hits = 0
    for b in range(preds.size):
        hits += (preds[b] > 0) == (targets[b] == 1)
    return hits / preds.size


@njit(**_PLAIN)
def multiclass_accuracy(logits, labels):
    """mean(argmax(z_b) == label_b), first maximum on ties.   logits (B, C), labels (B,)."""
    B, C = logits.shape
    hits = 0
    for b in range(B):
        best = 0
        for c in range(1, C):
            if logits[b, c] > logits[b, best]:
                best = c
        hits += best == labels[b]
    return hits / B


def threading_layer() -> str:
    """The Numba threading layer in use (after a parallel kernel has run)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return "not yet initialised"


# ------------------------------------------------------- fused training epoch

@njit(inline="always")
def _gather_rows_body(x, order, start, xb):
    """xb[r] = x[order[start + r]] for every row r of xb, the rows spread over the threads
    (in a ``parallel=True`` caller).   x (N, I), xb (B, I)."""
    for r in prange(xb.shape[0]):
        xb[r, :] = x[order[start + r], :]


@njit(cache=True, parallel=True, error_model="numpy")
def _gather_rows(x, order, start, xb):
    """``_gather_rows_body`` on the threads.   x (N, I), xb (B, I)."""
    _gather_rows_body(x, order, start, xb)


@njit(**_PLAIN)
def _gather_rows_one_thread(x, order, start, xb):
    """``_gather_rows_body`` on the calling thread.   x (N, I), xb (B, I)."""
    _gather_rows_body(x, order, start, xb)


@njit(**_PLAIN)
def _program_loss(loss_kind, z, t, labels, dz):
    """Mean loss of the output z (B, O) and dz = dL/dz (B, O); t (B, T) or labels (B,).
    The one per-kind entry of the losses: a new kind is one case here."""
    if loss_kind == prog.MNIST_LOSS:
        preds, dpreds, t0 = z[:, 0], dz[:, 0], t[:, 0]
        mnist_loss_backward(preds, t0, dpreds)
        return mnist_loss_forward(preds, t0)
    if loss_kind == prog.CROSS_ENTROPY:
        cross_entropy_backward(z, labels, dz)
        return cross_entropy_forward(z, labels)
    mse_backward(z.reshape(-1), t.reshape(-1), dz.reshape(-1))
    return mse_forward(z.reshape(-1), t.reshape(-1))


@njit(**_PLAIN)
def _layer_forward(kind, x, out):
    """out = the parameter-free layer ``kind`` of x, flat arrays (n,).  The one per-kind
    entry of the activations' forward: a new kind is one case here."""
    if kind == prog.RELU:
        _relu_flat(x, out)
    elif kind == prog.SIGMOID:
        _sigmoid_flat(x, out)
    elif kind == prog.TANH:
        _tanh_flat(x, out)


@njit(**_PLAIN)
def _layer_backward(kind, x, y, dy, dx):
    """dx from dy for the parameter-free layer ``kind``, reading its input x or output y
    as its record says; flat arrays (n,).  One case per kind."""
    if kind == prog.RELU:
        _relu_backward_flat(x, dy, dx)
    elif kind == prog.SIGMOID:
        _sigmoid_backward_flat(y, dy, dx)
    elif kind == prog.TANH:
        _tanh_backward_flat(y, dy, dx)


@njit(**_PLAIN)
def _train_epoch(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
                 params, grads, velocities, use_momentum, losses):
    """One pass of SGD over a layer program in one call (see ``program.py``).

    layers (L, 4); x (N, I); targets (N, T) float32 (mnist_loss, mse) or labels (N,)
    int64 (cross-entropy); order (R,) the rows of x the steps take; params, grads,
    velocities (P,) flat blocks; lrs, losses (steps,).  The activations a[l] (B, width_l) and their gradients
    d[l] live in two scratch arrays laid out once.  Returns the steps done.
    """
    N = order.shape[0]  # the rows the steps take
    L = layers.shape[0]
    offsets = np.zeros(L + 2, np.int64)  # a[l] starts at offsets[l] * bs
    offsets[1] = layers[0, 1]
    for l in range(L):
        offsets[l + 2] = offsets[l + 1] + layers[l, 2]
    acts = np.empty(offsets[L + 1] * bs, np.float32)
    deltas = np.empty(offsets[L + 1] * bs, np.float32)
    T = targets.shape[1]
    tb_all = np.empty((bs, T), np.float32)
    yb_all = np.empty(bs if labels.size else 0, np.int64)
    first_linear = 0
    while layers[first_linear, 0] != prog.LINEAR:
        first_linear += 1
    steps = (N + bs - 1) // bs
    for s in range(steps):
        start = s * bs
        B = min(bs, N - start)
        a0 = acts[:B * layers[0, 1]].reshape((B, layers[0, 1]))
        if B * a0.shape[1] < PARALLEL_MIN_MACS:
            _gather_rows_one_thread(x, order, start, a0)
        else:
            _gather_rows(x, order, start, a0)
        tb, yb = tb_all[:B], yb_all[:B if labels.size else 0]
        if loss_kind == prog.CROSS_ENTROPY:
            for r in range(B):
                yb[r] = labels[order[start + r]]
        else:
            for r in range(B):
                tb[r, :] = targets[order[start + r], :]
        for l in range(L):  # forward
            kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            a_in = acts[offsets[l] * bs:offsets[l] * bs + B * n_in].reshape((B, n_in))
            a_out = acts[offsets[l + 1] * bs:offsets[l + 1] * bs + B * n_out].reshape((B, n_out))
            if kind == prog.LINEAR:
                w = params[at:at + n_in * n_out].reshape((n_in, n_out))
                _product(a_in, w, a_out, False)
                _add_bias(a_out, params[at + n_in * n_out:at + n_in * n_out + n_out])
            else:
                _layer_forward(kind, a_in.reshape(-1), a_out.reshape(-1))
        O = layers[L - 1, 2]
        z = acts[offsets[L] * bs:offsets[L] * bs + B * O].reshape((B, O))
        dz = deltas[offsets[L] * bs:offsets[L] * bs + B * O].reshape((B, O))
        loss = _program_loss(loss_kind, z, tb, yb, dz)
        losses[s] = loss
        if not math.isfinite(loss):
            return s
        for l in range(L - 1, first_linear - 1, -1):  # backward
            kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            a_in = acts[offsets[l] * bs:offsets[l] * bs + B * n_in].reshape((B, n_in))
            a_out = acts[offsets[l + 1] * bs:offsets[l + 1] * bs + B * n_out].reshape((B, n_out))
            d_out = deltas[offsets[l + 1] * bs:offsets[l + 1] * bs + B * n_out].reshape((B, n_out))
            d_in = deltas[offsets[l] * bs:offsets[l] * bs + B * n_in].reshape((B, n_in))
            if kind == prog.LINEAR:
                w_end = at + n_in * n_out
                _product(a_in, d_out, grads[at:w_end].reshape((n_in, n_out)), True)
                bias_backward(d_out, grads[w_end:w_end + n_out])
                if l > first_linear:
                    _backward_input_product(d_out, params[at:w_end].reshape((n_in, n_out)),
                                            d_in)
            else:
                _layer_backward(kind, a_in.reshape(-1), a_out.reshape(-1), d_out.reshape(-1),
                                d_in.reshape(-1))
        lr = np.float32(lrs[s])
        if use_momentum:
            _sgd_momentum_flat(params, grads, velocities, lr, momentum, weight_decay)
        else:
            _sgd_flat(params, grads, lr, weight_decay)
    return steps


def train_epoch(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
                params, grads, velocities, losses):
    """One epoch of SGD over a layer program (``program.py``); returns the steps done.

    Arguments as ``contract.Backend.train_epoch`` passes them, validated there;
    velocities None when momentum is 0.  Numba has no bounds checks of its own, so
    what indexes memory is checked here too: the table (``program.check_layer_table``),
    the sizes, and the order and label ranges.
    """
    n_in, n_out = prog.check_layer_table(layers, params.size)
    prog.check_compiled_kinds(layers, loss_kind, "numba")
    n, r = x.shape[0], order.shape[0]
    steps = -(-r // bs) if bs >= 1 else -1
    rows_ok = x.ndim == 2 and x.shape[1] == n_in and order.ndim == 1 and bs >= 1
    sizes_ok = grads.shape == params.shape and lrs.shape == losses.shape == (steps,) and (
        velocities is None or velocities.shape == params.shape)
    wants = prog.LOSSES[loss_kind].targets
    if wants == "labels":
        targets_ok = labels.shape == (n,) and (n == 0 or 0 <= labels.min() <= labels.max() < n_out)
    else:
        targets_ok = targets.shape == (n, n_out) and (wants != "binary" or n_out == 1)
    if not (rows_ok and sizes_ok and targets_ok) or (r and not 0 <= order.min() <= order.max() < n):
        raise ValueError("train_epoch: arguments do not fit the program; call it through "
                         "fastsgd.backends.get('numba').train_epoch, which says what is wrong")
    prog.check_epoch_apart(layers, x, targets, labels, order, lrs, params, grads, velocities,
                           losses)
    use_momentum = velocities is not None
    if not use_momentum:
        velocities = np.empty(0, np.float32)
    rows = min(bs, max(r, 1))   # the scratch holds one batch: never more rows than there are
    with _PARALLEL:
        return _train_epoch(layers, loss_kind, x, targets, labels, order, rows, lrs,
                            np.float32(momentum), np.float32(weight_decay), params, grads,
                            velocities, use_momentum, losses)
