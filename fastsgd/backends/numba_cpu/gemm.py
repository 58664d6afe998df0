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
#: and stored ``out`` at every step, ran at 110-130).  Tiles of 12x2, 14x2, 6x4 and
#: 8x3 vectors ran at the same speed; unrolling k by 2 too.
#: AVX2 has 16 vector registers, not 32: there the tile is two of 4 rows x 2 ymm
#: (``_tile_four_rows``: 8 accumulators, 2 loads of b and 4 broadcasts a step), since
#: 16 accumulators spilled (AVX2 code on the Xeon, 256x784x128: 1007 us against 741
#: for the loop of 4 rows x 4 steps of k).
#: b is read in place, DEPTH_BLOCK rows at a time (``_gemm_blocks``), A too.
TILE_ROWS = 8
VECTOR_COLS = WIDTH
SPLIT_TILES = WIDTH < 16


@njit(inline="always")
def _rows4_start(out, o, o_row, first):
    """The accumulators of 4 rows x 2 vectors of a tile, rows at out[o + r * o_row]: zero
    when ``first``, else what out holds (a later block of depths adds to it)."""
    W = VECTOR_COLS
    if first:
        return (vzero(), vzero(), vzero(), vzero(), vzero(), vzero(), vzero(), vzero())
    return (vload(out, o), vload(out, o + W), vload(out, o + o_row),
            vload(out, o + o_row + W), vload(out, o + 2 * o_row),
            vload(out, o + 2 * o_row + W), vload(out, o + 3 * o_row),
            vload(out, o + 3 * o_row + W))


@njit(inline="always")
def _rows4_step(a, at, a_row, b0, b1, c):
    """One depth of 4 rows: c[2r + v] += A[r, k] * b_v for the two vectors b0, b1 of B[k],
    A[r, k] at ``a[at + r * a_row]``."""
    c00, c01, c10, c11, c20, c21, c30, c31 = c
    x = vbroadcast(a, at)
    c00, c01 = vfma(x, b0, c00), vfma(x, b1, c01)
    x = vbroadcast(a, at + a_row)
    c10, c11 = vfma(x, b0, c10), vfma(x, b1, c11)
    x = vbroadcast(a, at + 2 * a_row)
    c20, c21 = vfma(x, b0, c20), vfma(x, b1, c21)
    x = vbroadcast(a, at + 3 * a_row)
    c30, c31 = vfma(x, b0, c30), vfma(x, b1, c31)
    return (c00, c01, c10, c11, c20, c21, c30, c31)


@njit(inline="always")
def _rows4_store(out, o, o_row, c):
    """Store the accumulators of 4 rows x 2 vectors at out[o + r * o_row]."""
    W = VECTOR_COLS
    c00, c01, c10, c11, c20, c21, c30, c31 = c
    vstore(out, o, c00)
    vstore(out, o + W, c01)
    vstore(out, o + o_row, c10)
    vstore(out, o + o_row + W, c11)
    vstore(out, o + 2 * o_row, c20)
    vstore(out, o + 2 * o_row + W, c21)
    vstore(out, o + 3 * o_row, c30)
    vstore(out, o + 3 * o_row + W, c31)


@njit(inline="always")
def _tile_two_vectors(a, a_at, a_k, a_row, b, b_at, b_k, out, o_at, o_row, K, first):
    """One register tile: out[i0:i0+8, j0:j0+2W] = A[i0:i0+8] @ B[:, j0:j0+2W], W =
    ``simd.WIDTH``, the arrays C-contiguous and addressed by flat offsets; when not
    ``first``, out[i0:i0+8, j0:j0+2W] += that (a later block of depths).  Its two halves
    of 4 rows share each step's two vectors of b: 16 accumulators.

    Element (i0 + r, k) of A at ``a_at + r * a_row + k * a_k`` of ``a``; B[k, j0:j0+2W]
    at ``b_at + k * b_k`` of ``b``; out[i0 + r, j0:j0+2W] at ``o_at + r * o_row``.
    """
    W = VECTOR_COLS
    top = _rows4_start(out, o_at, o_row, first)
    bottom = _rows4_start(out, o_at + 4 * o_row, o_row, first)
    at, bt = a_at, b_at
    for _ in range(K):
        b0, b1 = vload(b, bt), vload(b, bt + W)
        top = _rows4_step(a, at, a_row, b0, b1, top)
        bottom = _rows4_step(a, at + 4 * a_row, a_row, b0, b1, bottom)
        at += a_k
        bt += b_k
    _rows4_store(out, o_at, o_row, top)
    _rows4_store(out, o_at + 4 * o_row, o_row, bottom)


