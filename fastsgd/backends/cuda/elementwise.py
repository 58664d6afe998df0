"""Activations forward and backward: one thread per element of a flat view (``elementwise_kernel``)."""
import math

from numba import float32

from .device import elementwise_kernel, sigmoid
from .launch import F1, elementwise_entries


@elementwise_kernel(f"void({F1}, {F1})")
def _sigmoid_forward_kernel(x, i):
    """out = sigmoid(x), finite for any finite x.   x, out (n,)."""
    return sigmoid(x[i])


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _sigmoid_backward_kernel(y, dy, i):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output.   (n,)."""
    return dy[i] * y[i] * (float32(1.0) - y[i])


@elementwise_kernel(f"void({F1}, {F1})")
def _relu_forward_kernel(x, i):
    """out = max(x, 0).   x, out (n,)."""
    return float32(0.0) if x[i] <= float32(0.0) else x[i]  # NaN stays NaN


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _relu_backward_kernel(x, dy, i):
    """dx = dy where x > 0, else 0; x the forward input.   (n,)."""
    return dy[i] if x[i] > float32(0.0) else float32(0.0)


@elementwise_kernel(f"void({F1}, {F1})")
def _tanh_forward_kernel(x, i):
    """out = tanh(x); libdevice's tanhf saturates to +-1, never overflows.   x, out (n,)."""
    return math.tanh(x[i])


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _tanh_backward_kernel(y, dy, i):
    """dx = dy * (1 - y * y), y = tanh(x) the forward output.   (n,)."""
    return dy[i] * (float32(1.0) - y[i] * y[i])


(sigmoid_forward, sigmoid_backward, relu_forward, relu_backward, tanh_forward,
 tanh_backward) = elementwise_entries(
    _sigmoid_forward_kernel, _sigmoid_backward_kernel, _relu_forward_kernel, _relu_backward_kernel,
    _tanh_forward_kernel, _tanh_backward_kernel)
