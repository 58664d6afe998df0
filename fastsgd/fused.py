"""The fused training path: a whole epoch in one compiled call, when the model allows.

``Learner.fit`` asks ``plan(...)`` for a ``FusedEpoch``.  It gets one when the
backend implements ``train_epoch`` and the model is what that kernel covers — a
single ``Linear`` or ``Linear-ReLU-Linear`` — trained with ``mnist_loss`` or
``cross_entropy`` and ``SGD`` (momentum and weight decay included).  Otherwise it
gets ``None`` and the layer-by-layer loop runs.  Both paths draw the same batch
order from the DataLoader and run the same kernels in the same order, so they
agree to rounding.
"""
from __future__ import annotations

import numpy as np

from .layers import Linear, ReLU, Sequential
from .losses import Loss, mnist_loss

__all__ = ["FusedEpoch", "plan"]


class FusedEpoch:
    """Runs epochs of SGD through a backend's ``train_epoch`` kernel."""

    def __init__(self, backend, model, loss_func, opt, dl):
        self.backend, self.opt, self.dl = backend, opt, dl
        self.params = [p.value for p in model.parameters()]
        self.grads = [p.grad for p in model.parameters()]
        self.binary = loss_func is mnist_loss
        # one integer target type lets one compiled kernel serve both losses
        self.targets = backend.asarray(backend.to_numpy(dl.y), dtype=np.int64)

    def velocities(self):
        """The optimiser's velocities; zeros (the same update) when it has no momentum."""
        if self.opt.momentum:
            return list(self.opt._velocity)
        return [self.backend.zeros(p.shape) for p in self.params]

    def run(self, lrs: np.ndarray) -> np.ndarray:
        """One epoch with learning rate ``lrs[step]``; returns the loss of each step done."""
        order = self.backend.asarray(self.dl.next_order(), dtype=np.int64)
        losses = np.zeros(len(lrs), np.float64)
        done = self.backend._impl.train_epoch(
            self.dl.x, self.targets, order, self.dl.bs, self.params, self.velocities(),
            self.grads, np.asarray(lrs, np.float32), self.opt.momentum, self.opt.weight_decay,
            self.binary, losses)
        return losses[:done + 1] if done < len(lrs) else losses


def plan(backend, model, loss_func: Loss, opt, dl) -> FusedEpoch | None:
    """A ``FusedEpoch`` for this combination, or None when the fused kernel does not cover it."""
    if not hasattr(backend._impl, "train_epoch") or not isinstance(model, Sequential):
        return None
    kinds = [type(layer) for layer in model.layers]
    if kinds not in ([Linear], [Linear, ReLU, Linear]):
        return None
    if any(p.value.dtype != np.float32 for p in model.parameters()):
        return None
    return FusedEpoch(backend, model, loss_func, opt, dl)
