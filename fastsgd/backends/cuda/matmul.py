"""Matmuls, the linear layer and the bias gradient: shared-memory tiled kernels and their launchers."""
from numba import cuda, float32

from .launch import COLS, F1, F2, ROWS, TILE, TILE_PAD, ceil_div, empty_vector, kernel


@kernel(f"void({F2}, {F2}, {F1}, {F2})")
def _matmul_kernel(a, b, bias, out):
    """out = a @ b (+ bias when bias is not empty).   a (M, K), b (K, N), bias (N,) or (0,) -> out (M, N).

    One thread per output; block (TILE, TILE) covers out[by*TILE:, bx*TILE:].
    Both operands are read a TILE x TILE tile at a time into shared memory
    (zero outside the matrix), coalesced along the row.
    """
    sa = cuda.shared.array((TILE, TILE), float32)
    sb = cuda.shared.array((TILE, TILE), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty          # in M
    col = cuda.blockIdx.x * TILE + tx          # in N
    M, K = a.shape
    N = b.shape[1]
    acc = float32(0.0)
    for t in range((K + TILE - 1) // TILE):
        k = t * TILE + tx
        sa[ty, tx] = a[row, k] if row < M and k < K else float32(0.0)
        k = t * TILE + ty
        sb[ty, tx] = b[k, col] if k < K and col < N else float32(0.0)
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    if row < M and col < N:
        if bias.shape[0] > 0:
            acc += bias[col]
        out[row, col] = acc


@kernel(f"void({F2}, {F2}, {F2})")
def _matmul_backward_input_kernel(dy, w, dx):
    """dx = dy @ w.T, reading w untransposed.   dy (B, O), w (I, O) -> dx (B, I).

    Block (TILE, TILE) covers dx[by*TILE:, bx*TILE:]; the reduction runs over O.
    The w tile is read along its rows (coalesced) and stored transposed.
    """
    sa = cuda.shared.array((TILE, TILE), float32)       # sa[b, o] = dy[b, o]
    sb = cuda.shared.array((TILE, TILE_PAD), float32)   # sb[o, i] = w[i, o]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty          # in B
    col = cuda.blockIdx.x * TILE + tx          # in I
    B, O = dy.shape
    I = w.shape[0]
    w_row = cuda.blockIdx.x * TILE + ty        # the row of w this thread loads
    acc = float32(0.0)
    for t in range((O + TILE - 1) // TILE):
        o = t * TILE + tx
        sa[ty, tx] = dy[row, o] if row < B and o < O else float32(0.0)
        sb[tx, ty] = w[w_row, o] if w_row < I and o < O else float32(0.0)
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    if row < B and col < I:
        dx[row, col] = acc


@kernel(f"void({F2}, {F2}, {F2})")
def _matmul_backward_weight_kernel(x, dy, dw):
    """dw = x.T @ dy, reading x untransposed.   x (B, I), dy (B, O) -> dw (I, O).

    Block (TILE, TILE) covers dw[by*TILE:, bx*TILE:]; the reduction runs over B.
    The x tile is read along its rows (coalesced) and stored transposed.
    """
    sa = cuda.shared.array((TILE, TILE_PAD), float32)   # sa[i, b] = x[b, i]
    sb = cuda.shared.array((TILE, TILE), float32)       # sb[b, o] = dy[b, o]
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    row = cuda.blockIdx.y * TILE + ty          # in I
    col = cuda.blockIdx.x * TILE + tx          # in O
    B, I = x.shape
    O = dy.shape[1]
    x_col = cuda.blockIdx.y * TILE + tx        # the column of x this thread loads
    acc = float32(0.0)
    for t in range((B + TILE - 1) // TILE):
        b = t * TILE + ty
        sa[tx, ty] = x[b, x_col] if b < B and x_col < I else float32(0.0)
        sb[ty, tx] = dy[b, col] if b < B and col < O else float32(0.0)
        cuda.syncthreads()
        for kk in range(TILE):
            acc += sa[ty, kk] * sb[kk, tx]
        cuda.syncthreads()
    if row < I and col < O:
        dw[row, col] = acc


@kernel(f"void({F2}, {F1})")
def _bias_backward_kernel(dy, db):
    """db[o] = sum_b dy[b, o].   dy (B, O) -> db (O,).

    Block (COLS, ROWS) owns COLS columns: thread (tx, ty) sums rows ty, ty + ROWS, ...
    of column bx*COLS + tx (a warp reads consecutive columns), then the ROWS
    partial sums of each column are added in shared memory.
    """
    partial = cuda.shared.array((ROWS, COLS), float32)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    o = cuda.blockIdx.x * COLS + tx
    B, O = dy.shape
    acc = float32(0.0)
    if o < O:
        for b in range(ty, B, ROWS):
            acc += dy[b, o]
    partial[ty, tx] = acc
    cuda.syncthreads()
    step = ROWS // 2
    while step > 0:
        if ty < step:
            partial[ty, tx] += partial[ty + step, tx]
        cuda.syncthreads()
        step //= 2
    if ty == 0 and o < O:
        db[o] = partial[0, tx]


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

