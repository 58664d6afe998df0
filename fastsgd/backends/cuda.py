"""The CUDA backend: every kernel of the contract as a ``numba.cuda`` kernel plus its launcher.

Device arrays in, device arrays out.  Arrays are Numba CUDA device arrays
(``numba.cuda.to_device``, ``backend.asarray``), float32 (int64 for labels and
gather indices), C-contiguous.  Outputs (``out=``, ``dx=``, ...) and arrays
updated in place (``sgd_update``'s param and velocity) must be device arrays.
Read-only inputs may also be NumPy arrays: they are checked on the host and
copied to the device on every call, which is convenient in a notebook and slow
in a loop.  Losses and accuracies return Python floats, so they wait for the
device.

Dimension letters as in ``contract.py``: B batch, I in-features, O out-features,
C classes, M, K, N a generic matmul (M, K) @ (K, N).  ``n`` is a flat element count.

Layout of this module, top to bottom: launch constants; for each kernel family
the ``@cuda.jit`` kernel(s) followed by the launcher(s) under the contract's
names; ``KERNEL_SIGNATURES`` (every kernel with the argument types it is
compiled for, used to build PTX ahead of time); the device-side checks; and
``CudaBackend``, the contract's front door with device-array validation.

Every kernel is self-contained: no helper device functions, so each one can be
compiled to PTX without a GPU (``numba.cuda.compile_ptx``).

Availability: importing this module needs only ``numba-cuda``;
``make_backend()`` raises ``ImportError`` with the reason (no driver, no GPU)
when there is no usable device, unless the CUDA simulator is on
(``NUMBA_ENABLE_CUDASIM=1`` set before Numba is first imported).
"""
from __future__ import annotations

import importlib.util
import math
import sys

import numpy as np

if not hasattr(np, "row_stack"):
    # numba-cuda up to 0.30 registers an overload for np.row_stack, which NumPy 2.5
    # removed; its alias vstack lets the CUDA target import on new NumPy.
    np.row_stack = np.vstack

if importlib.util.find_spec("numba_cuda") is None:
    raise ImportError("numba-cuda is not installed (pip install 'fastsgd[cuda]')")

from numba import cuda, float32, int32  # noqa: E402

try:  # where numba-cuda keeps its settings (older releases share Numba's)
    from numba.cuda.core import config as _cuda_config
except ImportError:
    from numba.core import config as _cuda_config

from . import contract  # noqa: E402
from .contract import Backend  # noqa: E402

#: True when kernels run in Numba's CUDA simulator (on the CPU, one Python thread per GPU thread).
SIMULATED = bool(_cuda_config.ENABLE_CUDASIM)

# Launch shapes.  The simulator runs each GPU thread as a Python thread (about a
# millisecond each), so there the same kernels run with small blocks: tests then
# cross several tile and block edges at shapes of a few dozen elements.

#: Side of the square shared-memory tiles of the matmuls: blocks of TILE x TILE threads.
TILE = 4 if SIMULATED else 16
#: Row length of a tile stored transposed: one spare column keeps shared-memory banks apart.
TILE_PAD = TILE + 1
#: Threads per block of the elementwise kernels and of the one-block reductions (a power of 2).
BLOCK = 16 if SIMULATED else 256
#: Columns per block of the bias gradient (a warp wide on a GPU, for coalesced reads) ...
COLS = 4 if SIMULATED else 32
#: ... and rows of threads summing down each column (a power of 2).
ROWS = 4 if SIMULATED else 8


def ceil_div(a: int, b: int) -> int:
    """Number of blocks of ``b`` covering ``a`` items."""
    return (a + b - 1) // b


# ------------------------------------------------------------------ matmul
@cuda.jit
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


@cuda.jit
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


@cuda.jit
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


@cuda.jit
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


_no_bias = {}


def _empty_bias():
    """A zero-length float32 device array: 'no bias' for the shared matmul kernel."""
    if "bias" not in _no_bias:
        _no_bias["bias"] = cuda.device_array(0, np.float32)
    return _no_bias["bias"]


def _launch_matmul(kernel, m, n, *args):
    """Run a tiled matmul kernel over an (m, n) output: the exact grid of TILE x TILE blocks."""
    kernel[(ceil_div(n, TILE), ceil_div(m, TILE)), (TILE, TILE)](*args)


def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    _launch_matmul(_matmul_kernel, a.shape[0], b.shape[1], a, b, _empty_bias(), out)


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


