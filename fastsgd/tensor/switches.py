"""The switches of tensor operations: whether they record a graph (``no_grad``,
``enable_grad``) and whose kernels they call (``use_backend``)."""
from __future__ import annotations

import contextlib
import contextvars

from .. import backends

_GRAD_ENABLED = contextvars.ContextVar("fastsgd_grad_enabled", default=True)
_BACKEND = contextvars.ContextVar("fastsgd_tensor_backend", default=None)


class _GradMode(contextlib.ContextDecorator):
    """A ``with`` block (or a decorated function) inside which operations are recorded
    when ``recording`` is True, and not when it is False."""

    recording = True

    def __enter__(self):
        self._token = _GRAD_ENABLED.set(self.recording)

    def __exit__(self, *exc):
        _GRAD_ENABLED.reset(self._token)
        return False


class no_grad(_GradMode):
    """``with fs.no_grad():`` operations inside record nothing (also a decorator)."""

    recording = False


class enable_grad(_GradMode):
    """``with fs.enable_grad():`` record operations again inside a ``no_grad`` block."""

    recording = True


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for ``backward`` (False inside ``no_grad``)."""
    return _GRAD_ENABLED.get()


@contextlib.contextmanager
def use_backend(name):
    """``with use_backend("numba"):`` tensor operations call that backend's kernels inside."""
    token = _BACKEND.set(backends.get(name))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def current_backend():
    """The backend whose kernels tensor operations call: the one ``use_backend`` chose,
    else the default; a device backend (cuda) gives the NumPy reference."""
    chosen = _BACKEND.get() or backends.get()
    return backends.get("numpy") if chosen.arrays.device else chosen


def _kernels(*arrays):
    """The backend to compute on ``arrays``: the current one when it takes their (common)
    float dtype, else the NumPy reference when it does, else None (a NumPy expression)."""
    dtype = arrays[0].dtype
    if any(a.dtype != dtype or a.ndim == 0 or a.size == 0 for a in arrays):
        return None
    for backend in (current_backend(), backends.get("numpy")):
        if dtype in backend.dtypes:
            return backend
    return None


def kernels_for(array):
    """The backend whose kernels compute on ``array``: as ``_kernels``, with the NumPy
    reference when none fits."""
    return _kernels(array) or backends.get("numpy")
