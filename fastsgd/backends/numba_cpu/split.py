"""The fused epoch's first LINEAR, split by its input features between the threads.

At a step of the fused epoch the first layer's two products read its weights w (I, O),
and the SGD step rewrites them.  Split by rows of the batch, each thread reads all of
w, half of which the other core has just stepped: the cache lines of w moved between
the cores at every step, and two threads paid nothing at batch 64 (784-128-10 on
Fashion-MNIST, 165 ms an epoch against 153 on one thread).  Here every phase of that
layer is split the same way, by a fixed HALF of the input features i:

- the forward gathers the batch's columns [i0, i1) of x and multiplies them by the
  rows [i0, i1) of w: out = x[:, :HALF] @ w[:HALF] and partial = x[:, HALF:] @ w[HALF:],
  then out += partial (and the bias);
- the weight gradient's rows [i0, i1) are x[:, i0:i1].T @ dy, and the SGD step of
  w[i0:i1] is taken right after them, while they are in cache.

Tasks are (half, chunk of rows) pairs in half-major order, which Numba's schedule gives
to the threads in contiguous runs: on two threads the first half is the calling
thread's in both products, so each core keeps its half of x's columns, of w and of the
gradient, and only the (B, O) partial and dy move between the cores.  Each task is the
same sums in the same order whichever thread runs it, so the results do not depend on
the thread count (the forward's bits differ from ``matmul``'s, whose one chain of
depths runs over all of I: the sum of the two halves is rounded once more).
"""
import numpy as np
from numba import njit, prange

from .config import _PLAIN
from .gemm import DEPTH_BLOCK, TILE_ROWS, VECTOR_COLS, _a, _row_of_tiles
from .pointwise import _step_slice

#: Rows of out (the forward) or of the weight gradient (the backward) a task takes.
TASK_ROWS = 32

#: Fused multiply-adds, and no other license: the tiles' vectors are explicit
#: (``simd``), and with reassociation LLVM split the edges' sums over k differently
#: in the threaded and the one-thread function, which then differed in the last bits.
_SPLIT = dict(_PLAIN, fastmath={"contract"})


@njit(inline="always")
def _edge_depths(a, b, out, i0, i1, j0, j1, k0, k1, transposed):
    """out[i0:i1, j0:j1] = A[i0:i1, k0:k1] @ b[k0:k1, j0:j1], element by element (the
    rows and columns the tiles leave).   A (M, K) (``a``, or ``a.T``), b (K, N)."""
    for i in range(i0, i1):
        for j in range(j0, j1):
            out[i, j] = np.float32(0.0)
        for k in range(k0, k1):
            aik = _a(a, i, k, transposed)
            for j in range(j0, j1):
                out[i, j] += aik * b[k, j]


@njit(inline="always")
def _part(a, b, out, i0, i1, k0, k1, transposed):
    """out[i0:i1] = A[i0:i1, k0:k1] @ b[k0:k1], by register tiles, DEPTH_BLOCK depths at a
    time (one chain of depths from k0).   A (M, K) (``a``, or ``a.T`` for ``a`` (K, M)
    when ``transposed``), b (K, N), out (M, N), all C-contiguous."""
    M, N = out.shape
    K = b.shape[0]
    tiles_end = N - N % VECTOR_COLS
    blocks_end = i0 + (i1 - i0) // TILE_ROWS * TILE_ROWS
    if k1 <= k0:  # no depths (a half of one feature): zeros
        out[i0:i1, :] = np.float32(0.0)
    for d0 in range(k0, k1, DEPTH_BLOCK):
        depth = min(DEPTH_BLOCK, k1 - d0)
        for r0 in range(i0, blocks_end, TILE_ROWS):
            if transposed:
                _row_of_tiles(a, d0 * M + r0, M, 1, b, out, r0, d0, depth, d0 == k0)
            else:
                _row_of_tiles(a, r0 * K + d0, 1, K, b, out, r0, d0, depth, d0 == k0)
    if tiles_end < N:
        _edge_depths(a, b, out, i0, blocks_end, tiles_end, N, k0, k1, transposed)
    _edge_depths(a, b, out, blocks_end, i1, 0, N, k0, k1, transposed)


@njit(inline="always")
def half_of(n_in):
    """Where the second half of the input features starts: about half of ``n_in``, on a
    whole tile of rows of w (the weight gradient's rows)."""
    return n_in // 2 // TILE_ROWS * TILE_ROWS