# ------------------------------------------------------------- activations
@cuda.jit
def _sigmoid_forward_kernel(x, out):
    """out = 1 / (1 + exp(-x)) via exp(-|x|), which never overflows.   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        v = x[i]
        e = math.exp(-abs(v))
        r = float32(1.0) / (float32(1.0) + e)
        out[i] = r if v >= float32(0.0) else e * r


@cuda.jit
def _sigmoid_backward_kernel(y, dy, dx):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output.   (n,)."""
    i = cuda.grid(1)
    if i < y.shape[0]:
        dx[i] = dy[i] * y[i] * (float32(1.0) - y[i])


@cuda.jit
def _relu_forward_kernel(x, out):
    """out = max(x, 0).   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = x[i] if x[i] > float32(0.0) else float32(0.0)


@cuda.jit
def _relu_backward_kernel(x, dy, dx):
    """dx = dy where x > 0, else 0; x the forward input.   (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        dx[i] = dy[i] if x[i] > float32(0.0) else float32(0.0)


def _flat(x):
    """A contiguous array as a 1-D view (n,)."""
    return x if x.ndim == 1 else x.reshape(x.size)


def _rows(x):
    """A contiguous (N,) or (N, F) array as (N, F) (F = 1 for a vector)."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], 1)


def _launch_elementwise(kernel, *arrays):
    """Run an elementwise kernel on flat views of ``arrays``: one thread per element."""
    flat = [_flat(a) for a in arrays]
    kernel[ceil_div(flat[0].shape[0], BLOCK), BLOCK](*flat)


def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), any shape."""
    _launch_elementwise(_sigmoid_forward_kernel, x, out)


def sigmoid_backward(y, dy, dx):
    """dx = dy * y * (1 - y), any shape."""
    _launch_elementwise(_sigmoid_backward_kernel, y, dy, dx)


def relu_forward(x, out):
    """out = max(x, 0), any shape."""
    _launch_elementwise(_relu_forward_kernel, x, out)


def relu_backward(x, dy, dx):
    """dx = dy * (x > 0), any shape."""
    _launch_elementwise(_relu_backward_kernel, x, dy, dx)


# ------------------------------------------------------------------ losses
# The losses and accuracies reduce a batch to one number in a single block of
# BLOCK threads: thread t takes rows t, t + BLOCK, ..., then the BLOCK partial
# results are added pairwise in shared memory and thread 0 writes result[0].
# The launcher copies that one number back (the only device-to-host transfer).

@cuda.jit
def _mnist_loss_forward_kernel(preds, targets, result):
    """result[0] = sum_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   (B,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for b in range(t, preds.shape[0], BLOCK):
        p = preds[b]
        e = math.exp(-abs(p))
        r = float32(1.0) / (float32(1.0) + e)
        s = r if p >= float32(0.0) else e * r
        acc += (float32(1.0) - s) if targets[b] == float32(1.0) else s
    partial[t] = acc
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]


@cuda.jit
def _mnist_loss_backward_kernel(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    b = cuda.grid(1)
    B = preds.shape[0]
    if b < B:
        p = preds[b]
        e = math.exp(-abs(p))
        r = float32(1.0) / (float32(1.0) + e)
        s = r if p >= float32(0.0) else e * r
        slope = s * (float32(1.0) - s) / float32(B)
        dpreds[b] = -slope if targets[b] == float32(1.0) else slope


@cuda.jit
def _cross_entropy_forward_kernel(logits, labels, result):
    """result[0] = sum_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) -> (1,).

    Each row is shifted by its maximum before exp, so nothing overflows.
    """
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    B, C = logits.shape
    acc = float32(0.0)
    for b in range(t, B, BLOCK):
        m = logits[b, 0]
        for c in range(1, C):
            m = max(m, logits[b, c])
        total = float32(0.0)
        for c in range(C):
            total += math.exp(logits[b, c] - m)
        acc += math.log(total) + m - logits[b, labels[b]]
    partial[t] = acc
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]


@cuda.jit
def _cross_entropy_backward_kernel(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B, one thread per row.   (B, C) -> (B, C)."""
    b = cuda.grid(1)
    B, C = logits.shape
    if b < B:
        m = logits[b, 0]
        for c in range(1, C):
            m = max(m, logits[b, c])
        total = float32(0.0)
        for c in range(C):
            total += math.exp(logits[b, c] - m)
        scale = float32(1.0) / (total * float32(B))
        for c in range(C):
            dlogits[b, c] = math.exp(logits[b, c] - m) * scale
        dlogits[b, labels[b]] -= float32(1.0) / float32(B)


_scratch = {}


