"""Tensors with reverse-mode automatic differentiation, spelled as PyTorch spells them.

    import fastsgd as fs
    x = fs.tensor([3., 4., 10.]).requires_grad_()
    y = (x ** 2).sum()
    y.backward()
    x.grad                      # tensor([ 6.,  8., 20.])

A ``Tensor`` holds a NumPy array (``t.value``) and, when it was computed from tensors
that require gradients, the function that carries a gradient back to them.  Each
operation below is a forward and, beside it, its ``backward``: given dL/d(output) it
returns dL/d(each input).  ``loss.backward()`` visits the graph in reverse
topological order and adds each leaf's gradient into its ``.grad``.

Where a kernel of the contract computes an operation — matmul and its two backward
products, the linear layer, sigmoid / ReLU / tanh forward and backward, the losses
(``fastsgd.mnist_loss(preds, targets)`` on tensors) and the SGD update
(``fastsgd.SGD``) — the tensor calls the selected backend's kernel (``use_backend``;
default ``fastsgd.backends.default_name()``), or the NumPy reference's for a dtype
the backend does not compute in (float64) or on a device backend, whose arrays
are not NumPy's.  Everything else is NumPy.

Dtypes follow PyTorch: Python floats make float32 tensors, Python ints int64, and an
integer tensor combined with a float scalar gives float32.

Note: ``fastsgd.tensor`` is the function that makes a tensor; this package is
``from fastsgd.tensor import Tensor``.  Its modules: ``core`` (Tensor, its graph and
``backward``, ``recorded``), ``operators`` (Tensor's differentiable methods, matmul and
the activations on the kernels), ``factories`` (``tensor``, ``zeros``, ``randn`` ...),
``functions`` (``stack``, ``cat``, ``where``, ``exp`` ..., ``linear``) and ``switches``
(``no_grad``, ``use_backend``).
"""
from .core import Tensor, recorded
from .factories import (
    arange,
    linspace,
    manual_seed,
    ones,
    ones_like,
    rand,
    randn,
    tensor,
    zeros,
    zeros_like,
)
from .functions import abs, cat, exp, linear, log, relu, sigmoid, stack, tanh, where
from .operators import matmul
from .switches import (
    current_backend,
    enable_grad,
    is_grad_enabled,
    kernels_for,
    no_grad,
    use_backend,
)

__all__ = ["Tensor", "tensor", "arange", "randn", "rand", "zeros", "ones", "zeros_like",
           "ones_like", "linspace", "stack", "cat", "where", "exp", "log", "sigmoid", "relu",
           "tanh", "abs", "linear", "manual_seed", "no_grad", "enable_grad", "is_grad_enabled",
           "use_backend", "current_backend", "kernels_for", "recorded", "matmul"]