@njit(inline="always")
def _forward_body(x, order, start, xb, w, bias, out, partial, half):
    """out = x[order[start:start + B]] @ w + bias, with xb (B, I) the gathered batch.

    x (N, I), w (I, O), bias (O,), out and partial (B, O).  Task (h, c): rows
    [c * TASK_ROWS, ...) of out (h = 0) or of partial (h = 1) over the features of half
    h, gathering them first; then out += partial, + bias.
    """
    B, I = xb.shape
    chunks = (B + TASK_ROWS - 1) // TASK_ROWS
    for task in prange(2 * chunks):
        h, c = task // chunks, task % chunks
        r0, r1 = c * TASK_ROWS, min(B, (c + 1) * TASK_ROWS)
        k0, k1 = (0, half) if h == 0 else (half, I)
        for r in range(r0, r1):
            xb[r, k0:k1] = x[order[start + r], k0:k1]
        _part(xb, w, out if h == 0 else partial, r0, r1, k0, k1, False)
    for c in prange(chunks):
        for r in range(c * TASK_ROWS, min(B, (c + 1) * TASK_ROWS)):
            for o in range(out.shape[1]):
                out[r, o] = (out[r, o] + partial[r, o]) + bias[o]


@njit(**_SPLIT, parallel=True)
def first_forward(x, order, start, xb, w, bias, out, partial, half):
    """``_forward_body`` on the threads."""
    _forward_body(x, order, start, xb, w, bias, out, partial, half)


@njit(**_SPLIT)
def first_forward_one_thread(x, order, start, xb, w, bias, out, partial, half):
    """``_forward_body`` on the calling thread (the same bits)."""
    _forward_body(x, order, start, xb, w, bias, out, partial, half)


@njit(inline="always")
def first_forward_product(x, order, start, xb, w, bias, out, partial, half, min_macs):
    """``first_forward``, or on this thread below ``min_macs`` multiply-adds."""
    if xb.shape[0] * w.shape[0] * w.shape[1] < min_macs:
        first_forward_one_thread(x, order, start, xb, w, bias, out, partial, half)
    else:
        first_forward(x, order, start, xb, w, bias, out, partial, half)


@njit(inline="always")
def _gradient_body(xb, dy, dw, w, v, half, lr, momentum, weight_decay, step, use_momentum):
    """dw = xb.T @ dy, and when ``step`` the SGD step of w (and its velocity v) too, rows
    [i0, i1) by the task that computed them.   xb (B, I), dy (B, O), dw, w, v (I, O) (v
    unused without momentum).  Task (h, c): rows half h starts at + c * TASK_ROWS."""
    B, I = xb.shape
    chunks = (max(half, I - half) + TASK_ROWS - 1) // TASK_ROWS
    for task in prange(2 * chunks):
        h, c = task // chunks, task % chunks
        lo, hi = (0, half) if h == 0 else (half, I)
        i0, i1 = lo + c * TASK_ROWS, min(hi, lo + (c + 1) * TASK_ROWS)
        if i0 < i1:
            _part(xb, dy, dw, i0, i1, 0, B, True)
            if step:  # rows [i0, i1) of w, as the whole block's SGD step takes them
                O = dw.shape[1]
                _step_slice(w.reshape(-1), dw.reshape(-1), v.reshape(-1), i0 * O, i1 * O, lr,
                            momentum, weight_decay, use_momentum)


@njit(**_SPLIT, parallel=True)
def first_gradient(xb, dy, dw, w, v, half, lr, momentum, weight_decay, step, use_momentum):
    """``_gradient_body`` on the threads."""
    _gradient_body(xb, dy, dw, w, v, half, lr, momentum, weight_decay, step, use_momentum)


@njit(**_SPLIT)
def first_gradient_one_thread(xb, dy, dw, w, v, half, lr, momentum, weight_decay, step,
                              use_momentum):
    """``_gradient_body`` on the calling thread (the same bits)."""
    _gradient_body(xb, dy, dw, w, v, half, lr, momentum, weight_decay, step, use_momentum)


@njit(inline="always")
def first_gradient_product(xb, dy, dw, w, v, half, lr, momentum, weight_decay, step,
                           use_momentum, min_macs):
    """``first_gradient``, or on this thread below ``min_macs`` multiply-adds."""
    args = (xb, dy, dw, w, v, half, lr, momentum, weight_decay, step, use_momentum)
    if xb.shape[0] * dw.shape[0] * dw.shape[1] < min_macs:
        first_gradient_one_thread(*args)
    else:
        first_gradient(*args)
