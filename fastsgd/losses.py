"""Loss functions and metrics; each calls its backend's kernels.

A loss is called like the book's function, ``mnist_loss(preds, targets)`` ->
float, and also knows its gradient, ``mnist_loss.backward(preds, targets)`` ->
dL/dpreds.  ``backend=`` picks the kernels (default: the NumPy reference).
"""
from __future__ import annotations

import numpy as np

from . import backends
from .tensor import Tensor, kernels_for, recorded

__all__ = ["Loss", "mnist_loss", "cross_entropy", "mse", "batch_accuracy"]




def _fused_kind(forward_kernel, backward_kernel):
    """The registry's loss kind (``backends.program.LOSSES``) computed by this pair of
    contract kernels, or None."""
    for kind in backends.program.LOSSES.values():
        if (kind.forward, kind.backward) == (forward_kernel, backward_kernel):
            return kind
    return None


class Loss:
    """A loss made of two kernels: the mean loss of a batch and its gradient.

    The public protocol a ``Learner`` relies on:

    * ``loss(preds, targets, backend=None) -> float``, the mean over the batch;
    * ``loss.backward(preds, targets, backend=None, out=None)`` -> dL/dpreds;
    * ``loss.prepare_targets(targets, n_outputs)`` -> targets converted once;
    * ``loss.targets``: ``"binary"`` (0/1, one output), ``"labels"`` (int class
      labels in [0, n_outputs)) or ``"real"`` (floats shaped like the output);
    * ``loss.kind``: the fused loss it is (``"mnist_loss"``, ``"cross_entropy"``,
      ``"mse"``) or None, in which case training runs layer by layer.

    ``forward_kernel`` and ``backward_kernel`` name kernels of the contract
    (``"mse_forward"``), or are functions ``f(kernels, preds, targets)`` and
    ``g(kernels, preds, targets, out)``.  ``kind`` is declared by the kernels: a
    loss built on the mnist_loss kernels *is* mnist_loss, whatever its name, and
    trains fused like it.  ``targets`` defaults from the kind, else from
    ``target_dtype`` (integers: labels; floats: real).
    """

    def __init__(self, name: str, target_dtype, forward_kernel, backward_kernel,
                 targets: str | None = None):
        for label, kernel in (("forward_kernel", forward_kernel), ("backward_kernel", backward_kernel)):
            if not (callable(kernel) or (isinstance(kernel, str) and kernel in backends.KERNELS)):
                raise ValueError(f"{label}: expected a kernel name of the contract or a function, "
                                 f"got {kernel!r}")
        self.__name__ = name
        self.target_dtype = np.dtype(target_dtype)
        self._forward = forward_kernel
        self._backward = backward_kernel
        fused = _fused_kind(forward_kernel, backward_kernel)
        default = fused.targets if fused else ("labels" if self.target_dtype.kind in "iu" else "real")
        self.targets = targets or default
        if self.targets not in backends.program.TARGETS:
            raise ValueError(f"targets: expected one of {backends.program.TARGETS}, got {targets!r}")
        # the kernels' own targets differ: not the fused loss
        self.kind = fused.name if fused and self.targets == fused.targets else None
        if (self.targets == "labels") != (self.target_dtype.kind in "iu"):
            raise ValueError(f"target_dtype: {self.target_dtype} does not suit "
                             f"{self.targets} targets")

    def __repr__(self):
        return self.__name__

    def __call__(self, preds, targets, backend=None):
        """The mean loss over the batch: a float for arrays, a one-value Tensor (whose
        ``backward`` runs this loss's backward kernel) when preds is a Tensor."""
        if isinstance(preds, Tensor):
            return self._on_tensors(preds, targets)
        kernels = backends.get(backend or "numpy")
        if callable(self._forward):
            return float(self._forward(kernels, preds, targets))
        return getattr(kernels, self._forward)(preds, targets)

    def _on_tensors(self, preds, targets):
        """The loss of tensor ``preds`` as a recorded operation, on the tensors' backend."""
        values = np.ascontiguousarray(preds.value)
        if values.dtype.kind != "f":
            raise TypeError(f"preds: expected floats, got {values.dtype}")
        n_out = values.shape[1] if values.ndim == 2 else None
        t = self.prepare_targets(np.asarray(targets), n_out)
        if self.targets != "labels":
            t = t.astype(values.dtype, copy=False)
        kernels = kernels_for(values)
        with backends.skip_value_checks():
            loss = self(values, t, kernels)

        def backward(g):
            with backends.skip_value_checks():
                return (self.backward(values, t, kernels) * g,)
        return recorded(np.asarray(loss, values.dtype), (preds,), backward,
                                   self.__name__)

    def backward(self, preds, targets, backend=None, out=None):
        """dL/dpreds, shaped like preds (written into ``out`` when given)."""
        kernels = backends.get(backend or "numpy")
        if callable(self._backward):
            return self._backward(kernels, preds, targets, out)
        return getattr(kernels, self._backward)(preds, targets, out)

    def prepare_targets(self, targets, n_outputs: int | None = None) -> np.ndarray:
        """``targets`` converted once to what the kernels expect, with their values checked."""
        targets = np.asarray(targets)
        if targets.ndim == 2 and targets.shape[1] == 1:
            targets = targets.reshape(-1)
        if self.targets == "real":
            if targets.ndim == 2 and n_outputs and targets.shape[1] != n_outputs:
                raise ValueError(f"targets: {self.__name__} expects shape (N,) or (N, {n_outputs}) "
                                 f"to match the model's outputs, got {targets.shape}")
            if targets.ndim not in (1, 2) or (targets.ndim == 1 and n_outputs not in (None, 1)):
                raise ValueError(f"targets: {self.__name__} expects shape (N, {n_outputs}) "
                                 f"to match the model's outputs, got {targets.shape}")
            if not np.issubdtype(targets.dtype, np.number) or not np.isfinite(targets).all():
                raise ValueError(f"targets: {self.__name__} expects finite real numbers")
            return np.ascontiguousarray(targets, dtype=self.target_dtype)
        if targets.ndim != 1:
            raise ValueError(f"targets: expected shape (N,), got {targets.shape}")
        if self.targets == "binary":
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

#: Mean squared error over every output, the book's ``((preds - targets)**2).mean()``;
#: real-valued targets shaped like the output.
mse = Loss("mse", np.float32, "mse_forward", "mse_backward")


def batch_accuracy(preds, targets, backend=None):
    """Accuracy of a batch: ``sigmoid(p) > 0.5`` vs 0/1 targets for one output,
    ``argmax`` vs integer labels for several.  A float for arrays; a one-value
    Tensor for tensors (targets then (B,) or (B, 1), of any number type)."""
    if isinstance(preds, Tensor):
        values = np.ascontiguousarray(preds.value)
        one = values.ndim == 1 or values.shape[1] == 1
        t = np.ascontiguousarray(np.asarray(targets).reshape(-1),
                                 dtype=values.dtype if one else np.int64)
        return Tensor(np.float32(batch_accuracy(values, t, kernels_for(values))))
    kernels = backends.get(backend or "numpy")
    if preds.ndim == 1 or preds.shape[1] == 1:
        return kernels.binary_accuracy(preds, targets)
    return kernels.multiclass_accuracy(preds, targets)
