"""SGD with optional momentum and weight decay, plus learning-rate schedules."""
from __future__ import annotations

import math
import numbers

from . import backends
from .backends.spec import bounded_number

__all__ = ["SGD", "checked_lr", "constant_lr", "cosine_lr", "SCHEDULES"]


class SGD:
    """Stochastic gradient descent, PyTorch semantics.

    ``SGD(params, lr)`` (the book's and PyTorch's call) optimises the tensors
    ``params`` — ``model.parameters()`` or tensors of your own that require
    gradients — at rate ``lr``; ``SGD(lr=0.1, momentum=0.9)``, with no parameters,
    is bound to a model by the Learner.  A number in first place is the rate:
    ``SGD(0.1, momentum=0.9)``.

    Each ``step()``: ``g = grad + weight_decay * w``; with momentum,
    ``v = momentum * v + g`` and ``g = v``; then ``w -= lr * g`` — one
    ``sgd_update`` kernel call per parameter, in place; a parameter whose grad is
    None is left alone.  ``zero_grad()`` sets every gradient to zero in place.
    """

    def __init__(self, *args, lr=None, momentum=None, weight_decay=None):
        params = None
        if args and not _is_number(args[0]):
            params, *args = args
        if len(args) > 3:
            raise TypeError(f"SGD: expected at most params, lr, momentum and weight_decay, "
                            f"got {len(args) + (params is not None)} positional arguments")
        given = dict(zip(("lr", "momentum", "weight_decay"), args))
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if value is not None:
                if name in given:
                    raise TypeError(f"SGD: got two values for {name}")
                given[name] = value
        lr = checked_lr(given.get("lr", 0.1))
        momentum, weight_decay = given.get("momentum", 0.0), given.get("weight_decay", 0.0)
        for name, value, high in (("momentum", momentum, 1.0), ("weight_decay", weight_decay, None)):
            if not _is_number(value) or not math.isfinite(value) \
                    or value < 0 or (high is not None and value > high):
                bound = f"[0, {high}]" if high is not None else ">= 0"
                raise ValueError(f"SGD: {name} must be a finite number {bound}, got {value!r}")
        self.lr, self.momentum, self.weight_decay = lr, float(momentum), float(weight_decay)
        self.params = []
        self.backend = None        # None: the backend tensor operations use at each step
        self._velocity = []
        if params is not None:
            self.params = _checked_params(params)
            self._velocity = [None] * len(self.params)

    def bind(self, params, backend) -> "SGD":
        """Optimise ``params`` (a list of Parameter) with ``backend``'s kernels; velocities restart at 0."""
        self.params = list(params)
        self.backend = backends.get(backend)
        self._velocity = [self.backend.zeros(p.value.shape) if self.momentum else None
                          for p in self.params]
        return self

    def velocities(self) -> list:
        """The momentum buffer of each parameter (shaped like it), or None where none exists yet."""
        return list(self._velocity)

    def set_velocities(self, arrays):
        """Use ``arrays`` (one per parameter, shaped like it) as the momentum buffers from now on.

        They should already hold the current velocities: the fused path copies
        them into its flat block, then points the optimiser there.
        """
        arrays = list(arrays)
        if len(arrays) != len(self.params):
            raise ValueError(f"arrays: expected {len(self.params)} velocities, got {len(arrays)}")
        for p, new in zip(self.params, arrays):
            if tuple(new.shape) != tuple(p.value.shape):
                raise ValueError(f"arrays: a velocity of shape {tuple(new.shape)} for "
                                 f"{p.name} of shape {tuple(p.value.shape)}")
        self._velocity = arrays

    def step(self, lr: float | None = None):
        """Update every parameter in place from its ``grad``."""
        lr = self.lr if lr is None else lr
        for i, (p, v) in enumerate(zip(self.params, self._velocity)):
            if p.grad_value is None:
                continue
            kernels = self.backend or _tensor_kernels(p.value)
            if v is None and self.momentum:  # momentum switched on after bind, or first step
                v = self._velocity[i] = kernels.zeros(p.value.shape, p.value.dtype)
            kernels.sgd_update(p.value, p.grad_value, lr, self.momentum, self.weight_decay, v)

    def zero_grad(self):
        """Set every parameter's gradient to zero, in place."""
        for p in self.params:
            if p.grad_value is not None:
                p.grad_value[...] = 0

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay})"


def checked_lr(value, name: str = "lr", *, positive: bool = False) -> float:
    """``value`` as a learning rate (a float), else ValueError naming ``name``: a real
    number (not a bool or a string), above 0 when ``positive``, finite, >= 0 and within
    float32: the bounds ``sgd_update`` puts on its ``lr`` (``bounded_number``).  The one
    check of a learning rate above the kernels: SGD's, ``fit``'s and ``lr_find``'s, and the
    schedule's rate of every step."""
    if not _is_number(value):
        raise ValueError(f"{name}: expected a real number as the learning rate, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name}: expected a positive learning rate, got {value!r}")
    return bounded_number(name, value, low=0.0)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _checked_params(params) -> list:
    """``params`` as a list of tensors, or TypeError saying what was given."""
    from .tensor import Tensor
    if isinstance(params, Tensor):
        params = [params]
    try:
        params = list(params)
    except TypeError:
        raise TypeError(f"params: expected tensors (model.parameters()), got {params!r}") from None
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"params: item {i} is a {type(p).__name__}, expected a tensor")
    return params


def _tensor_kernels(array):
    """The backend tensor operations use, when it computes in ``array``'s dtype, else the
    NumPy reference."""
    from .tensor import current_backend
    chosen = current_backend()
    return chosen if array.dtype in chosen.dtypes else backends.get("numpy")


def constant_lr(progress: float) -> float:
    """Learning-rate multiplier 1 throughout training."""
    return 1.0


def cosine_lr(progress: float) -> float:
    """Multiplier decaying from 1 to 0 along half a cosine: steps start large, then get smaller."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: Schedules by name, as the CLI's ``--schedule`` takes them.
SCHEDULES = {"constant": constant_lr, "cosine": cosine_lr}
