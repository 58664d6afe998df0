"""The reference backend: the clearest NumPy for every kernel of the contract.

Every other backend is tested against this module, and this module is tested
against central finite differences.  Each function writes its result into the
preallocated output(s) passed last (see ``contract.py`` for the dimension letters
B, I, O, C and the conventions).  Arguments arrive validated by
``contract.Backend``; float32 or float64.
"""
import math

import numpy as np

from . import program as prog


# ------------------------------------------------------------------ matmul
def matmul(a, b, out):
    """out = a @ b.   a (M, K), b (K, N) -> out (M, N)."""
    np.matmul(a, b, out=out)


def matmul_backward_input(dy, w, dx):
    """dx = dy @ w.T   dy (B, O), w (I, O) -> dx (B, I).   (w.T is a view, not a copy.)"""
    np.matmul(dy, w.T, out=dx)


def matmul_backward_weight(x, dy, dw):
    """dw = x.T @ dy   x (B, I), dy (B, O) -> dw (I, O)."""
    np.matmul(x.T, dy, out=dw)


def bias_backward(dy, db):
    """db[o] = sum_b dy[b, o]   dy (B, O) -> db (O,)."""
    np.sum(dy, axis=0, out=db)


# ------------------------------------------------------------------ linear
def linear_forward(x, w, b, out):
    """out = x @ w + b   x (B, I), w (I, O), b (O,) -> out (B, O)."""
    np.matmul(x, w, out=out)
    out += b


def linear_backward(x, w, dy, dx, dw, db):
    """Gradients of y = x @ w + b given dy = dL/dy (B, O).

    dx = dy @ w.T (B, I), skipped when dx is None;  dw = x.T @ dy (I, O);
    db = dy.sum(0) (O,).
    """
    if dx is not None:
        matmul_backward_input(dy, w, dx)
    matmul_backward_weight(x, dy, dw)
    bias_backward(dy, db)


