"""PyTorch's ``nn`` names for fastsgd's layers: ``nn.Linear(28*28, 30)``, ``nn.ReLU()``,
``nn.Sequential(...)``.

These are the same classes as ``fastsgd.Linear`` and the others: called on a Tensor
they record their operations for ``backward``, and a Learner trains a model made of
them on the fused path.  ``Linear``'s weight is stored (in, out), the kernels' layout,
where PyTorch stores (out, in).  ``nn.functional`` holds ``l1_loss`` and ``mse_loss``.
"""
from . import functional
from .layers import Linear, Module, Parameter, ReLU, Sequential, Sigmoid, Tanh

__all__ = ["Linear", "ReLU", "Sigmoid", "Tanh", "Sequential", "Module", "Parameter", "functional"]
