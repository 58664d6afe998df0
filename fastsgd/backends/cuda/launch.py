"""Launch shapes, the kernel decorator and small launch helpers shared by every kernel family.

The simulator runs each GPU thread as a Python thread (about a millisecond each),
so there the same kernels run with small blocks: tests then cross several tile and
block edges at shapes of a few dozen elements.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

try:  # where numba-cuda keeps its settings (older releases share Numba's)
    from numba.cuda.core import config as _cuda_config
except ImportError:
    from numba.core import config as _cuda_config

#: True when kernels run in Numba's CUDA simulator (on the CPU, one Python thread per GPU thread).
SIMULATED = bool(_cuda_config.ENABLE_CUDASIM)

#: Side of the square shared-memory tiles of the matmuls: blocks of TILE x TILE threads.
TILE = 4 if SIMULATED else 16
#: Row length of a tile stored transposed: one spare column keeps shared-memory banks apart.
TILE_PAD = TILE + 1
#: Threads per block of the elementwise kernels and of the one-block reductions (a power of 2).
BLOCK = 16 if SIMULATED else 256
#: Columns per block of the bias gradient (a warp wide on a GPU, for coalesced reads) ...
COLS = 4 if SIMULATED else 32
#: ... and rows of threads summing down each column (a power of 2).
ROWS = 4 if SIMULATED else 8

# Argument types of kernel signatures.
F1, F2 = "float32[::1]", "float32[:, ::1]"
I1, I2 = "int64[::1]", "int64[:, ::1]"
R1, N1 = "float32[::1]", "int32[::1]"  # one-number results: a float sum, an int count

#: Every kernel -> the argument types it is launched with, filled by ``@kernel``.
#: Kernels compile lazily at first launch; this table lets ``numba.cuda.compile_ptx``
#: build them all ahead of time without a GPU.
KERNEL_SIGNATURES: dict[str, tuple[str, ...]] = {}


def kernel(*signatures: str):
    """``@cuda.jit`` a kernel and record the signatures it is launched with beside it."""
    def register(fn):
        KERNEL_SIGNATURES[fn.__name__] = signatures
        return cuda.jit(fn)
    return register


def ceil_div(a: int, b: int) -> int:
    """Number of blocks of ``b`` covering ``a`` items."""
    return (a + b - 1) // b


def flat(x):
    """A contiguous array as a 1-D view (n,)."""
    return x if x.ndim == 1 else x.reshape(x.size)


def rows(x):
    """A contiguous (N,) or (N, F) array as (N, F) (F = 1 for a vector)."""
    return x if x.ndim == 2 else x.reshape(x.shape[0], 1)


def launch_elementwise(kern, *arrays):
    """Run an elementwise kernel on flat views of ``arrays``: one thread per element."""
    views = [flat(a) for a in arrays]
    kern[ceil_div(views[0].shape[0], BLOCK), BLOCK](*views)


_cache = {}


def empty_vector():
    """A zero-length float32 device array, reused: 'no bias', 'no momentum' for kernels."""
    if "empty" not in _cache:
        _cache["empty"] = cuda.device_array(0, np.float32)
    return _cache["empty"]


def _result_buffers(dtype):
    """(device (1,), pinned host (1,)) buffers of ``dtype`` for one-number results, reused."""
    key = np.dtype(dtype).str
    if key not in _cache:
        _cache[key] = (cuda.device_array(1, dtype), cuda.pinned_array(1, dtype))
    return _cache[key]


def one_block(kern, *args, dtype=np.float32):
    """Run a one-block reduction kernel writing result[0]; return that number (waits for the device)."""
    device, host = _result_buffers(dtype)
    kern[1, BLOCK](*args, device)
    device.copy_to_host(host)
    return host[0]