@njit(inline="always")
def _tile_four_rows(a, a_at, a_k, a_row, b, b_at, b_k, out, o_at, o_row, K, first):
    """``_tile_two_vectors`` for 4 rows: out[i0:i0+4, j0:j0+2W] (8 accumulators)."""
    W = VECTOR_COLS
    c = _rows4_start(out, o_at, o_row, first)
    at, bt = a_at, b_at
    for _ in range(K):
        c = _rows4_step(a, at, a_row, vload(b, bt), vload(b, bt + W), c)
        at += a_k
        bt += b_k
    _rows4_store(out, o_at, o_row, c)


@njit(inline="always")
def _tile(a, a_at, a_k, a_row, b, b_at, b_k, out, o_at, o_row, K, first):
    """out[i0:i0+8, j0:j0+2W] as one tile of 8 rows, or two of 4 (``SPLIT_TILES``);
    arguments as ``_tile_two_vectors``."""
    if SPLIT_TILES:
        _tile_four_rows(a, a_at, a_k, a_row, b, b_at, b_k, out, o_at, o_row, K, first)
        _tile_four_rows(a, a_at + 4 * a_row, a_k, a_row, b, b_at, b_k, out, o_at + 4 * o_row,
                        o_row, K, first)
    else:
        _tile_two_vectors(a, a_at, a_k, a_row, b, b_at, b_k, out, o_at, o_row, K, first)


@njit(inline="always")
def _tile_one_vector(a, a_at, a_k, a_row, b, b_at, b_k, out, o_at, o_row, K, first):
    """``_tile_two_vectors`` one vector wide: out[i0:i0+8, j0:j0+W] (the last W columns
    of a width that is an odd number of W)."""
    if first:
        c0, c1, c2, c3 = vzero(), vzero(), vzero(), vzero()
        c4, c5, c6, c7 = vzero(), vzero(), vzero(), vzero()
    else:
        c0, c1 = vload(out, o_at), vload(out, o_at + o_row)
        c2, c3 = vload(out, o_at + 2 * o_row), vload(out, o_at + 3 * o_row)
        c4, c5 = vload(out, o_at + 4 * o_row), vload(out, o_at + 5 * o_row)
        c6, c7 = vload(out, o_at + 6 * o_row), vload(out, o_at + 7 * o_row)
    at, bt = a_at, b_at
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
        bt += b_k
    vstore(out, o_at, c0)
    vstore(out, o_at + o_row, c1)
    vstore(out, o_at + 2 * o_row, c2)
    vstore(out, o_at + 3 * o_row, c3)
    vstore(out, o_at + 4 * o_row, c4)
    vstore(out, o_at + 5 * o_row, c5)
    vstore(out, o_at + 6 * o_row, c6)
    vstore(out, o_at + 7 * o_row, c7)


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
def _row_of_tiles(a, a_at, a_k, a_row, b, out, i0, k0, depth, first):
    """out[i0:i0+8, :N - N % W] (+)= A[i0:i0+8, k0:k0+depth] @ b[k0:k0+depth] by register
    tiles (+= unless ``first``: a later block of depths), A at flat offset a_at (its element
    (i0, k0)) and addressed as in ``_tile_two_vectors``, b (K, N) and out (M, N)
    C-contiguous."""
    N = b.shape[1]
    W = VECTOR_COLS
    wide_end = N - N % (2 * W)
    for j0 in range(0, wide_end, 2 * W):
        _tile(a, a_at, a_k, a_row, b, k0 * N + j0, N, out, i0 * N + j0, N, depth, first)
    if N - N % W > wide_end:
        _tile_one_vector(a, a_at, a_k, a_row, b, k0 * N + wide_end, N, out, i0 * N + wide_end,
                         N, depth, first)


