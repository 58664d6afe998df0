"""Shared fixtures: one test run per available backend, skipped with the reason otherwise."""
import numpy as np
import pytest

from fastsgd import backends


#: Backends whose arrays live on a device; their own suite (tests_cuda) runs them.
DEVICE_BACKENDS = {"cuda": "the cuda backend takes device arrays: tests_cuda covers it"}


def backend_params():
    """Every host backend as a pytest param; an unavailable one is skipped with its reason."""
    params = []
    for name, status in backends.available().items():
        if name in DEVICE_BACKENDS:
            reason = DEVICE_BACKENDS[name]
        else:
            reason = None if status is True else f"{name} unavailable: {status}"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
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
