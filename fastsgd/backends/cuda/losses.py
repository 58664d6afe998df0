"""Losses forward (one-block reductions to one number) and backward (one thread per element or row).

A loss forward reduces a batch in a single block of BLOCK threads: thread t takes
rows t, t + BLOCK, ..., of a per-row loss (``reduction_kernel``), and thread 0
writes the total to result[0].  The launcher copies that one number back (the only
device-to-host transfer) and divides by the batch.
"""
import math

from numba import cuda, float32

from .device import elementwise_kernel, reduction_kernel, row_max_sum_exp, sigmoid
from .launch import F1, F2, I1, R1, elementwise_entries, kernel, mean_entries, rows_entries


@reduction_kernel(f"void({F1}, {F1}, {R1})", float32(0.0))
def _mnist_loss_forward_kernel(preds, targets, b):
    """result[0] = sum_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   (B,) -> (1,)."""
    s = sigmoid(preds[b])
    return (float32(1.0) - s) if targets[b] == float32(1.0) else s


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _mnist_loss_backward_kernel(preds, targets, b):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    s = sigmoid(preds[b])
    slope = s * (float32(1.0) - s) / float32(preds.shape[0])
    return -slope if targets[b] == float32(1.0) else slope


@reduction_kernel(f"void({F2}, {I1}, {R1})", float32(0.0))
def _cross_entropy_forward_kernel(logits, labels, b):
    """result[0] = sum_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) -> (1,).

    Each row is shifted by its maximum before exp, so nothing overflows.
    """
    m, total = row_max_sum_exp(logits[b], 0, logits.shape[1])
    return math.log(total) + m - logits[b, labels[b]]


@kernel(f"void({F2}, {I1}, {F2})")
def _cross_entropy_backward_kernel(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B, one thread per row.   (B, C) -> (B, C)."""
    b = cuda.grid(1)
    B, C = logits.shape
    if b < B:
        m, total = row_max_sum_exp(logits[b], 0, C)
        scale = float32(1.0) / (total * float32(B))
        for c in range(C):
            dlogits[b, c] = math.exp(logits[b, c] - m) * scale
        dlogits[b, labels[b]] -= float32(1.0) / float32(B)


@reduction_kernel(f"void({F1}, {F1}, {R1})", float32(0.0))
def _mse_forward_kernel(preds, targets, i):
    """result[0] = sum_i (p_i - t_i)^2.   preds, targets (n,) -> (1,)."""
    e = preds[i] - targets[i]
    return e * e


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _mse_backward_kernel(preds, targets, i):
    """dpreds_i = 2 (p_i - t_i) / n.   (n,) -> (n,)."""
    return float32(2.0) * (preds[i] - targets[i]) / float32(preds.shape[0])


#: The contract's entries of the losses, by name.
ENTRIES = {entry.__name__: entry for entry in (
    *mean_entries(_mnist_loss_forward_kernel, _cross_entropy_forward_kernel, _mse_forward_kernel),
    *elementwise_entries(_mnist_loss_backward_kernel, _mse_backward_kernel),
    *rows_entries(_cross_entropy_backward_kernel))}