#: Depths a pass of the tiles takes: 64 rows of b (32 KiB at 128 columns) stay in L1
#: while the tiles of ROW_CHUNK blocks of rows sweep them, instead of all K rows streaming
#: from L2 for each block (one core, min of medians: x.T @ dy 256x784x128 353 -> 259 us,
#: matmul 256x784x128 286 -> 255 us; 32 as fast, 128 and 256 no faster than none).
DEPTH_BLOCK = 64
#: Blocks of TILE_ROWS rows a thread takes at a time, each swept depth block by depth
#: block (4: 32 rows; 2 pieces of a batch of 64 rows, 8 of 256).
ROW_CHUNK = 4


@njit(inline="always")
def _gemm_blocks(a, b, out, transposed):
    """out = A @ b where A is ``a`` (M, K), or ``a.T`` for ``a`` (K, M) when ``transposed``.

    b (K, N) -> out (M, N), all C-contiguous.  Chunks of ROW_CHUNK blocks of TILE_ROWS
    rows are spread over the threads (in a ``parallel=True`` caller); a chunk is swept
    by the register tiles across the columns, DEPTH_BLOCK depths at a time, each tile
    adding its block of depths to out in the same order of k as one pass would (the
    same bits); the last M % TILE_ROWS rows and N % W columns are done one by one.
    (Eight columns of a packed k-major for a tile of a.T, instead of read in place a
    row of a apart, made x.T @ dy 64x784x128 1.2x slower.)
    """
    M, N = out.shape
    K = b.shape[0]
    tiles_end = N - N % VECTOR_COLS
    n_blocks = M // TILE_ROWS
    n_chunks = (n_blocks + ROW_CHUNK - 1) // ROW_CHUNK
    for chunk in prange(n_chunks):
        blocks_end = min(n_blocks, (chunk + 1) * ROW_CHUNK)
        for k0 in range(0, max(K, 1), DEPTH_BLOCK):
            depth = min(DEPTH_BLOCK, K - k0)
            for blk in range(chunk * ROW_CHUNK, blocks_end):
                i0 = blk * TILE_ROWS
                if transposed:
                    _row_of_tiles(a, k0 * M + i0, M, 1, b, out, i0, k0, depth, k0 == 0)
                else:
                    _row_of_tiles(a, i0 * K + k0, 1, K, b, out, i0, k0, depth, k0 == 0)
        for blk in range(chunk * ROW_CHUNK, blocks_end):
            i0 = blk * TILE_ROWS
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


@njit(inline="always")
def _pack_rows_as_columns(w, i0, width, panel):
    """panel[o * width + c] = w[i0 + c, o] for c < width: rows i0 .. i0 + width of w as
    the columns of a k-major panel.   w (I, O), panel (O * width,)."""
    O = w.shape[1]
    for c in range(width):
        for o in range(O):
            panel[o * width + c] = w[i0 + c, o]


@njit(inline="always")
def _dot_products(dy, w, dx, b0, b1, i0, i1):
    """dx[b0:b1, i0:i1] = dy[b0:b1] @ w[i0:i1].T as dot products along O: the rows and
    columns the tiles leave.   dy (B, O), w (I, O), dx (B, I)."""
    O = dy.shape[1]
    for b in range(b0, b1):
        for i in range(i0, i1):
            acc = np.float32(0.0)
            for o in range(O):
                acc += dy[b, o] * w[i, o]
            dx[b, i] = acc


