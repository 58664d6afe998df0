"""The matmul family and the linear layer as ``@njit`` loops (no BLAS).   Letters as in
``contract.py``."""
import numpy as np
from numba import njit, prange

from . import config
from .config import _ELEMENTWISE, _MATMUL
from .simd import WIDTH, vbroadcast, vfma, vload, vstore, vzero

#: Register tiles of the matmuls: TILE_ROWS rows by two vectors of ``simd.WIDTH``
#: columns of ``out`` stay in 16 vector registers for the whole loop over k, each step
#: of which loads two vectors of a row of b and broadcasts TILE_ROWS values of A.  With
#: 512-bit vectors (``numba_target``) the loop compiles to 2 ``vmovups`` of b, 8
#: ``vbroadcastss`` of A and 16 ``vfmadd231ps`` into zmm0-15, no spills (inspect_asm of
#: ``_gemm_one_thread``, Emerald Rapids): 256x784x128 on one core at ~240 GFLOP/s, 93%
#: of the core's FMA peak (the loop of 4 rows x 4 steps of k it replaces, which loaded
#: and stored ``out`` at every step, ran at 110-130).  With AVX2 the same on ymm.
#: Tiles of 12x2, 14x2, 6x4 and 8x3 vectors ran at the same speed; unrolling k by 2 too.
#: b is read in place, row by row (a panel of K x 32 floats streams from L2); the
#: rows of A of one tile stay in L1 across the panels.
TILE_ROWS = 8
VECTOR_COLS = WIDTH


@njit(inline="always")
def _tile_two_vectors(a, a_k, a_row, b, out, i0, j0, K):
    """out[i0:i0+8, j0:j0+2W] = A[i0:i0+8] @ b[:, j0:j0+2W], W = ``simd.WIDTH``.

    A (M, K) with element (i, k) at flat offset i * a_row + k * a_k of ``a``; b (K, N),
    out (M, N) C-contiguous.
    """
    N = b.shape[1]
    W = VECTOR_COLS
    c00, c01, c10, c11 = vzero(), vzero(), vzero(), vzero()
    c20, c21, c30, c31 = vzero(), vzero(), vzero(), vzero()
    c40, c41, c50, c51 = vzero(), vzero(), vzero(), vzero()
    c60, c61, c70, c71 = vzero(), vzero(), vzero(), vzero()
    at = i0 * a_row
    bt = j0
    for _ in range(K):
        b0, b1 = vload(b, bt), vload(b, bt + W)
        x = vbroadcast(a, at)
        c00, c01 = vfma(x, b0, c00), vfma(x, b1, c01)
        x = vbroadcast(a, at + a_row)
        c10, c11 = vfma(x, b0, c10), vfma(x, b1, c11)
        x = vbroadcast(a, at + 2 * a_row)
        c20, c21 = vfma(x, b0, c20), vfma(x, b1, c21)
        x = vbroadcast(a, at + 3 * a_row)
        c30, c31 = vfma(x, b0, c30), vfma(x, b1, c31)
        x = vbroadcast(a, at + 4 * a_row)
        c40, c41 = vfma(x, b0, c40), vfma(x, b1, c41)
        x = vbroadcast(a, at + 5 * a_row)
        c50, c51 = vfma(x, b0, c50), vfma(x, b1, c51)
        x = vbroadcast(a, at + 6 * a_row)
        c60, c61 = vfma(x, b0, c60), vfma(x, b1, c61)
        x = vbroadcast(a, at + 7 * a_row)
        c70, c71 = vfma(x, b0, c70), vfma(x, b1, c71)
        at += a_k
        bt += N
    o = i0 * N + j0
    vstore(out, o, c00)
    vstore(out, o + W, c01)
    vstore(out, o + N, c10)
    vstore(out, o + N + W, c11)
    vstore(out, o + 2 * N, c20)
    vstore(out, o + 2 * N + W, c21)
    vstore(out, o + 3 * N, c30)
    vstore(out, o + 3 * N + W, c31)
    vstore(out, o + 4 * N, c40)
    vstore(out, o + 4 * N + W, c41)
    vstore(out, o + 5 * N, c50)
    vstore(out, o + 5 * N + W, c51)
    vstore(out, o + 6 * N, c60)
    vstore(out, o + 6 * N + W, c61)
    vstore(out, o + 7 * N, c70)
    vstore(out, o + 7 * N + W, c71)


