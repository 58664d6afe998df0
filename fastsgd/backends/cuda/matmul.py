"""Matmuls, the linear layer and the bias gradient: shared-memory tiled kernels and their launchers."""
from numba import cuda, float32

from .device import tree_sum
from .launch import COLS, F1, F2, ROWS, TILE, TILE_PAD, ceil_div, empty_vector, kernel


@cuda.jit(device=True, inline=True)
def _load_tile(tile, m, transposed, r0, c0):
    """tile[i, j] = A[r0 + i, c0 + j], zero outside A, for A = m.T when ``transposed`` else m.

    Thread (tx, ty) of a (TILE, TILE) block loads one element, and consecutive tx
    read consecutive columns of m (coalesced): a transposed tile is stored
    transposed, so tiles have TILE_PAD columns to keep shared-memory banks apart.
    """
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    i, j = (tx, ty) if transposed else (ty, tx)
    r, c = (c0 + j, r0 + i) if transposed else (r0 + i, c0 + j)
    tile[i, j] = m[r, c] if r < m.shape[0] and c < m.shape[1] else float32(0.0)


@cuda.jit(device=True, inline=True)
def _tiled_matmul(a, a_transposed, b, b_transposed, bias, out):
    """out = A @ B (+ bias unless None or empty), A = a.T if ``a_transposed`` else a, B likewise.

    A (M, K), B (K, N), bias (N,) -> out (M, N).  One thread per output; block
    (TILE, TILE) covers out[by*TILE:, bx*TILE:], reading A and B a TILE x TILE
    tile at a time into shared memory (``_load_tile``).  Every thread of the
    block must call it.
    """
    sa = cuda.shared.array((TILE, TILE_PAD), float32)   # sa[i, k] = A[row i, k]
    sb = cuda.shared.array((TILE, TILE_PAD), float32)   # sb[k, j] = B[k, col j]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    r0, c0 = cuda.blockIdx.y * TILE, cuda.blockIdx.x * TILE
    K = a.shape[0] if a_transposed else a.shape[1]
    acc = float32(0.0)
    for k0 in range(0, K, TILE):
        _load_tile(sa, a, a_transposed, r0, k0)
        _load_tile(sb, b, b_transposed, k0, c0)
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    row, col = r0 + ty, c0 + tx
    if row < out.shape[0] and col < out.shape[1]:
        if bias is not None and bias.shape[0] > 0:
            acc += bias[col]
        out[row, col] = acc


@kernel(f"void({F2}, {F2}, {F1}, {F2})")
def _matmul_kernel(a, b, bias, out):
    """out = a @ b (+ bias when bias is not empty).   a (M, K), b (K, N), bias (N,) or (0,) -> out (M, N)."""
    _tiled_matmul(a, False, b, False, bias, out)


@kernel(f"void({F2}, {F2}, {F2})")
def _matmul_backward_input_kernel(dy, w, dx):
    """dx = dy @ w.T, the w tile read along w's rows.   dy (B, O), w (I, O) -> dx (B, I)."""
    _tiled_matmul(dy, False, w, True, None, dx)


@kernel(f"void({F2}, {F2}, {F2})")
def _matmul_backward_weight_kernel(x, dy, dw):
    """dw = x.T @ dy, the x tile read along x's rows.   x (B, I), dy (B, O) -> dw (I, O)."""
    _tiled_matmul(x, True, dy, False, None, dw)


@kernel(f"void({F2}, {F1})")
def _bias_backward_kernel(dy, db):
    """db[o] = sum_b dy[b, o].   dy (B, O) -> db (O,).

    Block (COLS, ROWS) owns COLS columns: thread (tx, ty) sums rows ty, ty + ROWS, ...
    of column bx*COLS + tx (a warp reads consecutive columns), then ``tree_sum``
    adds the ROWS partial sums of each column in shared memory.
    """
    partial = cuda.shared.array((ROWS, COLS), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    o = cuda.blockIdx.x * COLS + tx
    B, O = dy.shape
    acc = float32(0.0)
    if o < O:
        for b in range(ty, B, ROWS):
            acc += dy[b, o]
    total = tree_sum(partial, ty, tx, acc)
    if ty == 0 and o < O:
        db[o] = total


def _launch_matmul(kernel, m, n, *args):
    """Run a tiled matmul kernel over an (m, n) output: the exact grid of TILE x TILE blocks."""
    kernel[(ceil_div(n, TILE), ceil_div(m, TILE)), (TILE, TILE)](*args)


def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    _launch_matmul(_matmul_kernel, a.shape[0], b.shape[1], a, b, empty_vector(), out)


def matmul_backward_input(dy, w, dx):
    """dx = dy @ w.T.   dy (B, O), w (I, O) -> dx (B, I)."""
    _launch_matmul(_matmul_backward_input_kernel, dy.shape[0], w.shape[0], dy, w, dx)


def matmul_backward_weight(x, dy, dw):
    """dw = x.T @ dy.   x (B, I), dy (B, O) -> dw (I, O)."""
    _launch_matmul(_matmul_backward_weight_kernel, x.shape[1], dy.shape[1], x, dy, dw)


def bias_backward(dy, db):
    """db = dy.sum(0).   dy (B, O) -> db (O,)."""
    _bias_backward_kernel[ceil_div(dy.shape[1], COLS), (COLS, ROWS)](dy, db)


# ------------------------------------------------------------------ linear
def linear_forward(x, w, b, out):
    """out = x @ w + b, the bias added by the matmul kernel.   x (B, I), w (I, O), b (O,) -> out (B, O)."""
    _launch_matmul(_matmul_kernel, x.shape[0], w.shape[1], x, w, b, out)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w.T (skipped when dx is None), dw = x.T @ dy, db = dy.sum(0)."""
    if dx is not None:
        matmul_backward_input(dy, w, dx)
    matmul_backward_weight(x, dy, dw)
    bias_backward(dy, db)

