"""Loss functions and metrics; each calls its backend's kernels.

A loss is called like the book's function, ``mnist_loss(preds, targets)`` ->
float, and also knows its gradient, ``mnist_loss.backward(preds, targets)`` ->
dL/dpreds.  ``backend=`` picks the kernels (default: the NumPy reference).
"""
from __future__ import annotations

import numpy as np

from . import backends

__all__ = ["Loss", "mnist_loss", "cross_entropy", "batch_accuracy"]


class Loss:
    """A loss with forward (``__call__``) and ``backward``, backed by two kernels."""

    def __init__(self, name: str, target_dtype, forward_kernel: str, backward_kernel: str):
        self.__name__ = name
        self.target_dtype = np.dtype(target_dtype)
        self._forward = forward_kernel
        self._backward = backward_kernel

    def __repr__(self):
        return self.__name__

    def __call__(self, preds, targets, backend=None) -> float:
        """The mean loss over the batch."""
        return getattr(backends.get(backend or "numpy"), self._forward)(preds, targets)

    def backward(self, preds, targets, backend=None, out=None):
        """dL/dpreds, shaped like preds (written into ``out`` when given)."""
        return getattr(backends.get(backend or "numpy"), self._backward)(preds, targets, out)

    def prepare_targets(self, targets, n_outputs: int | None = None) -> np.ndarray:
        """``targets`` converted once to what the kernels expect, with their values checked."""
        targets = np.asarray(targets)
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets.reshape(-1)
        if targets.ndim != 1:
            raise ValueError(f"targets: expected shape (N,), got {targets.shape}")
        if self.target_dtype.kind == "f":
            if not np.isin(targets, (0, 1)).all():
                raise ValueError(f"targets: {self.__name__} expects targets 0 or 1")
        else:
            if targets.dtype.kind not in "iu" and not (targets == np.round(targets)).all():
                raise ValueError(f"targets: {self.__name__} expects integer class labels")
            if targets.size and (targets.min() < 0 or (n_outputs and targets.max() >= n_outputs)):
                raise ValueError(f"targets: {self.__name__} expects labels in [0, {n_outputs}), "
                                 f"got values from {targets.min()} to {targets.max()}")
        return np.ascontiguousarray(targets, dtype=self.target_dtype)


#: The book's loss for one-output binary models: mean(where(t==1, 1-sigmoid(p), sigmoid(p))).
mnist_loss = Loss("mnist_loss", np.float32, "mnist_loss_forward", "mnist_loss_backward")

#: Mean softmax cross-entropy for multi-class models; integer labels.
cross_entropy = Loss("cross_entropy", np.int64, "cross_entropy_forward", "cross_entropy_backward")


def batch_accuracy(preds, targets, backend=None) -> float:
    """Accuracy of a batch: ``sigmoid(p) > 0.5`` vs 0/1 targets for one output,
    ``argmax`` vs integer labels for several."""
    kernels = backends.get(backend or "numpy")
    if preds.ndim == 1 or preds.shape[1] == 1:
        return kernels.binary_accuracy(preds, targets)
    return kernels.multiclass_accuracy(preds, targets)
