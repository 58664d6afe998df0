"""Activations, losses, the SGD update and the metrics as ``@njit`` loops.   Letters as in
``contract.py``."""
import functools

import numba
import numpy as np
from numba import njit

from .. import numba_math
from .. import program as prog
from .config import _ELEMENTWISE, _PLAIN, _TRANSCENDENTAL


# ------------------------------------------------------------- activations
@njit(**_TRANSCENDENTAL)
def _sigmoid_flat(x, out):
    """out = 1 / (1 + exp(-x)) on flat arrays (n,), via exp(-|x|) so nothing overflows."""
    for n in range(x.size):
        out[n] = numba_math.sigmoid(x[n])


@njit(**_ELEMENTWISE)
def _sigmoid_backward_flat(y, dy, dx):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output; flat arrays (n,)."""
    for n in range(y.size):
        dx[n] = dy[n] * y[n] * (np.float32(1.0) - y[n])


@njit(**_ELEMENTWISE)
def _relu_flat(x, out):
    """out = max(x, 0) on flat arrays (n,)."""
    for n in range(x.size):
        out[n] = np.float32(0.0) if x[n] <= 0 else x[n]  # NaN stays NaN


@njit(**_ELEMENTWISE)
def _relu_backward_flat(x, dy, dx):
    """dx = dy where x > 0 else 0, x the forward input; flat arrays (n,)."""
    for n in range(x.size):
        dx[n] = dy[n] if x[n] > 0 else np.float32(0.0)


@njit(**_TRANSCENDENTAL)
def _tanh_flat(x, out):
    """out = tanh(x) on flat arrays (n,)."""
    for n in range(x.size):
        out[n] = numba_math.tanh(x[n])


@njit(**_ELEMENTWISE)
def _tanh_backward_flat(y, dy, dx):
    """dx = dy * (1 - y * y), y = tanh(x) the forward output; flat arrays (n,)."""
    for n in range(y.size):
        dx[n] = dy[n] * (np.float32(1.0) - y[n] * y[n])


def _any_shape(flat, name):
    """Kernel ``name``: ``flat`` (same parameters) on flat views of arrays of any shape."""
    def kernel(*arrays):
        flat(*[a.reshape(-1) for a in arrays])
    functools.update_wrapper(kernel, flat.py_func)
    kernel.__name__ = kernel.__qualname__ = name
    return kernel


sigmoid_forward, sigmoid_backward, relu_forward, relu_backward, tanh_forward, tanh_backward = (
    _any_shape(flat, name) for flat, name in zip(
        (_sigmoid_flat, _sigmoid_backward_flat, _relu_flat, _relu_backward_flat, _tanh_flat,
         _tanh_backward_flat), ("sigmoid_forward", "sigmoid_backward", "relu_forward",
                                "relu_backward", "tanh_forward", "tanh_backward")))


# ------------------------------------------------------------------ losses
#: A mean's terms are computed a block of MEAN_BLOCK at a time into a buffer (a loop
#: that vectorizes along the block, without reassociation, which numba_math's exp must
#: not have), and each block is added up by ``_sum_float64``, compiled apart with full
#: fastmath so that its sum vectorizes (LLVM keeps each instruction's flags when it
#: inlines it): 4,194,304 mnist_loss terms 6.5 -> 2.3 ms against 4.3 ms with 16 lanes
#: added in a loop of the caller.
MEAN_BLOCK = 1024


@njit(cache=True, fastmath=True, error_model="numpy")
def _sum_float64(x, n):
    """sum_i x[i] for i < n, in float64 (any order).   x (>= n,)."""
    total = 0.0
    for i in range(n):
        total += np.float64(x[i])
    return total


@njit(inline="always")
def _mnist_term(p, t):
    """1 - sigmoid(p) when t == 1, else sigmoid(p) (float32)."""
    s = numba_math.sigmoid(p)
    return numba_math.ONE - s if t == numba_math.ONE else s


@njit(**_TRANSCENDENTAL)
def mnist_loss_forward(preds, targets):
    """mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,)."""
    n = preds.size
    terms = np.empty(MEAN_BLOCK, np.float32)
    total = 0.0
    main = n - n % MEAN_BLOCK
    for i0 in range(0, main, MEAN_BLOCK):   # whole blocks: a loop of known length
        for j in range(MEAN_BLOCK):
            terms[j] = _mnist_term(preds[i0 + j], targets[i0 + j])
        total += _sum_float64(terms, MEAN_BLOCK)
    for j in range(n - main):
        terms[j] = _mnist_term(preds[main + j], targets[main + j])
    return (total + _sum_float64(terms, n - main)) / n


@njit(**_TRANSCENDENTAL)
def mnist_loss_backward(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    B = preds.size
    inv_b = np.float32(1.0 / B)
    for b in range(B):
        s = numba_math.sigmoid(preds[b])
        slope = s * (numba_math.ONE - s) * inv_b
        dpreds[b] = -slope if targets[b] == numba_math.ONE else slope


@njit(inline="always")
def _row_max(z):
    """max_c z[c] of one row z (C,)."""
    m = z[0]
    for c in range(1, z.size):
        if z[c] > m:
            m = z[c]
    return m


#: Rows of logits whose softmax pieces are computed together (``_softmax_block``).
SOFTMAX_ROWS = 64


@njit(inline="always")
def _softmax_block(z, b0, rows, e, m, s):
    """Softmax pieces of rows b0 .. b0 + rows of z (B, C), rows <= SOFTMAX_ROWS:
    m[r] = max_c z[b0 + r, c], e[r * C + c] = exp(z[b0 + r, c] - m[r]), s[r] = sum_c e.

    e (SOFTMAX_ROWS * C,) is contiguous, so the exps run as one flat loop that
    vectorizes however few the classes are; m, s (SOFTMAX_ROWS,).
    """
    C = z.shape[1]
    for r in range(rows):
        mr = _row_max(z[b0 + r])
        m[r] = mr
        for c in range(C):
            e[r * C + c] = z[b0 + r, c] - mr
    for i in range(rows * C):
        e[i] = numba_math.exp_nonpos(e[i])
    for r in range(rows):
        sr = np.float32(0.0)
        for c in range(C):
            sr += e[r * C + c]
        s[r] = sr


@njit(**_PLAIN)
def _check_labels(labels, B, C):
    """Labels index memory: one per row, each in [0, C) (a direct call gets no contract)."""
    if labels.size != B:
        raise ValueError("labels: expected one label per row of logits")
    for b in range(B):
        if labels[b] < 0 or labels[b] >= C:
            raise ValueError("labels: labels must lie in [0, C), C the columns of logits")


@njit(**_TRANSCENDENTAL)
def cross_entropy_forward(logits, labels):
    """mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int64."""
    B, C = logits.shape
    _check_labels(labels, B, C)
    e = np.empty(SOFTMAX_ROWS * C, np.float32)
    m, s = np.empty(SOFTMAX_ROWS, np.float32), np.empty(SOFTMAX_ROWS, np.float32)
    log_s = np.empty(SOFTMAX_ROWS, np.float32)
    terms = np.empty(SOFTMAX_ROWS, np.float64)
    total = 0.0
    for b0 in range(0, B, SOFTMAX_ROWS):
        rows = min(SOFTMAX_ROWS, B - b0)
        _softmax_block(logits, b0, rows, e, m, s)
        for r in range(rows):  # s >= 1 (the max's term is 1): one vector loop, no libm
            log_s[r] = numba_math.log_pos(s[r])
        for r in range(rows):  # z - m first: exact for equal huge logits
            terms[r] = np.float64(log_s[r]) - (
                np.float64(logits[b0 + r, labels[b0 + r]]) - np.float64(m[r]))
        total += _sum_float64(terms, rows)
    return total / B


@njit(**_TRANSCENDENTAL)
def cross_entropy_backward(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B.   (B, C) -> (B, C)."""
    B, C = logits.shape
    _check_labels(labels, B, C)
    inv_b = np.float32(1.0 / B)
    e = np.empty(SOFTMAX_ROWS * C, np.float32)
    m, s = np.empty(SOFTMAX_ROWS, np.float32), np.empty(SOFTMAX_ROWS, np.float32)
    for b0 in range(0, B, SOFTMAX_ROWS):
        rows = min(SOFTMAX_ROWS, B - b0)
        _softmax_block(logits, b0, rows, e, m, s)
        for r in range(rows):
            scale = inv_b / s[r]
            for c in range(C):
                dlogits[b0 + r, c] = e[r * C + c] * scale
            dlogits[b0 + r, labels[b0 + r]] -= inv_b


