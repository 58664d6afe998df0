"""Every kernel on every backend against the NumPy reference: the kernel suite, plus the
contract's own checks and generated shapes and values (hypothesis).

The reference is evaluated in float64 on the same (float32) inputs, so it is the
more accurate side; tolerances grow with the length of the reduction behind each
output (fastmath and threads reorder sums).
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastsgd import backends
from fastsgd.backends.contract import KERNELS

from .helpers import assert_matches, backend_params
from .kernel_suite import *  # noqa: F403  (the kernel suite, on every backend here)
from .kernel_suite import call, check_against_reference


# --------------------------------------------------------------- the contract
def test_every_backend_module_implements_every_kernel():
    for name, status in backends.available().items():
        if status is True:
            backend = backends.get(name)
            assert backends.contract.missing_kernels(backend.module) == [], name


def test_every_backend_exposes_the_same_public_signatures():
    import inspect
    for name, status in backends.available().items():
        if status is True:
            backend = backends.get(name)
            for kernel in KERNELS:
                theirs = inspect.signature(getattr(backend, kernel))
                ours = inspect.signature(getattr(backends.get("numpy"), kernel))
                assert theirs == ours, (name, kernel)


def test_missing_kernels_names_what_a_module_lacks():
    import types
    module = types.SimpleNamespace(**{k: getattr(backends.get("numpy").module, k) for k in KERNELS})
    del module.relu_forward
    module.matmul = lambda x, y, out: None  # wrong parameter names
    assert backends.contract.missing_kernels(module) == ["matmul", "relu_forward"]


# ----------------------------------------------------------- vs the reference
@pytest.mark.parametrize("backend_name", backend_params())
@pytest.mark.parametrize("name", list(KERNELS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 40),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_reference_on_generated_shapes(backend_name, name, m, k, n, scale, seed):
    rng = np.random.default_rng(seed)
    check_against_reference(name, backends.get(backend_name), backends.get("numpy"), rng, m, k, n, scale)


@pytest.mark.parametrize("backend_name", backend_params())
@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_elementwise_kernels_match_reference_on_any_values(backend_name, x):
    backend, ref = backends.get(backend_name), backends.get("numpy")
    x = np.ascontiguousarray(x)
    dy = np.ones_like(x) * np.float32(0.5)
    for name, args in (("sigmoid_forward", (x,)), ("relu_forward", (x,)), ("relu_backward", (x, dy)),
                       ("tanh_forward", (x,))):
        got, want = call(backend, name, args)[0], call(ref, name, args)[0]
        assert_matches(got, want)
    xd = backend.asarray(x)
    assert np.isfinite(backend.to_numpy(backend.sigmoid_forward(xd))).all()
    t = backend.to_numpy(backend.tanh_forward(xd))
    assert np.isfinite(t).all() and (np.abs(t) <= 1).all()
    np.testing.assert_array_equal(np.sign(t), np.sign(x))


@pytest.mark.parametrize("backend_name", backend_params())
def test_mse_beyond_the_float32_range_is_inf_on_every_backend(backend_name):
    backend = backends.get(backend_name)
    apart = np.array([3e38, 0], np.float32), np.array([-3e38, 0], np.float32)
    one_big = np.array([2e19] + [0] * 9, np.float32), np.zeros(10, np.float32)
    for preds, targets in (apart, one_big):      # a squared error beyond 3.4e38
        assert backend.mse_forward(preds, targets) == np.inf
    near = np.array([1.5e19, 1], np.float32), np.array([0, 1], np.float32)
    assert backend.mse_forward(*near) == pytest.approx(1.125e38, rel=1e-6)
