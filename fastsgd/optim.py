"""SGD with optional momentum and weight decay, plus learning-rate schedules."""
from __future__ import annotations

import math

from . import backends

__all__ = ["SGD", "constant_lr", "cosine_lr", "SCHEDULES"]


class SGD:
    """Stochastic gradient descent, PyTorch semantics.

    Each ``step()``: ``g = grad + weight_decay * w``; with momentum,
    ``v = momentum * v + g`` and ``g = v``; then ``w -= lr * g`` — one
    ``sgd_update`` kernel call per parameter, in place.
    """

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, weight_decay: float = 0.0):
        for name, value, high in (("lr", lr, None), ("momentum", momentum, 1.0),
                                  ("weight_decay", weight_decay, None)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) \
                    or value < 0 or (high is not None and value > high):
                bound = f"[0, {high}]" if high is not None else ">= 0"
                raise ValueError(f"SGD: {name} must be a finite number {bound}, got {value!r}")
        self.lr, self.momentum, self.weight_decay = float(lr), float(momentum), float(weight_decay)
        self.params = []
        self.backend = backends.get("numpy")
        self._velocity = []

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
            if v is None and self.momentum:  # momentum switched on after bind
                v = self._velocity[i] = self.backend.zeros(p.value.shape)
            self.backend.sgd_update(p.value, p.grad, lr, self.momentum, self.weight_decay, v)

    def __repr__(self):
        return f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay})"


def constant_lr(progress: float) -> float:
    """Learning-rate multiplier 1 throughout training."""
    return 1.0


def cosine_lr(progress: float) -> float:
    """Multiplier decaying from 1 to 0 along half a cosine: steps start large, then get smaller."""
    return 0.5 * (1.0 + math.cos(math.pi * progress))


#: Schedules by name, as the CLI's ``--schedule`` takes them.
SCHEDULES = {"constant": constant_lr, "cosine": cosine_lr}
