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
C classes, M, K, N a generic matmul (M, K) @ (K, N), N samples, L layers,
P parameters.  ``n`` is a flat element count.

Layout of this module, top to bottom: launch constants; for each kernel family
(matmul, linear, activations, losses, optimizer, metrics, data movement, the
device-side checks) the ``@cuda.jit`` kernel(s) followed by the launcher(s) under
the contract's names; the layer program, a whole epoch in one cooperative kernel
that walks the table of ``program.py`` (``train_epoch``); ``KERNEL_SIGNATURES``
(every kernel with the argument types it is compiled for, used to build PTX ahead
of time); and ``CudaBackend``, the contract's front door with device-array
validation.

Pieces shared by several kernels (the stable sigmoid, the one-block sum, the grid
sync, the phases of the layer program) are ``@cuda.jit(device=True, inline=True)``
functions: Numba inlines them into each kernel before code generation, so every
kernel still compiles to PTX without a GPU (``numba.cuda.compile_ptx``).

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

from numba import cuda, float32, float64, int32  # noqa: E402

try:  # where numba-cuda keeps its settings (older releases share Numba's)
    from numba.cuda.core import config as _cuda_config
except ImportError:
    from numba.core import config as _cuda_config

from . import contract, program  # noqa: E402
from .program import CROSS_ENTROPY, LINEAR, MNIST_LOSS, MSE, RELU, SIGMOID  # noqa: E402
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
@cuda.jit(device=True, inline=True)
def _sigmoid(v):
    """1 / (1 + exp(-v)) via exp(-|v|), which never overflows: a float32 in [0, 1]."""
    e = math.exp(-abs(v))
    r = float32(1.0) / (float32(1.0) + e)
    return r if v >= float32(0.0) else e * r


@cuda.jit
def _sigmoid_forward_kernel(x, out):
    """out = sigmoid(x), finite for any finite x.   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = _sigmoid(x[i])


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


@cuda.jit
def _tanh_forward_kernel(x, out):
    """out = tanh(x); libdevice's tanhf saturates to +-1, never overflows.   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = math.tanh(x[i])


@cuda.jit
def _tanh_backward_kernel(y, dy, dx):
    """dx = dy * (1 - y * y), y = tanh(x) the forward output.   (n,)."""
    i = cuda.grid(1)
    if i < y.shape[0]:
        dx[i] = dy[i] * (float32(1.0) - y[i] * y[i])


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


def tanh_forward(x, out):
    """out = tanh(x), any shape."""
    _launch_elementwise(_tanh_forward_kernel, x, out)


def tanh_backward(y, dy, dx):
    """dx = dy * (1 - y**2), any shape."""
    _launch_elementwise(_tanh_backward_kernel, y, dy, dx)


# ------------------------------------------------------------------ losses
# The losses and accuracies reduce a batch to one number in a single block of
# BLOCK threads: thread t takes rows t, t + BLOCK, ..., then the BLOCK partial
# results are added pairwise in shared memory and thread 0 writes result[0].
# The launcher copies that one number back (the only device-to-host transfer).

