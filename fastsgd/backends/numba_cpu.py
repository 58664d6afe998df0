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

#: rows of ``a`` handled together in one pass over ``b`` (reuses each loaded row of b).
ROW_BLOCK = 4


# ------------------------------------------------------------------ matmul
@njit(**_MATMUL)
def _accumulate_rows(a_t, b, out, transposed):
    """out = A @ b where A is ``a_t`` (M, K), or its transpose when ``transposed``.

    a_t (M, K) or (K, M), b (K, N) -> out (M, N).  Rows of out are split over
    threads in blocks of ROW_BLOCK; each block streams b once, row by row.
    """
    if transposed:
        K, M = a_t.shape
    else:
        M, K = a_t.shape
    N = b.shape[1]
    n_blocks = (M + ROW_BLOCK - 1) // ROW_BLOCK
    for blk in prange(n_blocks):
        i0 = blk * ROW_BLOCK
        i1 = min(i0 + ROW_BLOCK, M)
        for i in range(i0, i1):
            for j in range(N):
                out[i, j] = np.float32(0.0)
        for k in range(K):
            for i in range(i0, i1):
                aik = a_t[k, i] if transposed else a_t[i, k]
                if aik != 0:
                    for j in range(N):
                        out[i, j] += aik * b[k, j]


def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    _accumulate_rows(a, b, out, False)


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
    _accumulate_rows(x, dy, dw, True)


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
    _accumulate_rows(x, w, out, False)
    _add_bias(out, b)


def linear_backward(x, w, dy, dx, dw, db):
    """dx = dy @ w.T (skipped when dx is None), dw = x.T @ dy, db = dy.sum(0)."""
    if dx is not None:
        matmul_backward_input(dy, w, dx)
    _accumulate_rows(x, dy, dw, True)
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
