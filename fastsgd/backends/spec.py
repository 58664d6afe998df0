"""What a backend module must export, and the switch for the kernels' value checks.

``contract.Backend`` checks a module against ``KERNELS`` when it wraps it; the
value-check switch is read by every validated call.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect

#: Implementation names and parameters every backend module must export.
KERNELS: dict[str, tuple[str, ...]] = {
    "matmul": ("a", "b", "out"),
    "matmul_backward_input": ("dy", "w", "dx"),
    "matmul_backward_weight": ("x", "dy", "dw"),
    "bias_backward": ("dy", "db"),
    "linear_forward": ("x", "w", "b", "out"),
    "linear_backward": ("x", "w", "dy", "dx", "dw", "db"),
    "sigmoid_forward": ("x", "out"),
    "sigmoid_backward": ("y", "dy", "dx"),
    "relu_forward": ("x", "out"),
    "relu_backward": ("x", "dy", "dx"),
    "tanh_forward": ("x", "out"),
    "tanh_backward": ("y", "dy", "dx"),
    "mnist_loss_forward": ("preds", "targets"),
    "mnist_loss_backward": ("preds", "targets", "dpreds"),
    "cross_entropy_forward": ("logits", "labels"),
    "cross_entropy_backward": ("logits", "labels", "dlogits"),
    "mse_forward": ("preds", "targets"),
    "mse_backward": ("preds", "targets", "dpreds"),
    "sgd_update": ("param", "grad", "velocity", "lr", "momentum", "weight_decay"),
    "binary_accuracy": ("preds", "targets"),
    "multiclass_accuracy": ("logits", "labels"),
}

#: Kernels a backend may implement (``Backend.supports(name)`` says whether it does);
#: when present they must take exactly these parameters.
OPTIONAL_KERNELS: dict[str, tuple[str, ...]] = {
    # one epoch of SGD over a layer program (see ``program.py``): steps done
    "train_epoch": ("layers", "loss_kind", "x", "targets", "labels", "order", "bs", "lrs",
                    "momentum", "weight_decay", "params", "grads", "velocities", "losses"),
}

#: Whether kernels scan their inputs for NaN/Inf: per thread and per asyncio task, so a
#: Learner's ``skip_value_checks`` block never switches the checks off for other code.
_VALUE_CHECKS: contextvars.ContextVar[bool] = contextvars.ContextVar("fastsgd_value_checks",
                                                                     default=True)


def value_checks_enabled() -> bool:
    """Whether kernels called from this thread or task scan their inputs for NaN/Inf."""
    return _VALUE_CHECKS.get()


@contextlib.contextmanager
def skip_value_checks():
    """Within this block, kernels skip the NaN/Inf scan of their inputs.

    Shape, dtype, layout and label-range checks stay on: they guard memory
    safety.  The trainer uses this in its inner loop after checking its data
    once, since a full scan of every input would cost as much as the kernel.
    The switch is a context variable: it applies to this thread (or asyncio task)
    alone and is restored exactly on leaving the block, however blocks nest.
    """
    token = _VALUE_CHECKS.set(False)
    try:
        yield
    finally:
        _VALUE_CHECKS.reset(token)


def missing_kernels(module) -> list[str]:
    """Names in ``KERNELS`` that ``module`` lacks or exports with other parameters."""
    bad = []
    for name, params in KERNELS.items():
        fn = getattr(module, name, None)
        if fn is None or _parameter_names(fn) != params:
            bad.append(name)
    for name, params in OPTIONAL_KERNELS.items():
        fn = getattr(module, name, None)
        if fn is not None and _parameter_names(fn) != params:
            bad.append(name)
    return bad


def _parameter_names(fn) -> tuple[str, ...] | None:
    py_func = getattr(fn, "py_func", fn)  # numba dispatchers keep the Python source
    try:
        return tuple(inspect.signature(py_func).parameters)
    except (TypeError, ValueError):
        return None
