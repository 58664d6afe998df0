"""The CUDA backend's tests: in Numba's CUDA simulator by default, on a GPU on request.

    pytest tests_cuda -q                              # simulator on the CPU, small shapes
    FASTSGD_CUDA_TESTS=device pytest tests_cuda -q    # a real GPU, training-size shapes

The simulator is read when Numba is first imported, so this file switches it on
before anything else can import Numba: run this directory as its own pytest
invocation (together with ``tests/`` it would come too late, and this file says so).

``test_suite.py`` runs the shared kernel and bad-input suites of ``tests/`` on
cuda (small shapes in the simulator: ``tests/helpers.py`` reads the switch); the
other modules here test what only the device backend does.
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


@pytest.fixture(scope="session")
def cu():
    """The CUDA backend (an error with the reason when it is unavailable)."""
    return backends.get("cuda")


@pytest.fixture(scope="session")
def backend(cu):
    """The backend under test of the shared suites (tests/kernel_suite.py, bad_input_suite.py)."""
    return cu


@pytest.fixture(scope="session")
def ref():
    """The NumPy reference backend."""
    return backends.get("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
