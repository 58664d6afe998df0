"""Launch shapes, the kernel decorator, launch helpers and the contract's entries (launchers
made from a kernel table) shared by every kernel family.

The simulator runs each GPU thread as a Python thread (about a millisecond each),
so there the same kernels run with small blocks: tests then cross several tile and
block edges at shapes of a few dozen elements.
"""
from __future__ import annotations

import inspect
from functools import partial

import numpy as np
from numba import cuda

from ..spec import KERNELS

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


def launch_threads(kern, n, *args):
    """Run ``kern`` on ``args`` with one thread per item i < n, in blocks of BLOCK threads."""
    kern[ceil_div(n, BLOCK), BLOCK](*args)


def launch_elementwise(kern, *arrays):
    """Run an elementwise kernel on flat views of ``arrays``: one thread per element."""
    views = [flat(a) for a in arrays]
    launch_threads(kern, views[0].shape[0], *views)


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
    return host[0].item()


def batch_mean(kern, batch, *args, dtype=np.float32):
    """A one-block reduction over a batch (``batch``, ``args``) divided by its length: a float."""
    return one_block(kern, batch, *args, dtype=dtype) / batch.shape[0]


# ------------------------------------------------- the contract's entries
def entry(name, run, doc):
    """``run`` as the contract's ``name``: that name, ``doc`` and the parameters ``spec.KERNELS[name]``."""
    signature = inspect.Signature([inspect.Parameter(p, inspect.Parameter.POSITIONAL_OR_KEYWORD)
                                   for p in KERNELS[name]])

    def call(*args, **named):
        if named:
            args = signature.bind(*args, **named).args
        return run(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = doc
    call.__signature__ = signature
    return call


def _entries(run, doc, kernels):
    """One entry per kernel ``_<name>_kernel``: the contract's ``name`` calling ``run(kernel, *args)``."""
    found = []
    for kern in kernels:
        kern_name = kern.py_func.__name__
        name = kern_name.removeprefix("_").removesuffix("_kernel")
        found.append(entry(name, partial(run, kern), doc.format(name=name, kernel=kern_name)))
    return tuple(found)


def elementwise_entries(*kernels):
    """The contract's entries of ``kernels``, each run on flat views of its arrays (any shape)."""
    return _entries(launch_elementwise, "The contract's {name}: ``{kernel}`` on flat views, any shape.",
                    kernels)


def _launch_rows(kern, first, *arrays):
    """Run ``kern`` with one thread per row of ``first``, its first argument."""
    launch_threads(kern, first.shape[0], first, *arrays)


def rows_entries(*kernels):
    """The contract's entries of ``kernels``, each with one thread per row of its first array."""
    return _entries(_launch_rows, "The contract's {name}: ``{kernel}``, one thread per row.", kernels)


def mean_entries(*kernels, dtype=np.float32):
    """The contract's entries of one-block reductions ``kernels``: the total / the batch, a float."""
    return _entries(partial(batch_mean, dtype=dtype),
                    "The contract's {name}: ``{kernel}``'s total over the batch / its length.", kernels)