def _result_buffers(dtype):
    """(device (1,), pinned host (1,)) buffers of ``dtype`` for one-number results, reused."""
    key = np.dtype(dtype).str
    if key not in _scratch:
        _scratch[key] = (cuda.device_array(1, dtype), cuda.pinned_array(1, dtype))
    return _scratch[key]


def _one_block(kernel, *args, dtype=np.float32):
    """Run a one-block reduction kernel writing result[0]; return that number (waits for the device)."""
    device, host = _result_buffers(dtype)
    kernel[1, BLOCK](*args, device)
    device.copy_to_host(host)
    return host[0]


def mnist_loss_forward(preds, targets):
    """mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,)."""
    return float(_one_block(_mnist_loss_forward_kernel, preds, targets)) / preds.shape[0]


def mnist_loss_backward(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    _mnist_loss_backward_kernel[ceil_div(preds.shape[0], BLOCK), BLOCK](preds, targets, dpreds)


def cross_entropy_forward(logits, labels):
    """mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int64."""
    return float(_one_block(_cross_entropy_forward_kernel, logits, labels)) / logits.shape[0]


def cross_entropy_backward(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B.   (B, C) -> (B, C)."""
    _cross_entropy_backward_kernel[ceil_div(logits.shape[0], BLOCK), BLOCK](logits, labels, dlogits)


# --------------------------------------------------------------- optimizer
@cuda.jit
def _sgd_kernel(param, grad, lr, weight_decay):
    """param -= lr * (grad + wd * param).   (n,)."""
    i = cuda.grid(1)
    if i < param.shape[0]:
        param[i] -= lr * (grad[i] + weight_decay * param[i])


@cuda.jit
def _sgd_momentum_kernel(param, grad, velocity, lr, momentum, weight_decay):
    """velocity = momentum * velocity + (grad + wd * param);  param -= lr * velocity.   (n,)."""
    i = cuda.grid(1)
    if i < param.shape[0]:
        v = momentum * velocity[i] + (grad[i] + weight_decay * param[i])
        velocity[i] = v
        param[i] -= lr * v


def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """In place: g = grad + wd * param; v = momentum * v + g (if velocity); param -= lr * g."""
    p, g = _flat(param), _flat(grad)
    blocks = ceil_div(p.shape[0], BLOCK)
    if velocity is None:
        _sgd_kernel[blocks, BLOCK](p, g, np.float32(lr), np.float32(weight_decay))
    else:
        _sgd_momentum_kernel[blocks, BLOCK](p, g, _flat(velocity), np.float32(lr),
                                            np.float32(momentum), np.float32(weight_decay))


# ----------------------------------------------------------------- metrics
@cuda.jit
def _binary_accuracy_kernel(preds, targets, result):
    """result[0] = #{b : (p_b > 0) == (t_b == 1)}; sigmoid(p) > 0.5 exactly when p > 0.   (B,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, int32)
    t = cuda.threadIdx.x
    hits = int32(0)
    for b in range(t, preds.shape[0], BLOCK):
        if (preds[b] > float32(0.0)) == (targets[b] == float32(1.0)):
            hits += int32(1)
    partial[t] = hits
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]


@cuda.jit
def _multiclass_accuracy_kernel(logits, labels, result):
    """result[0] = #{b : argmax(z_b) == label_b}, first maximum on ties.   (B, C), (B,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, int32)
    t = cuda.threadIdx.x
    B, C = logits.shape
    hits = int32(0)
    for b in range(t, B, BLOCK):
        best = 0
        for c in range(1, C):
            if logits[b, c] > logits[b, best]:
                best = c
        if best == labels[b]:
            hits += int32(1)
    partial[t] = hits
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]


def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)).   preds, targets (B,)."""
    return int(_one_block(_binary_accuracy_kernel, preds, targets, dtype=np.int32)) / preds.shape[0]


def multiclass_accuracy(logits, labels):
    """mean(argmax(z_b) == label_b).   logits (B, C), labels (B,) int64."""
    return int(_one_block(_multiclass_accuracy_kernel, logits, labels, dtype=np.int32)) / logits.shape[0]


# ---------------------------------------------------------- data movement
@cuda.jit
def _take_rows_kernel(src, idx, out):
    """out[r, f] = src[idx[r], f], one thread per output element.   src (N, F), idx (R,) -> out (R, F).

    An index outside [0, N) yields a zero row instead of a read out of bounds
    (the launcher checks indices first unless value checks are skipped).
    """
    i = cuda.grid(1)
    R, F = out.shape
    if i < R * F:
        r = i // F
        f = i - r * F
        row = idx[r]
        if row >= 0 and row < src.shape[0]:
            out[r, f] = src[row, f]
        else:
            out[r, f] = 0


def take_rows(src, idx, out):
    """out[r] = src[idx[r]].   src (N, F), idx (R,) int64 -> out (R, F); arrays validated by CudaBackend."""
    n = out.shape[0] * out.shape[1]
    _take_rows_kernel[ceil_div(n, BLOCK), BLOCK](src, idx, out)


# ------------------------------------------------------ device-side checks
@cuda.jit
def _count_outside_kernel(values, low, high, result):
    """result[0] = #{i : not low <= values[i] < high}, in one block.   values (n,) int64 -> (1,)."""
    partial = cuda.shared.array(BLOCK, int32)
    t = cuda.threadIdx.x
    bad = int32(0)
    for i in range(t, values.shape[0], BLOCK):
        if values[i] < low or values[i] >= high:
            bad += int32(1)
    partial[t] = bad
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]


