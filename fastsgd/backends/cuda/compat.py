"""Compatibility of numba-cuda with the installed NumPy, applied before Numba's CUDA target loads.

numba-cuda up to 0.30 registers an overload for ``np.row_stack``, which NumPy 2.5
removed; its alias ``np.vstack`` lets the CUDA target import on newer NumPy.
"""
import numpy as np

_NUMPY = tuple(int(part) for part in np.__version__.split(".")[:2])

if _NUMPY >= (2, 5) and not hasattr(np, "row_stack"):
    np.row_stack = np.vstack
