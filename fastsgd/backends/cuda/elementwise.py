"""Activations forward and backward: one thread per element of a flat view (``elementwise_kernel``).

``activation_forward`` and ``activation_backward`` hold each parameter-free kind's formula
once, as one case each: the kernels here and the fused program (``program.py``) both
call them, the kernels with their kind fixed.
"""
import math

from numba import cuda, float32

from .. import program
from .device import elementwise_kernel, sigmoid
from .launch import F1, elementwise_entries


@cuda.jit(device=True, inline=True)
def activation_forward(kind, v):
    """The parameter-free layer ``kind`` of one value v (float32)."""
    if kind == program.RELU:
        return float32(0.0) if v <= float32(0.0) else v  # NaN stays NaN
    if kind == program.SIGMOID:
        return sigmoid(v)  # finite for any finite v
    return math.tanh(v)  # TANH: libdevice's tanhf saturates to +-1, never overflows


@cuda.jit(device=True, inline=True)
def activation_backward(kind, x, y, dy):
    """dL/dx of the layer ``kind`` from dy = dL/dy, x its input and y its output (float32)."""
    if kind == program.RELU:
        return dy if x > float32(0.0) else float32(0.0)
    if kind == program.SIGMOID:
        return dy * (y * (float32(1.0) - y))
    return dy * (float32(1.0) - y * y)  # TANH


@elementwise_kernel(f"void({F1}, {F1})")
def _sigmoid_forward_kernel(x, i):
    """out = sigmoid(x), finite for any finite x.   x, out (n,)."""
    return activation_forward(program.SIGMOID, x[i])


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _sigmoid_backward_kernel(y, dy, i):
    """dx = dy * y * (1 - y), y = sigmoid(x) the forward output.   (n,)."""
    return activation_backward(program.SIGMOID, y[i], y[i], dy[i])


@elementwise_kernel(f"void({F1}, {F1})")
def _relu_forward_kernel(x, i):
    """out = max(x, 0).   x, out (n,)."""
    return activation_forward(program.RELU, x[i])


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _relu_backward_kernel(x, dy, i):
    """dx = dy where x > 0, else 0; x the forward input.   (n,)."""
    return activation_backward(program.RELU, x[i], x[i], dy[i])


@elementwise_kernel(f"void({F1}, {F1})")
def _tanh_forward_kernel(x, i):
    """out = tanh(x), finite for any x.   x, out (n,)."""
    return activation_forward(program.TANH, x[i])


@elementwise_kernel(f"void({F1}, {F1}, {F1})")
def _tanh_backward_kernel(y, dy, i):
    """dx = dy * (1 - y * y), y = tanh(x) the forward output.   (n,)."""
    return activation_backward(program.TANH, y[i], y[i], dy[i])


#: The contract's entries of the activations, by name.
ENTRIES = {entry.__name__: entry for entry in elementwise_entries(
    _sigmoid_forward_kernel, _sigmoid_backward_kernel, _relu_forward_kernel, _relu_backward_kernel,
    _tanh_forward_kernel, _tanh_backward_kernel)}