@njit(inline="always")
def _backward_input_rows(dy, w, dx):
    """dx = dy @ w.T.   dy (B, O), w (I, O) -> dx (B, I).

    Panels of 2W columns of w.T (2W rows of w) are copied k-major (O x 2W floats, in
    L1) and swept down dy's rows by the register tiles, so that their vectors run along
    I; the panels are spread over the threads (in a ``parallel=True`` caller).  A copy
    of the whole of w.T first, then ``_gemm_blocks``, spent 60 of 330 us in the copy
    (256x128x784, one thread).  The last I % W columns and B % 8 rows are dot products.
    """
    B, O = dy.shape
    I = w.shape[0]
    W = VECTOR_COLS
    P = 2 * W
    rows_end = B - B % TILE_ROWS
    for p in prange(I // P):
        panel = np.empty(O * P, np.float32)
        _pack_rows_as_columns(w, p * P, P, panel)
        for b0 in range(0, rows_end, TILE_ROWS):
            _tile(dy, b0 * O, 1, O, panel, 0, P, dx, b0 * I + p * P, I, O, True)
    wide_end = I - I % P
    tiles_end = I - I % W
    if tiles_end > wide_end:
        panel = np.empty(O * W, np.float32)
        _pack_rows_as_columns(w, wide_end, W, panel)
        for b0 in range(0, rows_end, TILE_ROWS):
            _tile_one_vector(dy, b0 * O, 1, O, panel, 0, W, dx, b0 * I + wide_end, I, O, True)
    _dot_products(dy, w, dx, 0, rows_end, tiles_end, I)
    _dot_products(dy, w, dx, rows_end, B, 0, I)


@njit(**_MATMUL)
def _backward_input(dy, w, dx):
    """``_backward_input_rows`` on the threads.   dy (B, O), w (I, O) -> dx (B, I)."""
    _backward_input_rows(dy, w, dx)


#: One-thread twins of the parallel matmuls: a product below ``PARALLEL_MIN_MACS``
#: multiply-adds (``config``) runs on the calling thread.  Threads split whole rows (or
#: panels of columns): either twin gives the same bits.
#: Each twin is its own cached function over the same inlined body: Numba's disk cache
#: knows a function by its name and line, so a twin compiled from its sibling's
#: ``py_func`` would share (and mix up) the sibling's cache entry.
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
def _product(a, b, out, transposed, min_macs):
    """``_gemm`` on the threads, or on this one for a product below ``min_macs``
    multiply-adds, or ``_narrow_gemm`` (compiled callers; the threshold is an argument,
    not a constant compiled in, since it depends on the threading layer of the
    process)."""
    if b.shape[1] <= NARROW_MAX_N:
        _narrow_gemm(a, b, out, transposed)
    elif out.shape[0] * out.shape[1] * b.shape[0] < min_macs:
        _gemm_one_thread(a, b, out, transposed)
    else:
        _gemm(a, b, out, transposed)


def _on_threads(threaded, one_thread, args, macs, kind):
    """``threaded(*args)`` under the lock, or ``one_thread(*args)`` while the threads
    are held up; either timed for ``config.PACE``."""
    pace = config.PACE
    shape = (kind, args[0].shape, args[1].shape)
    if not pace.threads_now():
        started = pace.clock()
        one_thread(*args)
        pace.ran_alone(shape, macs, pace.clock() - started)
        return
    with config._PARALLEL:
        started = pace.clock()
        threaded(*args)
        pace.ran(shape, macs, started, pace.clock() - started)


def _gemm_call(a, b, out, transposed):
    """``_product`` for Python callers: the threads, under the lock, only when they pay."""
    macs = out.shape[0] * out.shape[1] * b.shape[0]
    if b.shape[1] <= NARROW_MAX_N:
        _narrow_gemm(a, b, out, transposed)
    elif macs < config.PARALLEL_MIN_MACS:
        _gemm_one_thread(a, b, out, transposed)
    else:
        _on_threads(_gemm, _gemm_one_thread, (a, b, out, transposed), macs, transposed)


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
def _backward_input_product(dy, w, dx, min_macs):
    """dx = dy @ w.T on the threads, on this one for a product below ``min_macs``
    multiply-adds, or narrow (compiled callers)."""
    if dy.shape[1] <= NARROW_MAX_N:
        _narrow_backward_input(dy, w, dx)
    elif dy.shape[0] * dy.shape[1] * w.shape[0] < min_macs:
        _backward_input_one_thread(dy, w, dx)
    else:
        _backward_input(dy, w, dx)


def _backward_input_call(dy, w, dx):
    """``_backward_input_product`` for Python callers: the threads, under the lock,
    only when they pay."""
    macs = dy.shape[0] * dy.shape[1] * w.shape[0]
    if dy.shape[1] <= NARROW_MAX_N:
        _narrow_backward_input(dy, w, dx)
    elif macs < config.PARALLEL_MIN_MACS:
        _backward_input_one_thread(dy, w, dx)
    else:
        _on_threads(_backward_input, _backward_input_one_thread, (dy, w, dx), macs, "dx")


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


