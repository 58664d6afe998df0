"""The array adapter of the CUDA backend: Numba device arrays, checked on the device.

Shape, dtype and layout come from the array's metadata without a transfer; the
value checks (NaN/Inf, label ranges, 0/1 targets) each run a small kernel of
``checks.py`` and read back one number.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from . import checks
from .launch import SIMULATED, rows


def _device_array_type():
    """The class of Numba's device arrays (the simulator's stand-in when simulated)."""
    if SIMULATED:
        from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
        return FakeCUDAArray
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray


DeviceArray = _device_array_type()


def is_device_array(x) -> bool:
    """Whether ``x`` is a Numba CUDA device array."""
    return isinstance(x, DeviceArray)


def _span(x) -> tuple[int, int]:
    """[first byte, past the last byte) of a C-contiguous device array."""
    if SIMULATED:
        start = x._ary.__array_interface__["data"][0]
    else:
        start = x.__cuda_array_interface__["data"][0]
    return start, start + x.size * x.dtype.itemsize


class DeviceArrays:
    """The adapter for Numba CUDA device arrays.

    Read-only inputs may also be C-contiguous NumPy arrays: the contract checks
    them on the host and copies them over (``to_backend``) on every call, which
    is convenient in a notebook and slow in a loop.
    """

    accepts = "a numpy.ndarray or a numba CUDA device array"
    name = "a numba CUDA device array"
    device = True

    def is_array(self, x) -> bool:
        return is_device_array(x)

    def contiguous(self, x) -> bool:
        return bool(x.is_c_contiguous())

    def writable(self, x) -> bool:
        return True

    def may_overlap(self, a, b) -> bool:
        if not (a.size and b.size):
            return False
        if SIMULATED:
            return bool(np.may_share_memory(a._ary, b._ary))
        (a0, a1), (b0, b1) = _span(a), _span(b)
        return a0 < b1 and b0 < a1

    def same_memory(self, a, b) -> bool:
        return _span(a) == _span(b)

    def all_finite(self, x) -> bool:
        return checks.all_finite(x)

    def count_outside(self, x, low, high) -> int:
        return checks.count_outside(x, low, high)

    def count_not_binary(self, x) -> int:
        return checks.count_not_binary(x)

    def to_backend(self, x):
        return cuda.to_device(x)

    def to_numpy(self, x) -> np.ndarray:
        return x.copy_to_host() if is_device_array(x) else np.asarray(x)

    def asarray(self, x, dtype=np.float32):
        """A device array already so is returned as is, a GPU array of another library
        (anything with ``__cuda_array_interface__``) is wrapped without a copy when it
        fits, anything else is copied to the device (once)."""
        if not SIMULATED and not is_device_array(x) and hasattr(x, "__cuda_array_interface__"):
            x = cuda.as_cuda_array(x)
        if is_device_array(x):
            if x.dtype == dtype and x.is_c_contiguous():
                return x
            x = x.copy_to_host()
        return cuda.to_device(np.ascontiguousarray(x, dtype=dtype))

    def empty(self, shape, dtype=np.float32):
        return cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape, dtype=np.float32):
        return cuda.to_device(np.zeros(shape, dtype=dtype))

    def take_rows(self, src, idx, out) -> None:
        checks.take_rows(rows(src), idx, rows(out))


DEVICE = DeviceArrays()
