"""The Numba backend: every kernel of the contract as ``@njit`` loops on the CPU.

No BLAS: the matmuls are written out here.  Each function writes into the
preallocated output(s) passed last; arguments arrive validated by
``contract.Backend`` (C-contiguous float32, shapes checked, labels in range).
Dimension letters as in ``contract.py``.

``parallel=True`` is used only on the matmul family, where threads pay at the
training shapes; ``fastmath=True`` where it lets LLVM vectorise a reduction.
"""
import math

import numba
import numpy as np
from numba import njit, prange

_MATMUL = dict(cache=True, parallel=True, fastmath=True)
_ELEMENTWISE = dict(cache=True, fastmath=True)

#: Register blocking of the matmuls: ROWS rows of ``out`` are updated together from
#: DEPTH rows of ``b`` at a time, so each loaded vector of b feeds ROWS * DEPTH
#: multiply-adds and each row of out is loaded and stored once per DEPTH steps of k.
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
    for k in range(k_main, K):
        for r in range(ROWS):
            ark = _a(a, i + r, k, transposed)
            for j in range(N):
                out[i + r, j] += ark * b[k, j]


@njit(inline="always")
def _one_row(a, b, out, i, transposed):
    """out[i] = A[i] @ b.   A (M, K), b (K, N), out (M, N)."""
    K, N = b.shape
    for j in range(N):
        out[i, j] = np.float32(0.0)
    for k in range(K):
        aik = _a(a, i, k, transposed)
        for j in range(N):
            out[i, j] += aik * b[k, j]


@njit(**_MATMUL)
def _gemm(a, b, out, transposed):
    """out = A @ b where A is ``a`` (M, K), or ``a.T`` for ``a`` (K, M) when ``transposed``.

    b (K, N) -> out (M, N).  Blocks of ROWS rows are spread over the threads;
    the last M % ROWS rows are done one by one.
    """
    M = out.shape[0]
    n_blocks = M // ROWS
    for blk in prange(n_blocks):
        _rows_block(a, b, out, blk * ROWS, transposed)
    for i in range(n_blocks * ROWS, M):
        _one_row(a, b, out, i, transposed)


def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    _gemm(a, b, out, False)


@njit(**_MATMUL)
def matmul_backward_input(dy, w, dx):
    """dx = dy @ w.T.   dy (B, O), w (I, O) -> dx (B, I): dot products of rows."""
    B, O = dy.shape
    I = w.shape[0]
    for b in prange(B):
        for i in range(I):
            acc = np.float32(0.0)
            for o in range(O):
                acc += dy[b, o] * w[i, o]
            dx[b, i] = acc


def matmul_backward_weight(x, dy, dw):
    """dw = x.T @ dy.   x (B, I), dy (B, O) -> dw (I, O)."""
    _gemm(x, dy, dw, True)


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
    _gemm(x, w, out, False)
    _add_bias(out, b)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w.T (skipped when dx is None), dw = x.T @ dy, db = dy.sum(0)."""
    if dx is not None:
        matmul_backward_input(dy, w, dx)
    _gemm(x, dy, dw, True)
    bias_backward(dy, db)


# ------------------------------------------------------------- activations
@njit(**_ELEMENTWISE)
def _sigmoid_flat(x, out):
    """out = sigmoid(x) on flat arrays (n,), via exp(-|x|) so nothing overflows."""
    for n in range(x.size):
        e = math.exp(-abs(x[n]))
        r = 1.0 / (1.0 + e)
        out[n] = r if x[n] >= 0 else e * r


def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), any shape."""
    _sigmoid_flat(x.reshape(-1), out.reshape(-1))


@njit(**_ELEMENTWISE)
def _sigmoid_backward_flat(y, dy, dx):
    """dx = dy * y * (1 - y) on flat arrays (n,)."""
    for n in range(y.size):
        dx[n] = dy[n] * y[n] * (np.float32(1.0) - y[n])