@njit(inline="always")
def _tile_one_vector(a, a_k, a_row, b, out, i0, j0, K):
    """out[i0:i0+8, j0:j0+W] = A[i0:i0+8] @ b[:, j0:j0+W]; arguments as
    ``_tile_two_vectors`` (the last W columns of a width that is an odd number of W)."""
    N = b.shape[1]
    c0, c1, c2, c3 = vzero(), vzero(), vzero(), vzero()
    c4, c5, c6, c7 = vzero(), vzero(), vzero(), vzero()
    at = i0 * a_row
    bt = j0
    for _ in range(K):
        b0 = vload(b, bt)
        c0 = vfma(vbroadcast(a, at), b0, c0)
        c1 = vfma(vbroadcast(a, at + a_row), b0, c1)
        c2 = vfma(vbroadcast(a, at + 2 * a_row), b0, c2)
        c3 = vfma(vbroadcast(a, at + 3 * a_row), b0, c3)
        c4 = vfma(vbroadcast(a, at + 4 * a_row), b0, c4)
        c5 = vfma(vbroadcast(a, at + 5 * a_row), b0, c5)
        c6 = vfma(vbroadcast(a, at + 6 * a_row), b0, c6)
        c7 = vfma(vbroadcast(a, at + 7 * a_row), b0, c7)
        at += a_k
        bt += N
    o = i0 * N + j0
    vstore(out, o, c0)
    vstore(out, o + N, c1)
    vstore(out, o + 2 * N, c2)
    vstore(out, o + 3 * N, c3)
    vstore(out, o + 4 * N, c4)
    vstore(out, o + 5 * N, c5)
    vstore(out, o + 6 * N, c6)
    vstore(out, o + 7 * N, c7)


@njit(inline="always")
def _a(a, i, k, transposed):
    """Element (i, k) of A, where A is ``a`` or, when ``transposed``, ``a.T``."""
    return a[k, i] if transposed else a[i, k]


@njit(inline="always")
def _edge(a, b, out, i0, i1, j0, j1, transposed):
    """out[i0:i1, j0:j1] = A[i0:i1] @ b[:, j0:j1], row by row: the rows and columns the
    tiles leave.   A (M, K) (``a``, or ``a.T`` when ``transposed``), b (K, N), out (M, N)."""
    K = b.shape[0]
    for i in range(i0, i1):
        for j in range(j0, j1):
            out[i, j] = np.float32(0.0)
        for k in range(K):
            aik = _a(a, i, k, transposed)
            for j in range(j0, j1):
                out[i, j] += aik * b[k, j]


@njit(inline="always")
def _gemm_blocks(a, b, out, transposed):
    """out = A @ b where A is ``a`` (M, K), or ``a.T`` for ``a`` (K, M) when ``transposed``.

    b (K, N) -> out (M, N), all C-contiguous.  Blocks of TILE_ROWS rows are spread over
    the threads (in a ``parallel=True`` caller), each swept by the register tiles
    across the columns; the last M % TILE_ROWS rows and N % W columns are done one by one.
    """
    M, N = out.shape
    K = b.shape[0]
    a_k, a_row = (M, 1) if transposed else (1, K)
    W = VECTOR_COLS
    wide_end = N - N % (2 * W)
    tiles_end = N - N % W
    n_blocks = M // TILE_ROWS
    for blk in prange(n_blocks):
        i0 = blk * TILE_ROWS
        for j0 in range(0, wide_end, 2 * W):
            _tile_two_vectors(a, a_k, a_row, b, out, i0, j0, K)
        if tiles_end > wide_end:
            _tile_one_vector(a, a_k, a_row, b, out, i0, wide_end, K)
        _edge(a, b, out, i0, i0 + TILE_ROWS, tiles_end, N, transposed)
    _edge(a, b, out, n_blocks * TILE_ROWS, M, 0, N, transposed)


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
#: ``_narrow_gemm``: the tiles' vectors run along the columns, and a row of 10
#: fills less than one (256x128x10 ran at 4 GFLOP/s, 0.27x NumPy).
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