# ------------------------------------------------------------- activations
def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), any shape.

    Computed as exp(min(x, 0)) / (1 + exp(-|x|)), which never overflows.
    """
    e = np.exp(-np.abs(x))
    np.divide(np.where(x >= 0, 1.0, e), 1.0 + e, out=out)


def sigmoid_backward(y, dy, dx):
    """dx = dy * y * (1 - y), where y = sigmoid(x) is the forward output."""
    np.multiply(dy, y * (1 - y), out=dx)


def relu_forward(x, out):
    """out = max(x, 0), any shape."""
    np.maximum(x, 0, out=out)


def relu_backward(x, dy, dx):
    """dx = dy where x > 0, else 0.   x is the forward input."""
    np.multiply(dy, x > 0, out=dx)


def tanh_forward(x, out):
    """out = tanh(x), any shape."""
    np.tanh(x, out=out)


def tanh_backward(y, dy, dx):
    """dx = dy * (1 - y**2), where y = tanh(x) is the forward output."""
    np.multiply(dy, 1 - y * y, out=dx)


# ------------------------------------------------------------------ losses
def _sigmoid(x):
    out = np.empty_like(x)
    sigmoid_forward(x, out)
    return out


def mnist_loss_forward(preds, targets):
    """L = mean_b where(t_b == 1, 1 - s_b, s_b),  s = sigmoid(preds).   preds, targets (B,)."""
    s = _sigmoid(preds)
    return np.where(targets == 1, 1 - s, s).mean()


def mnist_loss_backward(preds, targets, dpreds):
    """dL/dp_b = where(t_b == 1, -1, +1) * s_b * (1 - s_b) / B.   (B,) -> dpreds (B,)."""
    s = _sigmoid(preds)
    slope = s * (1 - s) / len(preds)
    np.copyto(dpreds, np.where(targets == 1, -slope, slope))


def _log_softmax(logits):
    """log softmax along axis 1, shifted by the row max so exp never overflows."""
    z = logits - logits.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy_forward(logits, labels):
    """L = mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int."""
    rows = np.arange(len(labels))
    return -_log_softmax(logits)[rows, labels].mean()


def cross_entropy_backward(logits, labels, dlogits):
    """dL/dz = (softmax(z) - onehot(labels)) / B.   (B, C) -> dlogits (B, C)."""
    rows = np.arange(len(labels))
    p = np.exp(_log_softmax(logits))
    p[rows, labels] -= 1
    np.divide(p, len(labels), out=dlogits)


def mse_forward(preds, targets):
    """L = mean_n (p_n - t_n)^2.   preds, targets (n,): every element of a (B,) or (B, O) batch."""
    return np.mean((preds - targets) ** 2)


def mse_backward(preds, targets, dpreds):
    """dL/dp_n = 2 (p_n - t_n) / n.   (n,) -> dpreds (n,)."""
    np.multiply(preds - targets, 2 / preds.size, out=dpreds)


# --------------------------------------------------------------- optimizer
def sgd_update(param, grad, lr, momentum, weight_decay, velocity):
    """In place:  g = grad + wd * param;  v = momentum * v + g (if velocity);  param -= lr * g.

    velocity is None when momentum == 0.  Any shape; all arrays alike.
    """
    g = grad + weight_decay * param
    if velocity is not None:
        velocity *= momentum
        velocity += g
        g = velocity
    param -= lr * g


# ----------------------------------------------------------------- metrics
def binary_accuracy(preds, targets):
    """mean((sigmoid(p) > 0.5) == (t == 1)); sigmoid(p) > 0.5 exactly when p > 0.   (B,)."""
    return ((preds > 0) == (targets == 1)).mean()


def multiclass_accuracy(logits, labels):
    """mean(argmax(z_b) == label_b), first maximum on ties.   logits (B, C), labels (B,)."""
    return (logits.argmax(axis=1) == labels).mean()


# ------------------------------------------------------ fused training epoch
def _layer_views(layers, params, grads):
    """[(w, b, grad w, grad b) or None] per layer: views into the flat blocks."""
    views = []
    for kind, n_in, n_out, at in layers.tolist():
        if kind != prog.LINEAR:
            views.append(None)
            continue
        w_end = at + n_in * n_out
        views.append((params[at:w_end].reshape(n_in, n_out), params[w_end:w_end + n_out],
                      grads[at:w_end].reshape(n_in, n_out), grads[w_end:w_end + n_out]))
    return views


def _loss_and_grad(loss_kind, z, targets, dz):
    """Mean loss of the output z (B, O) and dz = dL/dz (B, O), by the loss's record:
    labels (B,) as they are, other targets (B, O) flattened with z and dz."""
    kind = prog.LOSSES[loss_kind]
    if kind.targets != "labels":
        z, targets, dz = z.reshape(-1), targets.reshape(-1), dz.reshape(-1)
    globals()[kind.backward](z, targets, dz)
    return globals()[kind.forward](z, targets)


def layer_forward(kind, x, out):
    """out = layer ``kind``(x) for a parameter-free kind (its registry record's forward)."""
    globals()[prog.LAYERS[kind].forward](x, out)


def layer_backward(kind, x, y, dy, dx):
    """dx from dy for a parameter-free ``kind``: its backward reads x or y, as recorded."""
    record = prog.LAYERS[kind]
    globals()[record.backward](x if record.saves == "x" else y, dy, dx)


def train_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads, velocities,
                momentum, weight_decay, losses):
    """One epoch of SGD over a layer program, as a plain loop over the kernels above.

    layers (L, 4) the program (``program.py``), params / grads / velocities (P,)
    the flat blocks (velocities None when momentum is 0); x (N, I); targets (N, O)
    floats, or labels (N,) for a "labels" loss; order (R,) rows of x, R
    of them in the steps; lrs, losses (steps,), steps = ceil(R / bs).  Per step: gather,
    forward, loss, backward, one update of the block; each layer and the loss reach their
    kernels through the registry's record of their kind.
    Returns the steps done: all, or s when the loss of step s is not finite.
    """
    n, dtype = order.shape[0], params.dtype
    views = _layer_views(layers, params, grads)
    first_linear = int(np.flatnonzero(layers[:, prog.KIND] == prog.LINEAR)[0])
    steps = -(-n // bs)
    for s in range(steps):
        rows = order[s * bs:(s + 1) * bs]
        a = [np.ascontiguousarray(x[rows])]
        for l, (kind, n_in, n_out, _) in enumerate(layers.tolist()):
            out = np.empty((len(rows), n_out), dtype)
            if kind == prog.LINEAR:
                linear_forward(a[l], views[l][0], views[l][1], out)
            else:
                layer_forward(kind, a[l], out)
            a.append(out)
        d = np.empty_like(a[-1])
        losses[s] = _loss_and_grad(loss_kind, a[-1], targets[rows], d)
        if not math.isfinite(losses[s]):
            return s
        for l in range(len(layers) - 1, first_linear - 1, -1):
            kind = layers[l, prog.KIND]
            dx = np.empty_like(a[l]) if l > first_linear else None
            if kind == prog.LINEAR:
                w, _, gw, gb = views[l]
                linear_backward(a[l], w, d, dx, gw, gb)
            else:
                layer_backward(kind, a[l], a[l + 1], d, dx)
            d = dx
        sgd_update(params, grads, lrs[s], momentum, weight_decay, velocities)
    return steps