def sigmoid_backward(y, dy, dx):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output; any shape."""
    _sigmoid_backward_flat(y.reshape(-1), dy.reshape(-1), dx.reshape(-1))


@njit(**_ELEMENTWISE)
def _relu_flat(x, out):
    """out = max(x, 0) on flat arrays (n,)."""
    for n in range(x.size):
        out[n] = x[n] if x[n] > 0 else np.float32(0.0)


def relu_forward(x, out):
    """out = max(x, 0), any shape."""
    _relu_flat(x.reshape(-1), out.reshape(-1))


@njit(**_ELEMENTWISE)
def _relu_backward_flat(x, dy, dx):
    """dx = dy where x > 0 else 0, on flat arrays (n,)."""
    for n in range(x.size):
        dx[n] = dy[n] if x[n] > 0 else np.float32(0.0)


def relu_backward(x, dy, dx):
    """dx = dy * (x > 0), x the forward input; any shape."""
    _relu_backward_flat(x.reshape(-1), dy.reshape(-1), dx.reshape(-1))


# ------------------------------------------------------------------ losses
@njit(cache=True)
def _sigmoid(p):
    e = math.exp(-abs(p))
    r = 1.0 / (1.0 + e)
    return r if p >= 0 else e * r


@njit(cache=True)
def mnist_loss_forward(preds, targets):
    """mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,)."""
    total = 0.0
    for b in range(preds.size):
        s = _sigmoid(preds[b])
        total += (1.0 - s) if targets[b] == 1 else s
    return total / preds.size


@njit(cache=True)
def mnist_loss_backward(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    B = preds.size
    for b in range(B):
        s = _sigmoid(preds[b])
        slope = s * (1.0 - s) / B
        dpreds[b] = -slope if targets[b] == 1 else slope


@njit(cache=True)
def _logsumexp_row(z):
    """(max, log(sum(exp(z - max)))) of one row z (C,)."""
    m = z[0]
    for c in range(1, z.size):
        if z[c] > m:
            m = z[c]
    total = 0.0
    for c in range(z.size):
        total += math.exp(z[c] - m)
    return m, math.log(total)


@njit(cache=True)
def cross_entropy_forward(logits, labels):
    """mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int64."""
    B = logits.shape[0]
    total = 0.0
    for b in range(B):
        m, lse = _logsumexp_row(logits[b])
        total += lse + m - logits[b, labels[b]]
    return total / B


@njit(cache=True)
def cross_entropy_backward(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B.   (B, C) -> (B, C)."""
    B, C = logits.shape
    for b in range(B):
        m, lse = _logsumexp_row(logits[b])
        for c in range(C):
            dlogits[b, c] = math.exp(logits[b, c] - m - lse) / B
        dlogits[b, labels[b]] -= 1.0 / B


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
@njit(cache=True)
def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)): sigmoid(p) > 0.5 exactly when p > 0.   (B,)."""
    hits = 0
    for b in range(preds.size):
        hits += (preds[b] > 0) == (targets[b] == 1)
    return hits / preds.size


@njit(cache=True)
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
@njit(cache=True, parallel=True)
def _gather_rows(x, order, start, xb):
    """xb[r] = x[order[start + r]] for every row r of xb.   x (N, I), xb (B, I)."""
    for r in prange(xb.shape[0]):
        xb[r, :] = x[order[start + r], :]


@njit(cache=True)
def _loss_and_grad(z, t, binary, dz):
    """Mean loss of logits z (B, O) against targets t (B,), and dz = dL/dz (B, O)."""
    if binary:
        preds, dpreds = z[:, 0], dz[:, 0]
        loss = mnist_loss_forward(preds, t)
        mnist_loss_backward(preds, t, dpreds)
    else:
        loss = cross_entropy_forward(z, t)
        cross_entropy_backward(z, t, dz)
    return loss


@njit(cache=True)
def _sgd_step(p, g, v, lr, momentum, weight_decay):
    """The SGD update with velocity on a parameter of any shape, through flat views."""
    _sgd_momentum_flat(p.reshape(-1), g.reshape(-1), v.reshape(-1), lr, momentum, weight_decay)


@njit(cache=True)
def _train_epoch(x, targets, order, bs, w1, b1, w2, b2, v_w1, v_b1, v_w2, v_b2,
                 g_w1, g_b1, g_w2, g_b2, lrs, momentum, weight_decay, binary, two_layers, losses):
    """One pass of SGD over a Linear model or a Linear-ReLU-Linear MLP, in one call.

    x (N, I); targets (N,): 0/1 float32 (binary: mnist_loss) or int64 labels
    (cross-entropy); order (N,) the row order of this pass.  Two layers:
    w1 (I, H), b1 (H,), w2 (H, O), b2 (O,).  One layer (``two_layers`` false):
    w1 (I, O), b1 (O,), and w2/b2 are unused.  v_* are the velocities and g_*
    the gradient buffers, shaped like their parameters; lrs (steps,) is the
    learning rate of each step.  Fills losses (steps,) and returns the number
    of steps done (fewer when a loss is not finite).  The kernels run in the
    same order as in the layer-by-layer path.
    """
    N, I = x.shape
    H = w1.shape[1]
    O = w2.shape[1] if two_layers else H
    xb_all = np.empty((bs, I), np.float32)
    tb_all = np.empty(bs, targets.dtype)
    h_all = np.empty((bs, H), np.float32)
    a_all = np.empty((bs, H), np.float32)
    da_all = np.empty((bs, H), np.float32)
    z_all = np.empty((bs, O), np.float32)
    dz_all = np.empty((bs, O), np.float32)
    steps = (N + bs - 1) // bs
    for s in range(steps):
        start = s * bs
        B = min(bs, N - start)
        xb, tb = xb_all[:B], tb_all[:B]
        _gather_rows(x, order, start, xb)
        for r in range(B):
            tb[r] = targets[order[start + r]]
        z, dz = z_all[:B], dz_all[:B]
        h, a, da = h_all[:B], a_all[:B], da_all[:B]
        if two_layers:
            _gemm(xb, w1, h, False)
            _add_bias(h, b1)
            _relu_flat(h.reshape(-1), a.reshape(-1))
            _gemm(a, w2, z, False)
            _add_bias(z, b2)
        else:
            _gemm(xb, w1, z, False)
            _add_bias(z, b1)
        loss = _loss_and_grad(z, tb, binary, dz)
        losses[s] = loss
        if not math.isfinite(loss):
            return s
        lr = np.float32(lrs[s])
        if two_layers:
            _gemm(a, dz, g_w2, True)
            bias_backward(dz, g_b2)
            matmul_backward_input(dz, w2, da)
            _relu_backward_flat(h.reshape(-1), da.reshape(-1), da.reshape(-1))
            _gemm(xb, da, g_w1, True)
            bias_backward(da, g_b1)
            _sgd_step(w1, g_w1, v_w1, lr, momentum, weight_decay)
            _sgd_step(b1, g_b1, v_b1, lr, momentum, weight_decay)
            _sgd_step(w2, g_w2, v_w2, lr, momentum, weight_decay)
            _sgd_step(b2, g_b2, v_b2, lr, momentum, weight_decay)
        else:
            _gemm(xb, dz, g_w1, True)
            bias_backward(dz, g_b1)
            _sgd_step(w1, g_w1, v_w1, lr, momentum, weight_decay)
            _sgd_step(b1, g_b1, v_b1, lr, momentum, weight_decay)
    return steps


def train_epoch(x, targets, order, bs, params, velocities, grads, lrs, momentum, weight_decay,
                binary, losses):
    """A fused epoch for ``fastsgd.fused``: params, velocities, grads are lists of
    two (one Linear) or four (Linear-ReLU-Linear) arrays.  Returns the steps done."""
    two_layers = len(params) == 4
    if not two_layers:  # typed placeholders for the unused second layer
        unused = [np.empty((0, 0), np.float32), np.empty(0, np.float32)]
        params, velocities, grads = params + unused, velocities + unused, grads + unused
    return _train_epoch(x, targets, order, bs, *params, *velocities, *grads, lrs,
                        np.float32(momentum), np.float32(weight_decay), binary, two_layers, losses)
