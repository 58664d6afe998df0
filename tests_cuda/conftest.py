"""The CUDA backend's tests: in Numba's CUDA simulator by default, on a GPU on request.

    pytest tests_cuda -q                              # simulator on the CPU, small shapes
    FASTSGD_CUDA_TESTS=device pytest tests_cuda -q    # a real GPU, training-size shapes

The simulator is read when Numba is first imported, so this file switches it on
before anything else can import Numba: run this directory as its own pytest
invocation (together with ``tests/`` it would come too late, and this file says so).
"""
import os
import sys

ON_DEVICE = os.environ.get("FASTSGD_CUDA_TESTS", "simulator") == "device"

if not ON_DEVICE:
    if "numba" in sys.modules and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        raise RuntimeError("tests_cuda: Numba was imported before the CUDA simulator could be "
                           "switched on; run `pytest tests_cuda` as its own pytest invocation")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
elif os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
    raise RuntimeError("tests_cuda: FASTSGD_CUDA_TESTS=device needs NUMBA_ENABLE_CUDASIM unset")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from fastsgd import backends  # noqa: E402

#: (m, k, n) as in tests/test_kernels.py: m the batch, k the in-features, n the outputs or classes.
#: In the simulator (tiles of 4, blocks of 16 threads) these cross tile, block and
#: grid-stride edges while each launch stays at a few hundred simulated threads.
SHAPES = ([(1, 1, 1), (1, 7, 33), (7, 33, 1), (64, 784, 128), (256, 784, 128), (256, 128, 10),
           (3, 784, 128), (65, 33, 10), (257, 129, 7), (1000, 31, 17)] if ON_DEVICE else
          [(1, 1, 1), (5, 9, 6), (9, 3, 2), (2, 6, 9), (20, 3, 5)])


@pytest.fixture(scope="session")
def cu():
    """The CUDA backend (an error with the reason when it is unavailable)."""
    return backends.get("cuda")


@pytest.fixture(scope="session")
def ref():
    """The NumPy reference backend."""
    return backends.get("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
