"""PyTorch's ``torch.nn.functional`` names that chapter 4 uses, on tensors:
``F = fs.nn.functional``; ``F.l1_loss(a_3.float(), mean7)``, ``F.mse_loss(a_3, mean7).sqrt()``.

Each is written with Tensor operations, so gradients flow through it.
"""
from .tensor import Tensor, relu, sigmoid, tanh
from .tensor import tensor as _tensor

__all__ = ["l1_loss", "mse_loss", "relu", "sigmoid", "tanh"]


def _pair(input, target):
    return (input if isinstance(input, Tensor) else _tensor(input),
            target if isinstance(target, Tensor) else _tensor(target))


def l1_loss(input, target) -> Tensor:
    """The mean absolute difference, ``(input - target).abs().mean()``."""
    input, target = _pair(input, target)
    return (input - target).abs().mean()


def mse_loss(input, target) -> Tensor:
    """The mean squared difference, ``((input - target) ** 2).mean()``."""
    input, target = _pair(input, target)
    return ((input - target) ** 2).mean()
