"""The SGD update (one thread per parameter) and the accuracies (one-block counts)."""
import numpy as np
from numba import cuda, float32, int32

from .device import block_sum
from .launch import BLOCK, F1, F2, I1, N1, ceil_div, flat, kernel, one_block


@kernel(f"void({F1}, {F1}, float32, float32)")
def _sgd_kernel(param, grad, lr, weight_decay):
    """param -= lr * (grad + wd * param).   (n,)."""
    i = cuda.grid(1)
    if i < param.shape[0]:
        param[i] -= lr * (grad[i] + weight_decay * param[i])


@kernel(f"void({F1}, {F1}, {F1}, float32, float32, float32)")
def _sgd_momentum_kernel(param, grad, velocity, lr, momentum, weight_decay):
    """velocity = momentum * velocity + (grad + wd * param);  param -= lr * velocity.   (n,)."""
    i = cuda.grid(1)
    if i < param.shape[0]:
        v = momentum * velocity[i] + (grad[i] + weight_decay * param[i])
        velocity[i] = v
        param[i] -= lr * v


def sgd_update(param, grad, velocity, lr, momentum, weight_decay):
    """In place: g = grad + wd * param; v = momentum * v + g (if velocity); param -= lr * g."""
    p, g = flat(param), flat(grad)
    blocks = ceil_div(p.shape[0], BLOCK)
    if velocity is None:
        _sgd_kernel[blocks, BLOCK](p, g, np.float32(lr), np.float32(weight_decay))
    else:
        _sgd_momentum_kernel[blocks, BLOCK](p, g, flat(velocity), np.float32(lr),
                                            np.float32(momentum), np.float32(weight_decay))


# ----------------------------------------------------------------- metrics
@kernel(f"void({F1}, {F1}, {N1})")
def _binary_accuracy_kernel(preds, targets, result):
    """result[0] = #{b : (p_b > 0) == (t_b == 1)}; sigmoid(p) > 0.5 exactly when p > 0.   (B,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, int32)
    t = cuda.threadIdx.x
    hits = int32(0)
    for b in range(t, preds.shape[0], BLOCK):
        if (preds[b] > float32(0.0)) == (targets[b] == float32(1.0)):
            hits += int32(1)
    block_sum(partial, t, hits, result)


@kernel(f"void({F2}, {I1}, {N1})")
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
    block_sum(partial, t, hits, result)


def binary_accuracy(preds, targets):
    """mean((p > 0) == (t == 1)).   preds, targets (B,)."""
    return int(one_block(_binary_accuracy_kernel, preds, targets, dtype=np.int32)) / preds.shape[0]


def multiclass_accuracy(logits, labels):
    """mean(argmax(z_b) == label_b).   logits (B, C), labels (B,) int64."""
    return int(one_block(_multiclass_accuracy_kernel, logits, labels, dtype=np.int32)) / logits.shape[0]