@njit(**_PLAIN)
def mse_forward(preds, targets):
    """mean_n (p_n - t_n)^2.   preds, targets (n,)."""
    total = 0.0
    for n in range(preds.size):
        diff = float(preds[n]) - float(targets[n])
        total += diff * diff
    return total / preds.size


@njit(**_PLAIN)
def mse_backward(preds, targets, dpreds):
    """dpreds_n = 2 (p_n - t_n) / n.   (n,) -> (n,)."""
    scale = np.float32(2.0 / preds.size)
    for n in range(preds.size):
        dpreds[n] = (preds[n] - targets[n]) * scale


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


@njit(inline="always")
def _step_slice(params, grads, velocities, at, end, lr, momentum, weight_decay, use_momentum):
    """The SGD step of params[at:end] (a layer's block, or rows of one), as of the whole
    block: the same functions, so the same bits.   params, grads, velocities flat (P,)
    (velocities unused without momentum)."""
    if use_momentum:
        _sgd_momentum_flat(params[at:end], grads[at:end], velocities[at:end], lr, momentum,
                           weight_decay)
    else:
        _sgd_flat(params[at:end], grads[at:end], lr, weight_decay)


def sgd_update(param, grad, lr, momentum, weight_decay, velocity):
    """In place: g = grad + wd * param; v = momentum * v + g (if velocity); param -= lr * g."""
    p, g = param.reshape(-1), grad.reshape(-1)
    lr, momentum, weight_decay = np.float32(lr), np.float32(momentum), np.float32(weight_decay)
    if velocity is None:
        _sgd_flat(p, g, lr, weight_decay)
    else:
        _sgd_momentum_flat(p, g, velocity.reshape(-1), lr, momentum, weight_decay)