@cuda.jit(device=True, inline=True)
def _block_sum(partial, t, value, result):
    """result[0] = the sum of ``value`` over the block's BLOCK threads (t the thread).

    Pairwise in ``partial``, a (BLOCK,) shared array of the result's dtype; every
    thread of the block must call it.
    """
    partial[t] = value
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
def _mnist_loss_forward_kernel(preds, targets, result):
    """result[0] = sum_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   (B,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for b in range(t, preds.shape[0], BLOCK):
        s = _sigmoid(preds[b])
        acc += (float32(1.0) - s) if targets[b] == float32(1.0) else s
    _block_sum(partial, t, acc, result)


@cuda.jit
def _mnist_loss_backward_kernel(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    b = cuda.grid(1)
    B = preds.shape[0]
    if b < B:
        s = _sigmoid(preds[b])
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
    _block_sum(partial, t, acc, result)


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


@cuda.jit
def _mse_forward_kernel(preds, targets, result):
    """result[0] = sum_i (p_i - t_i)^2.   preds, targets (n,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for i in range(t, preds.shape[0], BLOCK):
        e = preds[i] - targets[i]
        acc += e * e
    _block_sum(partial, t, acc, result)


@cuda.jit
def _mse_backward_kernel(preds, targets, dpreds):
    """dpreds_i = 2 (p_i - t_i) / n.   (n,) -> (n,)."""
    i = cuda.grid(1)
    n = preds.shape[0]
    if i < n:
        dpreds[i] = float32(2.0) * (preds[i] - targets[i]) / float32(n)


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


def mse_forward(preds, targets):
    """mean_i (p_i - t_i)^2.   preds, targets (n,): every element of a (B,) or (B, O) batch."""
    return float(_one_block(_mse_forward_kernel, preds, targets)) / preds.shape[0]


def mse_backward(preds, targets, dpreds):
    """dpreds_i = 2 (p_i - t_i) / n.   (n,) -> (n,)."""
    _launch_elementwise(_mse_backward_kernel, preds, targets, dpreds)


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
    _block_sum(partial, t, hits, result)


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
    _block_sum(partial, t, hits, result)


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
    _block_sum(partial, t, bad, result)


@cuda.jit
def _count_not_binary_kernel(targets, result):
    """result[0] = #{i : targets[i] not 0 and not 1}, in one block.   targets (n,) float32 -> (1,)."""
    partial = cuda.shared.array(BLOCK, int32)
    t = cuda.threadIdx.x
    bad = int32(0)
    for i in range(t, targets.shape[0], BLOCK):
        if targets[i] != float32(0.0) and targets[i] != float32(1.0):
            bad += int32(1)
    _block_sum(partial, t, bad, result)


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


# ------------------------------------------------------------ the layer program
# One epoch of SGD over a layer program (program.py) in one cooperative launch.
# The table is read on the device; every phase below is a grid-stride loop over
# its outputs, and a grid sync separates each phase from the next, so any grid
# size is correct.  Per step of B rows:
#
#   gather a[0] | forward layer 0 | ... | forward layer L-1 | loss, d[L] per row |
#   (all threads stop here if the step's loss is not finite) |
#   backward layer L-1 | ... | backward the first LINEAR | update the whole block
#
# The activations a[0..L] and their gradients d[0..L] live in two flat scratch
# arrays: a[l] is (B, W_l) row-major at acts[offsets[l]:], d[l] at the same
# offset of deltas, with room for bs rows each (W_0 = I, W_{l+1} = N_OUT of row l).

# cuda.cg.this_grid().sync() reaches the device runtime through device functions
# that numba-cuda compiles for the current GPU, so compile_ptx fails without a
# driver; the two intrinsics behind them, called directly, compile anywhere.
_cg_grid = _cg_sync = None
if not SIMULATED:
    try:
        from numba.cuda import cg as _cg
        _cg_grid, _cg_sync = _cg._this_grid, _cg._grid_group_sync
    except (ImportError, AttributeError):  # a numba-cuda that keeps them elsewhere: the public API
        _cg_grid = _cg_sync = None

#: Whether ``compile_ptx`` can build the grid-sync kernel without a driver.
_GRID_SYNC_OFFLINE = SIMULATED or _cg_sync is not None

if _cg_sync is None:
    @cuda.jit(device=True, inline=True)
    def _grid_sync():
        """Wait until every thread of the cooperative grid gets here."""
        cuda.cg.this_grid().sync()
else:
    @cuda.jit(device=True, inline=True)
    def _grid_sync():
        """Wait until every thread of the cooperative grid gets here."""
        _cg_sync(_cg_grid())


@cuda.jit(device=True, inline=True)
def _gather(x, order, start, B, acts, tid, stride):
    """a[0] = x[order[start:start + B]].   x (N, I) -> a[0] (B, I) at acts[0:]."""
    I = x.shape[1]
    for idx in range(tid, B * I, stride):
        r = idx // I
        acts[idx] = x[order[start + r], idx - r * I]


@cuda.jit(device=True, inline=True)
def _layer_forward(layers, l, B, params, acts, offsets, tid, stride):
    """a[l+1] = layer l of a[l].   a[l] (B, N_IN) -> a[l+1] (B, N_OUT).

    LINEAR: a[l] @ w + b with w (N_IN, N_OUT), b (N_OUT,) at params[PARAM:];
    an activation: elementwise (N_IN == N_OUT).
    """
    kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
    src, dst = offsets[l], offsets[l + 1]
    for idx in range(tid, B * n_out, stride):
        if kind == LINEAR:
            r = idx // n_out
            j = idx - r * n_out
            acc = params[at + n_in * n_out + j]
            for k in range(n_in):
                acc += acts[src + r * n_in + k] * params[at + k * n_out + j]
            acts[dst + idx] = acc
        else:
            v = acts[src + idx]
            if kind == RELU:
                acts[dst + idx] = v if v > float32(0.0) else float32(0.0)
            elif kind == SIGMOID:
                acts[dst + idx] = _sigmoid(v)
            else:
                acts[dst + idx] = math.tanh(v)


@cuda.jit(device=True, inline=True)
def _row_loss(loss_kind, z, O, scale, targets, labels, row, acts, deltas):
    """Loss of one output row z = a[L][r] (O,) at acts[z:], and dL/dz into deltas[z:].

    ``row`` is the sample's row in targets (N, O) / labels (N,); ``scale`` the
    divisor of the batch mean (B, or B * O for mse).  Returns the row's loss,
    not yet divided by ``scale``.
    """
    if loss_kind == MNIST_LOSS:  # O == 1
        s = _sigmoid(acts[z])
        slope = s * (float32(1.0) - s) / scale
        if targets[row, 0] == float32(1.0):
            deltas[z] = -slope
            return float32(1.0) - s
        deltas[z] = slope
        return s
    if loss_kind == CROSS_ENTROPY:  # shifted by the row max: exp never overflows
        label = labels[row]
        m = acts[z]
        for o in range(1, O):
            m = max(m, acts[z + o])
        total = float32(0.0)
        for o in range(O):
            total += math.exp(acts[z + o] - m)
        lse = math.log(total) + m
        for o in range(O):
            deltas[z + o] = math.exp(acts[z + o] - lse) / scale
        deltas[z + label] -= float32(1.0) / scale
        return lse - acts[z + label]
    loss = float32(0.0)  # MSE: targets shaped like the output
    for o in range(O):
        e = acts[z + o] - targets[row, o]
        loss += e * e
        deltas[z + o] = float32(2.0) * e / scale
    return loss


@cuda.jit(device=True, inline=True)
def _loss_phase(loss_kind, L, B, start, s, layers, targets, labels, order, acts, deltas, offsets,
                losses, tid, stride):
    """losses[s] += the batch's mean loss; d[L] = its gradient w.r.t. a[L] (B, O)."""
    O = layers[L - 1, 2]
    scale = float32(B * O) if loss_kind == MSE else float32(B)
    for r in range(tid, B, stride):
        z = offsets[L] + r * O
        loss = _row_loss(loss_kind, z, O, scale, targets, labels, order[start + r], acts, deltas)
        cuda.atomic.add(losses, s, float64(loss) / float64(scale))


@cuda.jit(device=True, inline=True)
def _layer_backward(layers, l, need_dx, B, params, grads, acts, deltas, offsets, tid, stride):
    """Gradients of layer l from d[l+1] (B, N_OUT).

    LINEAR: grad w = a[l].T @ d[l+1] (N_IN, N_OUT) and grad b = sum_rows d[l+1]
    (N_OUT,) into grads[PARAM:], and d[l] = d[l+1] @ w.T (B, N_IN) when
    ``need_dx``, all in one grid-stride loop; an activation: d[l] elementwise
    (ReLU from its input a[l], Sigmoid and Tanh from their output a[l+1]).
    """
    kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
    src, dst = offsets[l], offsets[l + 1]
    if kind == LINEAR:
        n_w = n_in * n_out
        total = n_w + n_out + (B * n_in if need_dx else 0)
        for idx in range(tid, total, stride):
            acc = float32(0.0)
            if idx < n_w:
                i = idx // n_out
                j = idx - i * n_out
                for r in range(B):
                    acc += acts[src + r * n_in + i] * deltas[dst + r * n_out + j]
                grads[at + idx] = acc
            elif idx < n_w + n_out:
                j = idx - n_w
                for r in range(B):
                    acc += deltas[dst + r * n_out + j]
                grads[at + idx] = acc
            else:
                e = idx - n_w - n_out
                r = e // n_in
                i = e - r * n_in
                for j in range(n_out):
                    acc += deltas[dst + r * n_out + j] * params[at + i * n_out + j]
                deltas[src + e] = acc
    else:
        for idx in range(tid, B * n_in, stride):
            dy = deltas[dst + idx]
            if kind == RELU:
                deltas[src + idx] = dy if acts[src + idx] > float32(0.0) else float32(0.0)
            elif kind == SIGMOID:
                y = acts[dst + idx]
                deltas[src + idx] = dy * (y * (float32(1.0) - y))
            else:
                y = acts[dst + idx]
                deltas[src + idx] = dy * (float32(1.0) - y * y)


@cuda.jit(device=True, inline=True)
def _sgd_step(params, grads, velocities, lr, momentum, weight_decay, tid, stride):
    """One SGD update of the whole block, as ``sgd_update``.   params, grads (P,); velocities (P,) or (0,)."""
    use_momentum = velocities.shape[0] > 0
    for i in range(tid, params.shape[0], stride):
        g = grads[i] + weight_decay * params[i]
        if use_momentum:
            g = momentum * velocities[i] + g
            velocities[i] = g
        params[i] -= lr * g


@cuda.jit
def _train_program_kernel(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum,
                          weight_decay, params, grads, velocities, acts, deltas, offsets, losses):
    """A whole epoch of SGD over a layer program; launch cooperatively (grid syncs).

    layers (L, 4) int64, the table of program.py; x (N, I); targets (N, O) float
    (mnist_loss, mse) or (0, 1), labels (N,) int64 (cross_entropy) or (0,);
    order (N,) the row order; lrs (steps,); params, grads (P,); velocities (P,),
    or (0,) without momentum; acts, deltas (bs * sum of widths,) scratch at
    offsets (L + 2,); losses (steps,) float64, zeroed, filled here.  Stops, every
    thread together, after the first step whose loss is not finite, before its
    update.
    """
    tid = cuda.grid(1)
    stride = cuda.gridsize(1)
    N = x.shape[0]
    L = layers.shape[0]
    first = 0  # the first LINEAR: nothing before it needs a gradient
    while layers[first, 0] != LINEAR:
        first += 1
    for s in range(losses.shape[0]):
        start = s * bs
        B = min(bs, N - start)
        # the previous step's update and this gather touch different memory: one sync covers both
        _gather(x, order, start, B, acts, tid, stride)
        _grid_sync()
        for l in range(L):
            _layer_forward(layers, l, B, params, acts, offsets, tid, stride)
            _grid_sync()
        _loss_phase(loss_kind, L, B, start, s, layers, targets, labels, order, acts, deltas,
                    offsets, losses, tid, stride)
        _grid_sync()
        if not math.isfinite(losses[s]):
            return
        for l in range(L - 1, first - 1, -1):
            _layer_backward(layers, l, l > first, B, params, grads, acts, deltas, offsets,
                            tid, stride)
            _grid_sync()
        _sgd_step(params, grads, velocities, lrs[s], momentum, weight_decay, tid, stride)


#: Threads per block of the program kernel; its grid is one block per SM (all co-resident).
EPOCH_BLOCK = 16 if SIMULATED else 256

_no_velocities = {}


def _epoch_grid() -> int:
    """Blocks of the cooperative launch: the simulator runs cooperative grids of one block."""
    return 1 if SIMULATED else cuda.get_current_device().MULTIPROCESSOR_COUNT


def _scratch_offsets(layers, bs: int) -> np.ndarray:
    """Offsets of a[0] .. a[L] in the scratch, then its length: bs rows of each width.   (L + 2,) int64."""
    return np.concatenate([[0], np.cumsum(program.widths(layers))]).astype(np.int64) * bs


def _empty_velocities():
    """A zero-length float32 device array: 'no momentum' for the program kernel."""
    if "v" not in _no_velocities:
        _no_velocities["v"] = cuda.device_array(0, np.float32)
    return _no_velocities["v"]


def train_epoch(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
                params, grads, velocities, losses):
    """One epoch of SGD over a layer program in one launch; returns the steps done.

    Arguments as ``contract.Backend.train_epoch`` passes them: layers (L, 4) and
    lrs (steps,) host arrays, copied over; x, targets, labels, order, params,
    grads, velocities (None without momentum) device arrays; losses (steps,) a
    host float64 array, filled from the device at the end (one transfer per
    epoch).  Returns ``steps``, or s when the loss of step s is not finite.
    """
    offsets = _scratch_offsets(layers, bs)
    acts = cuda.device_array(int(offsets[-1]), np.float32)
    deltas = cuda.device_array(int(offsets[-1]), np.float32)
    device_losses = cuda.to_device(np.zeros(losses.shape[0], np.float64))
    _train_program_kernel[_epoch_grid(), EPOCH_BLOCK](
        cuda.to_device(np.ascontiguousarray(layers, np.int64)), np.int64(loss_kind), x, targets,
        labels, order, np.int64(bs), cuda.to_device(np.ascontiguousarray(lrs, np.float32)),
        np.float32(momentum), np.float32(weight_decay), params, grads,
        _empty_velocities() if velocities is None else velocities, acts, deltas,
        cuda.to_device(offsets), device_losses)
    losses[:] = device_losses.copy_to_host()
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else losses.shape[0]


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
    "_tanh_forward_kernel": (f"void({_F1}, {_F1})",),
    "_tanh_backward_kernel": (f"void({_F1}, {_F1}, {_F1})",),
    "_mnist_loss_forward_kernel": (f"void({_F1}, {_F1}, {_R1})",),
    "_mnist_loss_backward_kernel": (f"void({_F1}, {_F1}, {_F1})",),
    "_cross_entropy_forward_kernel": (f"void({_F2}, {_I1}, {_R1})",),
    "_cross_entropy_backward_kernel": (f"void({_F2}, {_I1}, {_F2})",),
    "_mse_forward_kernel": (f"void({_F1}, {_F1}, {_R1})",),
    "_mse_backward_kernel": (f"void({_F1}, {_F1}, {_F1})",),
    "_sgd_kernel": (f"void({_F1}, {_F1}, float32, float32)",),
    "_sgd_momentum_kernel": (f"void({_F1}, {_F1}, {_F1}, float32, float32, float32)",),
    "_binary_accuracy_kernel": (f"void({_F1}, {_F1}, {_N1})",),
    "_multiclass_accuracy_kernel": (f"void({_F2}, {_I1}, {_N1})",),
    "_take_rows_kernel": (f"void({_F2}, {_I1}, {_F2})", f"void({_I2}, {_I1}, {_I2})"),
    "_count_outside_kernel": (f"void({_I1}, int64, int64, {_N1})",),
    "_count_not_binary_kernel": (f"void({_F1}, {_N1})",),
    "_flag_non_finite_kernel": (f"void({_F1}, {_N1})",),
    # layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
    # params, grads, velocities, acts, deltas, offsets, losses
    "_train_program_kernel": (f"void({_I2}, int64, {_F2}, {_F2}, {_I1}, {_I1}, int64, {_F1}, "
                              f"float32, float32, {_F1}, {_F1}, {_F1}, {_F1}, {_F1}, {_I1}, "
                              f"float64[::1])",),
}