@cuda.jit
def _count_not_binary_kernel(targets, result):
    """result[0] = #{i : targets[i] not 0 and not 1}, in one block.   targets (n,) float32 -> (1,)."""
    partial = cuda.shared.array(BLOCK, int32)
    t = cuda.threadIdx.x
    bad = int32(0)
    for i in range(t, targets.shape[0], BLOCK):
        if targets[i] != float32(0.0) and targets[i] != float32(1.0):
            bad += int32(1)
    partial[t] = bad
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]


@cuda.jit
def _flag_non_finite_kernel(x, flag):
    """flag[0] = 1 if some x[i] is NaN or +-Inf (flag zeroed by the caller).   x (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0] and not math.isfinite(x[i]):
        flag[0] = 1


def count_outside(values, low: int, high: int) -> int:
    """How many of the int64 device ``values`` lie outside [low, high) (waits for the device)."""
    return int(_one_block(_count_outside_kernel, _flat(values), np.int64(low), np.int64(high),
                          dtype=np.int32))


def count_not_binary(targets) -> int:
    """How many float32 device ``targets`` are neither 0 nor 1 (waits for the device)."""
    return int(_one_block(_count_not_binary_kernel, _flat(targets), dtype=np.int32))


def all_finite(x) -> bool:
    """Whether the float32 device array ``x`` holds no NaN or Inf (waits for the device)."""
    x = _flat(x)
    flag = cuda.to_device(np.zeros(1, np.int32))
    _flag_non_finite_kernel[ceil_div(x.shape[0], BLOCK), BLOCK](x, flag)
    return int(flag.copy_to_host()[0]) == 0


# --------------------------------------------------------- the signatures
_F1, _F2 = "float32[::1]", "float32[:, ::1]"
_I1, _I2 = "int64[::1]", "int64[:, ::1]"
_R1, _N1 = "float32[::1]", "int32[::1]"  # one-number results: a float sum, an int count

#: Every ``@cuda.jit`` kernel of this module -> the argument types it is launched with.
#: Kernels compile lazily at first launch; this table lets ``numba.cuda.compile_ptx``
#: build them all ahead of time without a GPU (see ``compile_all_ptx``).
KERNEL_SIGNATURES: dict[str, tuple[str, ...]] = {
    "_matmul_kernel": (f"void({_F2}, {_F2}, {_F1}, {_F2})",),
    "_matmul_backward_input_kernel": (f"void({_F2}, {_F2}, {_F2})",),
    "_matmul_backward_weight_kernel": (f"void({_F2}, {_F2}, {_F2})",),
    "_bias_backward_kernel": (f"void({_F2}, {_F1})",),
    "_sigmoid_forward_kernel": (f"void({_F1}, {_F1})",),
    "_sigmoid_backward_kernel": (f"void({_F1}, {_F1}, {_F1})",),
    "_relu_forward_kernel": (f"void({_F1}, {_F1})",),
    "_relu_backward_kernel": (f"void({_F1}, {_F1}, {_F1})",),
    "_mnist_loss_forward_kernel": (f"void({_F1}, {_F1}, {_R1})",),
    "_mnist_loss_backward_kernel": (f"void({_F1}, {_F1}, {_F1})",),
    "_cross_entropy_forward_kernel": (f"void({_F2}, {_I1}, {_R1})",),
    "_cross_entropy_backward_kernel": (f"void({_F2}, {_I1}, {_F2})",),
    "_sgd_kernel": (f"void({_F1}, {_F1}, float32, float32)",),
    "_sgd_momentum_kernel": (f"void({_F1}, {_F1}, {_F1}, float32, float32, float32)",),
    "_binary_accuracy_kernel": (f"void({_F1}, {_F1}, {_N1})",),
    "_multiclass_accuracy_kernel": (f"void({_F2}, {_I1}, {_N1})",),
    "_take_rows_kernel": (f"void({_F2}, {_I1}, {_F2})", f"void({_I2}, {_I1}, {_I2})"),
    "_count_outside_kernel": (f"void({_I1}, int64, int64, {_N1})",),
    "_count_not_binary_kernel": (f"void({_F1}, {_N1})",),
    "_flag_non_finite_kernel": (f"void({_F1}, {_N1})",),
}

#: Kernels that ``compile_ptx`` cannot build without a GPU, and why; the GPU check
#: (``benchmarks/gpu_check.sh``) compiles and tests them on the device.
DEVICE_ONLY_KERNELS: dict[str, str] = {
    "_train_epoch_kernel": "its grid sync (cuda.cg.this_grid) is a device function, which "
                           "numba-cuda compiles only with a driver present",
}


def kernels() -> dict:
    """Every ``@cuda.jit`` kernel defined in this module, by name."""
    kinds = ("CUDADispatcher", "FakeCUDAKernel")  # on a device / in the simulator
    return {name: obj for name, obj in vars(sys.modules[__name__]).items()
            if type(obj).__name__ in kinds}


def compile_all_ptx(cc=(9, 0)) -> dict[tuple[str, str], str]:
    """PTX of every kernel for every signature in ``KERNEL_SIGNATURES``, for compute capability ``cc``.

    Needs NVVM and NVRTC (``pip install 'fastsgd[cuda-ptx]'``) but no GPU or driver.
    """
    module = sys.modules[__name__]
    ptx = {}
    for name, signatures in KERNEL_SIGNATURES.items():
        for signature in signatures:
            ptx[name, signature], _ = cuda.compile_ptx(getattr(module, name).py_func, signature, cc=cc)
    return ptx


# ------------------------------------------------------------ the backend
def _device_array_type():
    """The class of Numba's device arrays (the simulator's stand-in when simulated)."""
    if SIMULATED:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray


DeviceArray = _device_array_type()


def is_device_array(x) -> bool:
    """Whether ``x`` is a Numba CUDA device array."""
    return isinstance(x, DeviceArray)


def _span(x) -> tuple[int, int]:
    """[first byte, past the last byte) of a C-contiguous device array."""
    start = x.__cuda_array_interface__["data"][0]
    return start, start + x.size * x.dtype.itemsize


def _overlap(a, b) -> bool:
    """Whether device arrays ``a`` and ``b`` may share memory."""
    if SIMULATED:
        return np.may_share_memory(a._ary, b._ary)
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def unavailable_reason() -> str | None:
    """Why no CUDA device can be used here, or None when one can (or the simulator is on)."""
    if SIMULATED or cuda.is_available():
        return None
    try:
        cuda.current_context()
    except Exception as exc:  # the driver's own words: no library, no device, too old
        text = " ".join(str(exc).split()).rstrip(" :")
        return f"no usable CUDA GPU: {text}" if text else f"no usable CUDA GPU ({type(exc).__name__})"
    return "no usable CUDA GPU was found"


class CudaBackend(Backend):
    """The contract's kernels on a CUDA GPU; arrays are Numba device arrays.

    Validation is the contract's, done on the device array's metadata (shape,
    dtype, contiguity) without a transfer.  The value checks need the device:
    the NaN/Inf scan (skipped in the trainer's loop) and the label-range and
    0/1 target checks (always on: a bad label would index out of bounds) each
    run a small kernel and read back one number.
    """

    # ----------------------------------------------------------- arrays
    def asarray(self, x, dtype=np.float32):
        """``x`` as a C-contiguous device array of ``dtype``: a device array already so
        is returned as is, a GPU array of another library (CuPy, PyTorch: anything
        with ``__cuda_array_interface__``) is wrapped without a copy when it fits,
        anything else is copied to the device (once)."""
        dtype = np.dtype(dtype)
        if not SIMULATED and not is_device_array(x) and hasattr(x, "__cuda_array_interface__"):
            x = cuda.as_cuda_array(x)
        if is_device_array(x):
            if x.dtype == dtype and x.is_c_contiguous():
                return x
            x = x.copy_to_host()
        return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))

    def to_numpy(self, x) -> np.ndarray:
        """A NumPy copy of device array ``x`` (NumPy arrays are returned as they are)."""
        return x.copy_to_host() if is_device_array(x) else np.asarray(x)

    def empty(self, shape, dtype=np.float32):
        """An uninitialised device array."""
        return cuda.device_array(shape, dtype=np.dtype(dtype))

    def zeros(self, shape, dtype=np.float32):
        """A zero-filled device array."""
        return cuda.to_device(np.zeros(shape, dtype=np.dtype(dtype)))

    def take_rows(self, src, idx, out):
        """``out[r] = src[idx[r]]``: gather a batch on the device.

        src (N, F) or (N,) float32 or int64 device array; idx (R,) int64; out (R, F)
        or (R,) device array of src's dtype.  Indices outside [0, N) raise
        ``IndexError``; inside ``skip_value_checks`` they are not checked (the
        DataLoader's come from a permutation) and give zero rows instead.
        """
        src = self._array("src", src)
        idx = self._array("idx", idx)
        if src.ndim not in (1, 2):
            raise ValueError(f"src: expected a 1-D or 2-D array, got shape {tuple(src.shape)}")
        if idx.dtype != np.int64 or idx.ndim != 1:
            raise TypeError(f"idx: expected a 1-D int64 array, got {idx.dtype} of shape {tuple(idx.shape)}")
        out = self._out("out", out, (idx.shape[0], *src.shape[1:]), src.dtype, src, idx)
        if contract._check_values and idx.shape[0] and count_outside(idx, 0, src.shape[0]):
            raise IndexError(f"idx: expected indices in [0, {src.shape[0]})")
        if idx.shape[0] and src.size:
            take_rows(_rows(src), idx, _rows(out))
        return out

    # ------------------------------------------------------- validation
    def _array(self, name, x):
        """A device array: device arrays pass, C-contiguous NumPy arrays are copied over."""
        if is_device_array(x):
            return x
        if isinstance(x, np.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError(f"{name}: expected a C-contiguous array; pass np.ascontiguousarray({name})")
            return cuda.to_device(x)
        raise TypeError(f"{name}: expected a numpy.ndarray or a numba CUDA device array, "
                        f"got {type(x).__name__}")

    def _float(self, name, x, ndim=None, dtype=None, writable=False, check_values=True):
        """Check a float input (type, dtype, ndim, layout, non-empty, finite); return it on the device."""
        host = isinstance(x, np.ndarray)
        if host and writable:
            raise TypeError(f"{name}: expected a numba CUDA device array (it is updated in place), "
                            f"got a numpy.ndarray; move it with backend.asarray({name})")
        if not host and not is_device_array(x):
            raise TypeError(f"{name}: expected a numpy.ndarray or a numba CUDA device array, "
                            f"got {type(x).__name__}")
        if dtype is None:
            if x.dtype not in self.dtypes:
                allowed = " or ".join(str(d) for d in self.dtypes)
                raise TypeError(f"{name}: expected dtype {allowed}, got {x.dtype}"
                                f" (backend {self.name!r})")
        elif x.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} to match the other inputs, got {x.dtype}")
        if ndim is not None and x.ndim != ndim:
            raise ValueError(f"{name}: expected a {ndim}-D array, got shape {tuple(x.shape)}")
        if x.size == 0:
            raise ValueError(f"{name}: empty array (shape {tuple(x.shape)}); expected at least one element")
        if not (x.flags.c_contiguous if host else x.is_c_contiguous()):
            raise ValueError(f"{name}: expected a C-contiguous array; pass np.ascontiguousarray({name})")
        if check_values and contract._check_values:
            if host:
                super()._finite(name, x)
            else:
                self._finite(name, x)
        return cuda.to_device(x) if host else x

    def _finite(self, name, x):
        if not all_finite(x):
            raise ValueError(f"{name}: contains NaN or Inf; expected finite values")

    def _out(self, name, out, shape, dtype, *inputs):
        """Allocate ``out`` on the device or check the given one; it must not overlap ``inputs``."""
        shape = tuple(shape)
        if out is None:
            return self.empty(shape, dtype)
        if not is_device_array(out):
            got = "a numpy.ndarray" if isinstance(out, np.ndarray) else type(out).__name__
            raise TypeError(f"{name}: expected a numba CUDA device array (outputs are written on "
                            f"the device), got {got}; allocate it with backend.empty")
        if out.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype}, got {out.dtype}")
        if tuple(out.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {tuple(out.shape)}")
        if not out.is_c_contiguous():
            raise ValueError(f"{name}: expected a C-contiguous array")
        for x in inputs:
            if out.size and x.size and _overlap(out, x):
                raise ValueError(f"{name}: must not overlap an input of this kernel")
        return out

    def _binary_values(self, name, targets):
        if count_not_binary(targets):
            raise ValueError(f"{name}: expected every target to be 0 or 1")

    def _classes(self, zname, logits, lname, labels):
        """logits (B, C) floats and labels (B,) int64 in [0, C), both on the device."""
        logits = self._float(zname, logits, ndim=2)
        labels = self._array(lname, labels)
        if labels.dtype != np.int64:
            raise TypeError(f"{lname}: expected dtype int64, got {labels.dtype}")
        if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
            raise ValueError(f"{lname}: expected shape ({logits.shape[0]},) to match {zname}, "
                             f"got {tuple(labels.shape)}")
        if not labels.is_c_contiguous():
            raise ValueError(f"{lname}: expected a C-contiguous array")
        self._label_range(lname, labels, logits.shape[1])
        return logits, labels

    def _label_range(self, name, labels, n_classes):
        if count_outside(labels, 0, n_classes):
            host = labels.copy_to_host()  # only to name the offending values
            raise ValueError(f"{name}: labels must lie in [0, {n_classes}), "
                             f"got values from {host.min()} to {host.max()}")


def make_backend() -> CudaBackend:
    """The CUDA backend; ``ImportError`` with the reason when no device can be used."""
    reason = unavailable_reason()
    if reason:
        raise ImportError(reason)
    return CudaBackend("cuda", sys.modules[__name__], dtypes=(np.float32,))


__all__ = ["make_backend", "CudaBackend", "KERNEL_SIGNATURES", "DEVICE_ONLY_KERNELS",
           "compile_all_ptx", "kernels",
           "is_device_array", "SIMULATED", "TILE", "BLOCK", *contract.KERNELS]


# ------------------------------------------------------- fused training epoch
@cuda.jit
def _train_epoch_kernel(x, targets, order, bs, w1, b1, w2, b2, v_w1, v_b1, v_w2, v_b2,
                        h, dz, dh, g_w2, g_b2, lrs, momentum, weight_decay, binary, two_layers,
                        losses):
    """A whole epoch of SGD in one cooperative launch; grid syncs separate the phases.

    x (N, I), targets (N,) int64 (0/1 for binary), order (N,) the row order.
    Two layers: w1 (I, H), b1 (H,), w2 (H, O), b2 (O,); one layer: w1 (I, O),
    b1 (O,), w2/b2 unused.  v_* velocities shaped like their parameters;
    h, dh (bs, H) and dz (bs, O) scratch; g_w2 (H, O), g_b2 (O,) scratch;
    lrs (steps,) the rate of each step; losses (steps,) zeroed, filled here.
    Per step: [forward to h] sync [logits, loss, dz per row] sync
    [dh, layer-2 gradients] sync [update every parameter] sync.  Every phase is
    a grid-stride loop, so any grid size is correct.
    """
    grid = cuda.cg.this_grid()
    tid = cuda.grid(1)
    stride = cuda.gridsize(1)
    N, I = x.shape
    H = w1.shape[1]
    O = w2.shape[1] if two_layers else H
    steps = (N + bs - 1) // bs
    for s in range(steps):
        start = s * bs
        B = min(bs, N - start)
        lr = lrs[s]
        if two_layers:  # h = x_batch @ w1 + b1 (pre-activation, kept for the ReLU mask)
            for idx in range(tid, B * H, stride):
                r, j = idx // H, idx % H
                row = order[start + r]
                acc = b1[j]
                for k in range(I):
                    acc += x[row, k] * w1[k, j]
                h[r, j] = acc
            grid.sync()
        for r in range(tid, B, stride):  # logits of one row, its loss and dz
            row = order[start + r]
            zmax = float32(-3.4e38)
            for o in range(O):
                if two_layers:
                    acc = b2[o]
                    for j in range(H):
                        acc += max(h[r, j], float32(0.0)) * w2[j, o]
                else:
                    acc = b1[o]
                    for k in range(I):
                        acc += x[row, k] * w1[k, o]
                dz[r, o] = acc
                zmax = max(zmax, acc)
            t = targets[row]
            if binary:
                p = dz[r, 0]
                e = math.exp(-abs(p))
                sig = 1.0 / (1.0 + e) if p >= 0 else e / (1.0 + e)
                loss = (1.0 - sig) if t == 1 else sig
                slope = sig * (1.0 - sig) / B
                dz[r, 0] = -slope if t == 1 else slope
            else:
                total = 0.0
                for o in range(O):
                    total += math.exp(dz[r, o] - zmax)
                lse = math.log(total) + zmax
                loss = lse - dz[r, t]
                for o in range(O):
                    dz[r, o] = math.exp(dz[r, o] - lse) / B
                dz[r, t] -= 1.0 / B
            cuda.atomic.add(losses, s, loss / B)
        grid.sync()
        if two_layers:  # dh = (dz @ w2.T) * (h > 0); layer-2 gradients before w2 changes
            for idx in range(tid, B * H, stride):
                r, j = idx // H, idx % H
                acc = float32(0.0)
                if h[r, j] > 0:
                    for o in range(O):
                        acc += dz[r, o] * w2[j, o]
                dh[r, j] = acc
            for idx in range(tid, H * O, stride):
                j, o = idx // O, idx % O
                acc = float32(0.0)
                for r in range(B):
                    acc += max(h[r, j], float32(0.0)) * dz[r, o]
                g_w2[j, o] = acc
            for o in range(tid, O, stride):
                acc = float32(0.0)
                for r in range(B):
                    acc += dz[r, o]
                g_b2[o] = acc
            grid.sync()
        # the updates: g = grad + wd * p;  v = momentum * v + g;  p -= lr * v
        for idx in range(tid, I * H, stride):
            i, j = idx // H, idx % H
            acc = float32(0.0)
            for r in range(B):
                acc += x[order[start + r], i] * (dh[r, j] if two_layers else dz[r, j])
            v = momentum * v_w1[i, j] + (acc + weight_decay * w1[i, j])
            v_w1[i, j] = v
            w1[i, j] -= lr * v
        for j in range(tid, H, stride):
            acc = float32(0.0)
            for r in range(B):
                acc += dh[r, j] if two_layers else dz[r, j]
            v = momentum * v_b1[j] + (acc + weight_decay * b1[j])
            v_b1[j] = v
            b1[j] -= lr * v
        if two_layers:
            for idx in range(tid, H * O, stride):
                j, o = idx // O, idx % O
                v = momentum * v_w2[j, o] + (g_w2[j, o] + weight_decay * w2[j, o])
                v_w2[j, o] = v
                w2[j, o] -= lr * v
            for o in range(tid, O, stride):
                v = momentum * v_b2[o] + (g_b2[o] + weight_decay * b2[o])
                v_b2[o] = v
                b2[o] -= lr * v
        grid.sync()


#: Threads per block of the fused epoch; its grid is one block per SM (all co-resident).
EPOCH_BLOCK = 16 if SIMULATED else 256


def _epoch_grid() -> int:
    """Blocks of the cooperative launch: the simulator runs cooperative grids of one block."""
    return 1 if SIMULATED else cuda.get_current_device().MULTIPROCESSOR_COUNT


def train_epoch(x, targets, order, bs, params, velocities, grads, lrs, momentum, weight_decay,
                binary, losses):
    """A fused epoch for ``fastsgd.fused`` in one kernel launch; returns the steps done.

    Device arrays: x, targets (int64), order, params/velocities/grads (lists of
    two or four).  Host arrays: lrs (steps,) float32, losses (steps,) filled
    here from the device at the end (one transfer per epoch).
    """
    two_layers = len(params) == 4
    unused2, unused1 = cuda.device_array((0, 0), np.float32), cuda.device_array(0, np.float32)
    w1, b1 = params[0], params[1]
    w2, b2 = (params[2], params[3]) if two_layers else (unused2, unused1)
    v_w1, v_b1 = velocities[0], velocities[1]
    v_w2, v_b2 = (velocities[2], velocities[3]) if two_layers else (unused2, unused1)
    g_w2, g_b2 = (grads[2], grads[3]) if two_layers else (unused2, unused1)
    H = w1.shape[1]
    O = w2.shape[1] if two_layers else H
    h = cuda.device_array((bs, H), np.float32)
    dh = cuda.device_array((bs, H), np.float32)
    dz = cuda.device_array((bs, O), np.float32)
    device_losses = cuda.to_device(np.zeros(len(lrs), np.float64))
    _train_epoch_kernel[_epoch_grid(), EPOCH_BLOCK](
        x, targets, order, bs, w1, b1, w2, b2, v_w1, v_b1, v_w2, v_b2, h, dz, dh, g_w2, g_b2,
        cuda.to_device(np.asarray(lrs, np.float32)), np.float32(momentum),
        np.float32(weight_decay), bool(binary), two_layers, device_losses)
    losses[:] = device_losses.copy_to_host()
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else len(losses)
