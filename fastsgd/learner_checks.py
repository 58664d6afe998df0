"""The checks of what a ``Learner`` is given: callbacks, metrics, and whether its model,
loss and optimiser run on the kernel path or through autograd."""
from __future__ import annotations

import inspect
import weakref

from .callbacks import Callback
from .layers import Module, Sequential
from .losses import Loss
from .optim import SGD
from .tensor import Tensor

__all__ = ["checked_callbacks", "autograd_reason", "check_for_autograd", "checked_metrics",
           "takes_backend"]


def checked_callbacks(cbs, where) -> list[Callback]:
    """``cbs`` (one callback or several) as a list, each checked to be a Callback."""
    cbs = [cbs] if isinstance(cbs, Callback) else list(cbs)
    for cb in cbs:
        if not isinstance(cb, Callback):
            raise TypeError(f"{where}: expected fastsgd.Callback objects, got {cb!r}")
    return cbs


def _runs_on_arrays(model) -> bool:
    """Whether ``model`` runs on the kernel path's arrays: fastsgd's layers, or layers of
    one's own with ``forward`` and ``backward`` on arrays, alone or in a Sequential."""
    if isinstance(model, Sequential):
        return all(_runs_on_arrays(layer) for layer in model.layers)
    return isinstance(model, Module) and callable(getattr(model, "backward", None))


def autograd_reason(model, loss_func, opt) -> str | None:
    """Why these train through autograd rather than on the kernel path, or None."""
    if not _runs_on_arrays(model):
        what = getattr(model, "__name__", type(model).__name__)
        return (f"the model {what} is not made of fastsgd's layers (Linear, ReLU, Sigmoid, "
                f"Tanh, or layers with forward and backward on arrays)")
    if not isinstance(loss_func, Loss):
        return (f"the loss {getattr(loss_func, '__name__', loss_func)!r} is a function on tensors, "
                f"not a fastsgd.Loss (fs.mnist_loss, fs.cross_entropy or fs.mse train fused)")
    if not isinstance(opt, SGD):
        return f"the optimiser is a {type(opt).__name__}, not fastsgd.SGD"
    return None


def check_for_autograd(model, loss_func, opt):
    """What training through autograd needs: a callable model with tensor parameters, a
    loss of two arguments, an optimiser with step() and zero_grad()."""
    if not callable(model) or not callable(getattr(model, "parameters", None)):
        raise TypeError(f"model: expected a fastsgd.Module (nn.Linear, nn.Sequential or a "
                        f"Module of your own) with .parameters(), got {type(model).__name__}")
    for p in model.parameters():
        if not isinstance(p, Tensor):
            raise TypeError(f"model: parameters() must give tensors, got a {type(p).__name__}")
    if not isinstance(loss_func, Loss):
        _check_arity(loss_func, "loss_func", "loss_func(preds, targets)")
    for name in ("step", "zero_grad"):
        if not callable(getattr(opt, name, None)):
            raise TypeError(f"opt: expected an optimiser with step() and zero_grad(), "
                            f"{type(opt).__name__} has no {name}()")


def checked_metrics(metrics) -> list:
    """``metrics`` (one function or several) as a list, each callable as ``m(preds, targets)``
    or, fastsgd's own protocol, ``m(preds, targets, backend)``."""
    if metrics is None:
        return []
    metrics = [metrics] if callable(metrics) else list(metrics)
    for m in metrics:
        if not callable(m):
            raise TypeError(f"metrics: expected functions metric(preds, targets), got {m!r}")
        if not takes_backend(m):
            _check_arity(m, "metrics", "metric(preds, targets)")
    return metrics


def takes_backend(metric) -> bool:
    """Whether ``metric`` takes a third argument, the backend: fastsgd's metrics
    (``batch_accuracy``) are called on arrays with the Learner's kernels, the others on
    tensors as ``metric(preds, targets)``.  Remembered per function: validation asks
    every epoch."""
    try:
        return _TAKES_BACKEND[metric]
    except (KeyError, TypeError):
        pass
    try:
        inspect.signature(metric).bind(None, None, None)
        takes = True
    except TypeError:
        takes = False
    except ValueError:          # no signature to read: the earlier protocol
        takes = True
    try:
        _TAKES_BACKEND[metric] = takes
    except TypeError:           # neither hashable nor weakly referable: asked again next time
        pass
    return takes


_TAKES_BACKEND: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_arity(fn, where, call):
    """``fn`` can be called with two positional arguments, or TypeError before any training."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return                                   # a builtin: its call will tell
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(fn, "__name__", repr(fn))
        raise TypeError(f"{where}: {name}{signature} cannot be called as {call}; it must take "
                        f"two arguments") from None