# ----------------------------------------------------------------- metrics
@njit(**_PLAIN)
def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)): sigmoid(p) > 0.5 exactly when p > 0.   (B,)."""
    hits = 0
    for b in range(preds.size):
        hits += (preds[b] > 0) == (targets[b] == 1)
    return hits / preds.size


@njit(**_PLAIN)
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


# ------------------------------------------ the fused epoch's per-kind entries
@njit(**_PLAIN)
def _program_loss(loss_kind, z, t, labels, dz):
    """Mean loss of the output z (B, O) and dz = dL/dz (B, O); t (B, T) or labels (B,).
    The one per-kind entry of the losses: a new kind is one case here."""
    if loss_kind == prog.MNIST_LOSS:
        preds, dpreds, t0 = z[:, 0], dz[:, 0], t[:, 0]
        mnist_loss_backward(preds, t0, dpreds)
        return mnist_loss_forward(preds, t0)
    if loss_kind == prog.CROSS_ENTROPY:
        cross_entropy_backward(z, labels, dz)
        return cross_entropy_forward(z, labels)
    mse_backward(z.reshape(-1), t.reshape(-1), dz.reshape(-1))
    return mse_forward(z.reshape(-1), t.reshape(-1))


@njit(**_PLAIN)
def _layer_forward(kind, x, out):
    """out = the parameter-free layer ``kind`` of x, flat arrays (n,).  The one per-kind
    entry of the activations' forward: a new kind is one case here."""
    if kind == prog.RELU:
        _relu_flat(x, out)
    elif kind == prog.SIGMOID:
        _sigmoid_flat(x, out)
    elif kind == prog.TANH:
        _tanh_flat(x, out)


@njit(**_PLAIN)
def _layer_backward(kind, x, y, dy, dx):
    """dx from dy for the parameter-free layer ``kind``, reading its input x or output y
    as its record says; flat arrays (n,).  One case per kind."""
    if kind == prog.RELU:
        _relu_backward_flat(x, dy, dx)
    elif kind == prog.SIGMOID:
        _sigmoid_backward_flat(y, dy, dx)
    elif kind == prog.TANH:
        _tanh_backward_flat(y, dy, dx)


def threading_layer() -> str:
    """The Numba threading layer in use (after a parallel kernel has run)."""
    try:
        return numba.threading_layer()
    except ValueError:
        return "not yet initialised"


