"""The SGD update (one thread per parameter) and the accuracies (one-block counts)."""
import numpy as np
from numba import cuda, float32, int32

from .device import reduction_kernel
from .launch import F1, F2, I1, N1, flat, kernel, launch_threads, mean_entries


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


def sgd_update(param, grad, lr, momentum, weight_decay, velocity):
    """In place: g = grad + wd * param; v = momentum * v + g (if velocity); param -= lr * g."""
    p, g = flat(param), flat(grad)
    if velocity is None:
        launch_threads(_sgd_kernel, p.shape[0], p, g, np.float32(lr), np.float32(weight_decay))
    else:
        launch_threads(_sgd_momentum_kernel, p.shape[0], p, g, flat(velocity), np.float32(lr),
                       np.float32(momentum), np.float32(weight_decay))


# ----------------------------------------------------------------- metrics
@reduction_kernel(f"void({F1}, {F1}, {N1})", int32(0))
def _binary_accuracy_kernel(preds, targets, b):
    """result[0] = #{b : (p_b > 0) == (t_b == 1)}; sigmoid(p) > 0.5 exactly when p > 0.   (B,) -> (1,)."""
    return int32(1) if (preds[b] > float32(0.0)) == (targets[b] == float32(1.0)) else int32(0)


@reduction_kernel(f"void({F2}, {I1}, {N1})", int32(0))
def _multiclass_accuracy_kernel(logits, labels, b):
    """result[0] = #{b : argmax(z_b) == label_b}, first maximum on ties.   (B, C), (B,) -> (1,)."""
    best = 0
    for c in range(1, logits.shape[1]):
        if logits[b, c] > logits[b, best]:
            best = c
    return int32(1) if best == labels[b] else int32(0)


binary_accuracy, multiclass_accuracy = mean_entries(
    _binary_accuracy_kernel, _multiclass_accuracy_kernel, dtype=np.int32)