#: Kernels that ``compile_ptx`` cannot build without a GPU, and why (they have no entry
#: in ``KERNEL_SIGNATURES``); the GPU check (``benchmarks/gpu_check.sh``) runs them.
DEVICE_ONLY_KERNELS: dict[str, str] = {}
if not _GRID_SYNC_OFFLINE:
    DEVICE_ONLY_KERNELS["_train_program_kernel"] = (
        "its grid sync goes through cuda.cg's device functions, which this numba-cuda "
        "compiles only with a driver present")
    del KERNEL_SIGNATURES["_train_program_kernel"]


def _is_kernel(obj) -> bool:
    """Whether ``obj`` is a ``@cuda.jit`` kernel (not a device function), on a device or simulated."""
    if type(obj).__name__ == "FakeCUDAKernel":
        return not obj._device
    return type(obj).__name__ == "CUDADispatcher" and not obj.targetoptions.get("device")


def kernels() -> dict:
    """Every ``@cuda.jit`` kernel defined in this module, by name."""
    return {name: obj for name, obj in vars(sys.modules[__name__]).items() if _is_kernel(obj)}


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
        if contract.value_checks_enabled() and idx.shape[0] and count_outside(idx, 0, src.shape[0]):
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
        if check_values and contract.value_checks_enabled():
            if host:
                super()._finite(name, x)
            else:
                self._finite(name, x)
        return cuda.to_device(x) if host else x

    def _finite(self, name, x):
        if not all_finite(x):
            raise ValueError(f"{name}: contains NaN or Inf; expected finite values")

    def _may_overlap(self, a, b) -> bool:
        return bool(a.size and b.size and _overlap(a, b))

    def _same_memory(self, a, b) -> bool:
        if SIMULATED:
            return (a._ary.__array_interface__["data"][0] == b._ary.__array_interface__["data"][0]
                    and a.size == b.size)
        return _span(a) == _span(b)

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
        if labels.size and count_outside(labels, 0, n_classes):
            host = labels.copy_to_host()  # only to name the offending values
            raise ValueError(f"{name}: labels must lie in [0, {n_classes}), "
                             f"got values from {host.min()} to {host.max()}")

    def _index_range(self, name, indices, high):
        """Every value of the int64 device ``indices`` lies in [0, high), counted on the device."""
        if indices.size and count_outside(indices, 0, high):
            host = indices.copy_to_host()  # only to name the offending values
            raise ValueError(f"{name}: indices must lie in [0, {high}), "
                             f"got values from {host.min()} to {host.max()}")


def make_backend() -> CudaBackend:
    """The CUDA backend; ``ImportError`` with the reason when no device can be used."""
    reason = unavailable_reason()
    if reason:
        raise ImportError(reason)
    return CudaBackend("cuda", sys.modules[__name__], dtypes=(np.float32,))


__all__ = ["make_backend", "CudaBackend", "KERNEL_SIGNATURES", "DEVICE_ONLY_KERNELS",
           "compile_all_ptx", "kernels",
           "is_device_array", "SIMULATED", "TILE", "BLOCK", "EPOCH_BLOCK", *contract.KERNELS,
           *contract.OPTIONAL_KERNELS]
