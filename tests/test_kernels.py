"""Every kernel on every backend against the NumPy reference.

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

from .conftest import backend_params
from .kernel_cases import assert_matches, f32, make_case


def call(kernels, name, args):
    """Run kernel ``name`` on copies of ``args``; return its outputs as float64 arrays.

    For the in-place SGD update the outputs are the updated param and velocity.
    The reference gets the inputs converted to float64.
    """
    if kernels.dtypes[-1] == np.float64:
        args = tuple(a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32
                     else a for a in args)
    args = tuple(a.copy() if isinstance(a, np.ndarray) else a for a in args)
    result = getattr(kernels, name)(*args)
    if name == "sgd_update":
        return [args[0], args[5]]
    return list(result) if isinstance(result, tuple) else [result]


def check_against_reference(name, kernels, ref, rng, m, k, n, scale=1.0):
    args, reduction, magnitude = make_case(name, rng, m, k, n, scale)
    for got, want in zip(call(kernels, name, args), call(ref, name, args)):
        if name.endswith("accuracy"):
            assert got == want
        else:
            assert_matches(got, want, reduction, magnitude ** 0.5 + scale)


ODD_SHAPES = [(1, 1, 1), (1, 7, 33), (7, 33, 1), (33, 1, 7), (64, 784, 30), (3, 784, 128),
              (65, 33, 10), (256, 129, 7)]


# --------------------------------------------------------------- the contract
def test_every_backend_module_implements_every_kernel():
    for name, status in backends.available().items():
        if status is True:
            kernels = backends.get(name)
            assert backends.contract.missing_kernels(kernels._impl) == [], name


def test_every_backend_exposes_the_same_public_signatures():
    import inspect
    for name, status in backends.available().items():
        if status is True:
            kernels = backends.get(name)
            for kernel in KERNELS:
                theirs = inspect.signature(getattr(kernels, kernel))
                ours = inspect.signature(getattr(backends.get("numpy"), kernel))
                assert theirs == ours, (name, kernel)


def test_missing_kernels_names_what_a_module_lacks():
    import types
    module = types.SimpleNamespace(**{k: getattr(backends.get("numpy")._impl, k) for k in KERNELS})
    del module.relu_forward
    module.matmul = lambda x, y, out: None  # wrong parameter names
    assert backends.contract.missing_kernels(module) == ["matmul", "relu_forward"]


# ----------------------------------------------------------- vs the reference
@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("shape", ODD_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference_on_odd_shapes(kernels, ref, rng, name, shape):
    m, k, n = shape
    check_against_reference(name, kernels, ref, rng, m, k, n)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("name", list(KERNELS))
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(m=st.integers(1, 70), k=st.integers(1, 70), n=st.integers(1, 40),
       scale=st.sampled_from([1e-3, 1.0, 30.0]), seed=st.integers(0, 2**32 - 1))
def test_kernel_matches_reference_on_generated_shapes(backend, name, m, k, n, scale, seed):
    rng = np.random.default_rng(seed)
    check_against_reference(name, backends.get(backend), backends.get("numpy"), rng, m, k, n, scale)


@pytest.mark.parametrize("backend", backend_params())
@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=st.floats(-1e4, 1e4, width=32)))
def test_elementwise_kernels_match_reference_on_any_values(backend, x):
    kernels, ref = backends.get(backend), backends.get("numpy")
    x = np.ascontiguousarray(x)
    dy = np.ones_like(x) * np.float32(0.5)
    for name, args in (("sigmoid_forward", (x,)), ("relu_forward", (x,)), ("relu_backward", (x, dy)),
                       ("tanh_forward", (x,))):
        got, want = call(kernels, name, args)[0], call(ref, name, args)[0]
        assert_matches(got, want)
    assert np.isfinite(kernels.sigmoid_forward(x)).all()
    t = kernels.tanh_forward(x)
    assert np.isfinite(t).all() and (np.abs(t) <= 1).all()
    np.testing.assert_array_equal(np.sign(t), np.sign(x))


@pytest.mark.parametrize("extreme", [1e4, -1e4, 88.8, -88.8, 1e-30])
def test_sigmoid_and_softmax_stay_finite_at_extremes(kernels, extreme):
    x = np.full((4, 10), extreme, np.float32)
    x[:, 0] = -extreme
    s = kernels.sigmoid_forward(x)
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    labels = np.arange(4, dtype=np.int64)
    loss = kernels.cross_entropy_forward(x, labels)
    grad = kernels.cross_entropy_backward(x, labels)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-6)
    preds, targets = x[:, 0].copy(), np.array([1, 0, 1, 0], np.float32)
    assert np.isfinite(kernels.mnist_loss_forward(preds, targets))
    assert np.isfinite(kernels.mnist_loss_backward(preds, targets)).all()
    t = kernels.tanh_forward(x)
    assert np.isfinite(t).all() and (np.abs(t) <= 1).all()
    np.testing.assert_allclose(t[:, 1:], np.tanh(np.float64(extreme)), rtol=1e-6, atol=1e-30)


def test_mse_takes_any_real_targets_of_either_shape(kernels):
    preds = np.array([[1.5], [-2.0], [0.25]], np.float32)
    targets = np.array([-100.5, 3.0, 0.25], np.float32)
    diff = preds[:, 0].astype(np.float64) - targets
    assert kernels.mse_forward(preds, targets) == pytest.approx((diff ** 2).mean(), rel=1e-6)
    grad = kernels.mse_backward(preds, targets)
    assert grad.shape == (3, 1)
    np.testing.assert_allclose(grad[:, 0], 2 * diff / 3, rtol=1e-6)
    wide = np.arange(6, dtype=np.float32).reshape(3, 2)
    assert kernels.mse_forward(wide, wide) == 0
    np.testing.assert_array_equal(kernels.mse_backward(wide, wide), 0)


def test_kernels_accept_and_fill_out_arrays(kernels, rng):
    a, b = f32(rng, 5, 7), f32(rng, 7, 3)
    out = np.full((5, 3), np.nan, np.float32)
    assert kernels.matmul(a, b, out=out) is out
    assert_matches(out, a.astype(np.float64) @ b, 7, 3)
    x = f32(rng, 4, 6)
    assert kernels.relu_forward(x, out=x) is x  # elementwise kernels may work in place
    assert (x >= 0).all()


def test_linear_backward_can_skip_the_input_gradient(kernels, rng):
    x, w, dy = f32(rng, 5, 7), f32(rng, 7, 3), f32(rng, 5, 3)
    dx, dw, db = kernels.linear_backward(x, w, dy, need_dx=False)
    assert dx is None
    assert_matches(dw, x.T.astype(np.float64) @ dy, 5, 3)
    assert_matches(db, dy.astype(np.float64).sum(0), 5)


def test_sgd_update_without_momentum_matches_formula(kernels):
    p = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    g = np.array([[0.5, 0.5], [-1.0, 2.0]], np.float32)
    expected = p - 0.1 * (g + 0.01 * p)
    kernels.sgd_update(p, g, lr=0.1, weight_decay=0.01)
    np.testing.assert_allclose(p, expected, rtol=1e-6)


def test_sgd_update_with_momentum_accumulates_velocity(kernels):
    p = np.array([1.0, 2.0], np.float32)
    v = np.zeros(2, np.float32)
    g = np.array([1.0, -1.0], np.float32)
    kernels.sgd_update(p, g, lr=0.5, momentum=0.9, velocity=v)
    np.testing.assert_allclose(v, [1.0, -1.0])
    np.testing.assert_allclose(p, [0.5, 2.5])
    kernels.sgd_update(p, g, lr=0.5, momentum=0.9, velocity=v)
    np.testing.assert_allclose(v, [1.9, -1.9], rtol=1e-6)
    np.testing.assert_allclose(p, [-0.45, 3.45], rtol=1e-6)


def test_accuracy_kernels_count_hits(kernels):
    preds = np.array([2.0, -1.0, 0.5, -3.0], np.float32)
    targets = np.array([1, 0, 0, 0], np.float32)
    assert kernels.binary_accuracy(preds, targets) == 0.75
    logits = np.array([[0, 5, 1], [9, 1, 1], [2, 2, 0]], np.float32)  # tie -> first maximum
    assert kernels.multiclass_accuracy(logits, np.array([1, 0, 1])) == pytest.approx(2 / 3)
