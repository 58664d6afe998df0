"""Losses forward (one-block reductions to one number) and backward (one thread per element or row).

A loss forward reduces a batch in a single block of BLOCK threads: thread t takes
rows t, t + BLOCK, ..., then ``block_sum`` adds the partial results and thread 0
writes result[0].  The launcher copies that one number back (the only
device-to-host transfer) and divides by the batch.
"""
import math

from numba import cuda, float32

from .device import block_sum, row_max_sum_exp, sigmoid
from .launch import BLOCK, F1, F2, I1, R1, ceil_div, kernel, launch_elementwise, one_block


@kernel(f"void({F1}, {F1}, {R1})")
def _mnist_loss_forward_kernel(preds, targets, result):
    """result[0] = sum_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   (B,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for b in range(t, preds.shape[0], BLOCK):
        s = sigmoid(preds[b])
        acc += (float32(1.0) - s) if targets[b] == float32(1.0) else s
    block_sum(partial, t, acc, result)


@kernel(f"void({F1}, {F1}, {F1})")
def _mnist_loss_backward_kernel(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    b = cuda.grid(1)
    B = preds.shape[0]
    if b < B:
        s = sigmoid(preds[b])
        slope = s * (float32(1.0) - s) / float32(B)
        dpreds[b] = -slope if targets[b] == float32(1.0) else slope


@kernel(f"void({F2}, {I1}, {R1})")
def _cross_entropy_forward_kernel(logits, labels, result):
    """result[0] = sum_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) -> (1,).

    Each row is shifted by its maximum before exp, so nothing overflows.
    """
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    B, C = logits.shape
    acc = float32(0.0)
    for b in range(t, B, BLOCK):
        m, total = row_max_sum_exp(logits[b], 0, C)
        acc += math.log(total) + m - logits[b, labels[b]]
    block_sum(partial, t, acc, result)


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


@kernel(f"void({F1}, {F1}, {R1})")
def _mse_forward_kernel(preds, targets, result):
    """result[0] = sum_i (p_i - t_i)^2.   preds, targets (n,) -> (1,)."""
    partial = cuda.shared.array(BLOCK, float32)
    t = cuda.threadIdx.x
    acc = float32(0.0)
    for i in range(t, preds.shape[0], BLOCK):
        e = preds[i] - targets[i]
        acc += e * e
    block_sum(partial, t, acc, result)


@kernel(f"void({F1}, {F1}, {F1})")
def _mse_backward_kernel(preds, targets, dpreds):
    """dpreds_i = 2 (p_i - t_i) / n.   (n,) -> (n,)."""
    i = cuda.grid(1)
    n = preds.shape[0]
    if i < n:
        dpreds[i] = float32(2.0) * (preds[i] - targets[i]) / float32(n)



def mnist_loss_forward(preds, targets):
    """mean_b where(t_b == 1, 1 - s_b, s_b), s = sigmoid(preds).   preds, targets (B,)."""
    return float(one_block(_mnist_loss_forward_kernel, preds, targets)) / preds.shape[0]


def mnist_loss_backward(preds, targets, dpreds):
    """dpreds_b = where(t_b == 1, -1, 1) * s_b * (1 - s_b) / B.   (B,) -> (B,)."""
    _mnist_loss_backward_kernel[ceil_div(preds.shape[0], BLOCK), BLOCK](preds, targets, dpreds)


def cross_entropy_forward(logits, labels):
    """mean_b (logsumexp(z_b) - z_b[label_b]).   logits (B, C), labels (B,) int64."""
    return float(one_block(_cross_entropy_forward_kernel, logits, labels)) / logits.shape[0]


def cross_entropy_backward(logits, labels, dlogits):
    """dlogits = (softmax(z) - onehot(labels)) / B.   (B, C) -> (B, C)."""
    _cross_entropy_backward_kernel[ceil_div(logits.shape[0], BLOCK), BLOCK](logits, labels, dlogits)


def mse_forward(preds, targets):
    """mean_i (p_i - t_i)^2.   preds, targets (n,): every element of a (B,) or (B, O) batch."""
    return float(one_block(_mse_forward_kernel, preds, targets)) / preds.shape[0]


def mse_backward(preds, targets, dpreds):
    """dpreds_i = 2 (p_i - t_i) / n.   (n,) -> (n,)."""
    launch_elementwise(_mse_backward_kernel, preds, targets, dpreds)

