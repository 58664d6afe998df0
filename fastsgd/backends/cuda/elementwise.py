"""Activations forward and backward: one thread per element of a flat view."""
import math

from numba import cuda, float32

from .device import sigmoid
from .launch import F1, kernel, launch_elementwise


@kernel(f"void({F1}, {F1})")
def _sigmoid_forward_kernel(x, out):
    """out = sigmoid(x), finite for any finite x.   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = sigmoid(x[i])


@kernel(f"void({F1}, {F1}, {F1})")
def _sigmoid_backward_kernel(y, dy, dx):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output.   (n,)."""
    i = cuda.grid(1)
    if i < y.shape[0]:
        dx[i] = dy[i] * y[i] * (float32(1.0) - y[i])


@kernel(f"void({F1}, {F1})")
def _relu_forward_kernel(x, out):
    """out = max(x, 0).   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = float32(0.0) if x[i] <= float32(0.0) else x[i]  # NaN stays NaN


@kernel(f"void({F1}, {F1}, {F1})")
def _relu_backward_kernel(x, dy, dx):
    """dx = dy where x > 0, else 0; x the forward input.   (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        dx[i] = dy[i] if x[i] > float32(0.0) else float32(0.0)


@kernel(f"void({F1}, {F1})")
def _tanh_forward_kernel(x, out):
    """out = tanh(x); libdevice's tanhf saturates to +-1, never overflows.   x, out (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = math.tanh(x[i])


@kernel(f"void({F1}, {F1}, {F1})")
def _tanh_backward_kernel(y, dy, dx):
    """dx = dy * (1 - y * y), y = tanh(x) the forward output.   (n,)."""
    i = cuda.grid(1)
    if i < y.shape[0]:
        dx[i] = dy[i] * (float32(1.0) - y[i] * y[i])



def sigmoid_forward(x, out):
    """out = 1 / (1 + exp(-x)), any shape."""
    launch_elementwise(_sigmoid_forward_kernel, x, out)


def sigmoid_backward(y, dy, dx):
    """dx = dy * y * (1 - y), any shape."""
    launch_elementwise(_sigmoid_backward_kernel, y, dy, dx)


def relu_forward(x, out):
    """out = max(x, 0), any shape."""
    launch_elementwise(_relu_forward_kernel, x, out)


def relu_backward(x, dy, dx):
    """dx = dy * (x > 0), any shape."""
    launch_elementwise(_relu_backward_kernel, x, dy, dx)


def tanh_forward(x, out):
    """out = tanh(x), any shape."""
    launch_elementwise(_tanh_forward_kernel, x, out)


def tanh_backward(y, dy, dx):
    """dx = dy * (1 - y**2), any shape."""
    launch_elementwise(_tanh_backward_kernel, y, dy, dx)

