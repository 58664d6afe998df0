"""Array adapters: what the contract needs to know about a backend's arrays.

``Backend`` validates every argument through one adapter, so the checks (and
their error messages, in ``contract.py``) are written once for every device.
An adapter answers questions about arrays of its device and makes new ones:

    is_array(x)            an array this backend computes on
    contiguous(x)          C-contiguous (host arrays too, for adapters that accept them)
    writable(x)            may be written in place
    may_overlap(a, b)      may share memory
    same_memory(a, b)      exactly the same elements (same start and size)
    all_finite(x)          no NaN or Inf
    count_outside(x, lo, hi)   how many values lie outside [lo, hi)
    count_not_binary(x)    how many values are neither 0 nor 1
    to_backend(x)          a C-contiguous NumPy array as a backend array
    to_numpy(x)            a NumPy array with the values of backend array x
    asarray(x, dtype)      anything array-like as a C-contiguous backend array
    empty(shape, dtype), zeros(shape, dtype)
    take_rows(src, idx, out)   out[r] = src[idx[r]] for validated (N, F), (R,), (R, F) arrays

``HostArrays`` is the adapter of the CPU backends (NumPy arrays); the CUDA
backend's lives in ``fastsgd/backends/cuda/arrays.py``.
"""
from __future__ import annotations

import functools

import numpy as np

#: The dtypes the C extension's check reads.
_COMPILED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


_finite_check_loader = None


def register_finite_check(loader) -> None:
    """Let ``host_all_finite`` use a compiled check: ``loader()`` returns a function
    ``all_finite(x)`` of C-contiguous float32 / float64 ndarrays, or None when there is
    none; it is called once, on the first check.  The backends package registers the
    C extension's this way, so that this contract layer imports no implementation."""
    global _finite_check_loader
    _finite_check_loader = loader
    _compiled_finite_check.cache_clear()


@functools.lru_cache(maxsize=1)
def _compiled_finite_check():
    """The registered compiled ``all_finite``, or None."""
    return _finite_check_loader() if _finite_check_loader is not None else None


def host_all_finite(x: np.ndarray) -> bool:
    """Whether the host array ``x`` has no NaN or Inf.

    A C-contiguous float32 or float64 array goes through the C extension's single
    pass when it is built (at (256, 784) about half of NumPy's time); anything else
    through ``np.isfinite``.
    """
    check = _compiled_finite_check()
    if check is not None and x.dtype in _COMPILED_DTYPES and x.flags.c_contiguous:
        return check(x)
    return bool(np.isfinite(x).all())


class HostArrays:
    """The adapter for NumPy arrays in host memory."""

    #: What the backend takes, for error messages.
    accepts = "a numpy.ndarray"
    #: The backend's own kind of array.
    name = "a numpy.ndarray"
    #: Whether arrays live on a device (host arrays given for outputs are then refused).
    device = False

    def is_array(self, x) -> bool:
        return isinstance(x, np.ndarray)

    def contiguous(self, x) -> bool:
        return bool(x.flags.c_contiguous)

    def writable(self, x) -> bool:
        return bool(x.flags.writeable)

    def may_overlap(self, a, b) -> bool:
        return bool(np.may_share_memory(a, b))

    def same_memory(self, a, b) -> bool:
        return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
                and a.size == b.size and a.dtype == b.dtype)

    def all_finite(self, x) -> bool:
        return host_all_finite(x)

    def count_outside(self, x, low, high) -> int:
        return int(np.count_nonzero((x < low) | (x >= high)))

    def count_not_binary(self, x) -> int:
        return int(np.count_nonzero((x != 0) & (x != 1)))

    def to_backend(self, x) -> np.ndarray:
        return x

    def to_numpy(self, x) -> np.ndarray:
        return np.asarray(x)

    def asarray(self, x, dtype=np.float32) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=dtype)

    def empty(self, shape, dtype=np.float32) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def take_rows(self, src, idx, out) -> None:
        np.take(src, idx, axis=0, out=out)


HOST = HostArrays()
