"""Inputs and tolerances for checking CUDA kernels against the NumPy reference.

The cases are those of tests/test_kernels.py, from tests/kernel_cases.py (numpy
only: the GPU machine has no hypothesis).
"""
import numpy as np

from tests.kernel_cases import F32_EPS, assert_matches, f32, make_case

__all__ = ["F32_EPS", "assert_matches", "f32", "make_case", "reference"]


def reference(ref, name, args):
    """Kernel ``name`` of the NumPy reference on float64 copies of ``args``; its outputs."""
    args = tuple(a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32
                 else a.copy() if isinstance(a, np.ndarray) else a for a in args)
    result = getattr(ref, name)(*args)
    if name == "sgd_update":
        return [args[0], args[5]]
    return list(result) if isinstance(result, tuple) else [result]
