"""The CUDA backend: every kernel of the contract as a ``numba.cuda`` kernel plus its launcher.

Device arrays in, device arrays out: Numba CUDA device arrays
(``numba.cuda.to_device``, ``backend.asarray``), float32 (int64 for labels and
gather indices), C-contiguous.  Outputs and arrays updated in place must be
device arrays; read-only inputs may also be NumPy arrays (copied over on every
call).  Losses and accuracies return Python floats, and the value checks (NaN/Inf
scan, label and target ranges) read one number back, so those calls wait for the
device; inside ``skip_value_checks`` the other kernels return once queued.

Layout:
    compat.py       the NumPy compatibility shim numba-cuda needs (imported first)
    launch.py       launch shapes, ``@kernel`` (records each kernel's PTX signatures),
                    launch helpers, the launchers made from kernel tables
    device.py       inline device functions: sigmoid, row_max_sum_exp, tree_sum,
                    block_sum; kernels made of a per-element term
    matmul.py       matmul, linear and bias-gradient kernels
    elementwise.py  activations
    losses.py       losses forward and backward
    optimizer.py    the SGD update and the accuracies
    checks.py       row gathering and the device-side value checks
    program.py      the fused layer program (a whole epoch in one cooperative launch)
    arrays.py       the array adapter the contract validates through

Dimension letters as in ``contract.py``.  Importing this package needs only
``numba-cuda``; ``make_backend()`` raises ``ImportError`` with the reason (no
driver, no GPU) when no device can be used, unless the CUDA simulator is on
(``NUMBA_ENABLE_CUDASIM=1`` set before Numba is first imported).
"""
from __future__ import annotations

import importlib.util

from . import compat  # noqa: F401  (before Numba's CUDA target loads)

if importlib.util.find_spec("numba_cuda") is None:
    raise ImportError("numba-cuda is not installed (pip install 'fastsgd[cuda]')")

import sys

import numpy as np
from numba import cuda

from ..contract import Backend
from .arrays import DEVICE, DeviceArrays, is_device_array
from .checks import all_finite, count_not_binary, count_outside, take_rows
from .elementwise import ENTRIES as _ACTIVATIONS
from .launch import BLOCK, KERNEL_SIGNATURES, SIMULATED, TILE
from .losses import ENTRIES as _LOSSES
from .matmul import (
    bias_backward,
    linear_backward,
    linear_forward,
    matmul,
    matmul_backward_input,
    matmul_backward_weight,
)
from .optimizer import binary_accuracy, multiclass_accuracy, sgd_update
from .program import DEVICE_ONLY_KERNELS, EPOCH_BLOCK, train_epoch

globals().update(_ACTIVATIONS)  # the activations' and losses' entries under the contract's names
globals().update(_LOSSES)

#: The modules that define kernels.
KERNEL_MODULES = tuple(importlib.import_module(f"{__name__}.{module}") for module in (
    "matmul", "elementwise", "losses", "optimizer", "checks", "program"))


def _is_kernel(obj) -> bool:
    """Whether ``obj`` is a ``@cuda.jit`` kernel (not a device function), on a device or simulated."""
    if type(obj).__name__ == "FakeCUDAKernel":
        return not obj._device
    return type(obj).__name__ == "CUDADispatcher" and not obj.targetoptions.get("device")


def kernels() -> dict:
    """Every ``@cuda.jit`` kernel of the package, by name."""
    return {name: obj for module in KERNEL_MODULES for name, obj in vars(module).items()
            if _is_kernel(obj)}


def compile_all_ptx(cc=(9, 0)) -> dict[tuple[str, str], str]:
    """PTX of every kernel for every signature in ``KERNEL_SIGNATURES``, for compute capability ``cc``.

    Needs NVVM and NVRTC (``pip install 'fastsgd[cuda-ptx]'``) but no GPU or driver.
    """
    found = kernels()
    ptx = {}
    for name, signatures in KERNEL_SIGNATURES.items():
        for signature in signatures:
            ptx[name, signature], _ = cuda.compile_ptx(found[name].py_func, signature, cc=cc)
    return ptx


def unavailable_reason() -> str | None:
    """Why no CUDA device can be used here, or None when one can (or the simulator is on)."""
    if SIMULATED or cuda.is_available():
        return None
    try:
        cuda.current_context()
    except Exception as exc:  # the driver's own words: no library, no device, too old
        text = " ".join(str(exc).split()).rstrip(" :")
        return f"no usable CUDA GPU: {text}" if text else f"no usable CUDA GPU ({type(exc).__name__})"
    return "no usable CUDA GPU was found"


class CudaBackend(Backend):
    """The contract's kernels on a CUDA GPU: the contract's checks through ``DeviceArrays``."""

    def __init__(self, name="cuda", impl=None, dtypes=(np.float32,), arrays=DEVICE):
        super().__init__(name, sys.modules[__name__] if impl is None else impl, dtypes, arrays)


def make_backend() -> CudaBackend:
    """The CUDA backend; ``ImportError`` with the reason when no device can be used."""
    reason = unavailable_reason()
    if reason:
        raise ImportError(reason)
    return CudaBackend()


__all__ = [
    "make_backend", "CudaBackend", "DeviceArrays", "KERNEL_SIGNATURES", "DEVICE_ONLY_KERNELS",
    "compile_all_ptx", "kernels", "unavailable_reason", "is_device_array",
    "all_finite", "count_outside", "count_not_binary", "take_rows",
    "SIMULATED", "TILE", "BLOCK", "EPOCH_BLOCK",
    # the launchers under the contract's names
    "matmul", "matmul_backward_input", "matmul_backward_weight", "bias_backward",
    "linear_forward", "linear_backward", *_ACTIVATIONS, *_LOSSES,
    "sgd_update", "binary_accuracy", "multiclass_accuracy", "train_epoch",
]
