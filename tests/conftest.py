"""Shared fixtures: one test run per available backend, skipped with the reason otherwise."""
import numpy as np
import pytest

from fastsgd import backends


def backend_params():
    """Every backend as a pytest param; an unavailable one is skipped with its reason."""
    params = []
    for name, status in backends.available().items():
        marks = [] if status is True else [pytest.mark.skip(reason=f"{name} unavailable: {status}")]
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=backend_params())
def kernels(request):
    """A backend under test (every backend, the reference included)."""
    return backends.get(request.param)


@pytest.fixture
def ref():
    """The NumPy reference backend."""
    return backends.get("numpy")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
