"""The matmul family and the linear layer as ``@njit`` loops (no BLAS).   Letters as in
``contract.py``."""
import numpy as np
from numba import njit, prange

from . import config
from .config import _ELEMENTWISE, _MATMUL

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
        with config._PARALLEL:
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
        with config._PARALLEL:
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


