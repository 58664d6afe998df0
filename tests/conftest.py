"""Shared fixtures: one test run per available backend, skipped with the reason otherwise."""
import numpy as np
import pytest

from fastsgd import backends

from .helpers import backend_params

__all__ = ["backend_params"]


@pytest.fixture(params=backend_params())
def backend(request):
    """A backend under test (every backend, the reference included)."""
    return backends.get(request.param)


@pytest.fixture
def kernels(backend):
    """The backend under test, by its older fixture name."""
    return backend


@pytest.fixture
def ref():
    """The NumPy reference backend."""
    return backends.get("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
