"""The kernel suite: every kernel of one backend against the NumPy reference.

Test bodies only, collected where a test module imports them (tests/test_kernels.py
on every backend here, tests_cuda/test_suite.py on cuda in the simulator or on a
GPU).  The fixture ``backend`` is the backend under test; inputs reach it through
``backend.asarray`` and results come back through ``backend.to_numpy``.  The
reference runs in float64 on the same float32 inputs, so it is the more accurate
side; tolerances grow with the length of the reduction behind each output.
"""
import numpy as np
import pytest

from fastsgd import backends
from fastsgd.backends.contract import KERNELS

from .helpers import SHAPES, assert_matches, f32, make_case, to_backend, to_host

__all__ = ["test_kernel_matches_reference", "test_kernel_matches_reference_at_other_scales",
           "test_sigmoid_and_softmax_stay_finite_at_extremes",
           "test_mse_takes_any_real_targets_of_either_shape",
           "test_kernels_accept_and_fill_out_arrays",
           "test_linear_backward_can_skip_the_input_gradient",
           "test_sgd_update_without_momentum_matches_formula",
           "test_sgd_update_with_momentum_accumulates_velocity",
           "test_accuracy_kernels_count_hits", "test_take_rows_gathers_rows_and_labels",
           "test_take_rows_checks_indices", "call", "check_against_reference"]


def call(backend, name, args):
    """Run kernel ``name`` on backend copies of ``args``; return its outputs as NumPy arrays
    (floats for losses and accuracies).

    For the in-place SGD update the outputs are the updated param and velocity.
    The reference gets the inputs converted to float64.
    """
    if backend.dtypes[-1] == np.float64:
        args = tuple(a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype == np.float32
                     else a for a in args)
    args = tuple(to_backend(backend, a) for a in args)
    result = getattr(backend, name)(*args)
    if name == "sgd_update":
        return [to_host(backend, args[0]), to_host(backend, args[5])]
    return [to_host(backend, r) for r in (result if isinstance(result, tuple) else [result])]


def check_against_reference(name, backend, ref, rng, m, k, n, scale=1.0):
    args, reduction, magnitude = make_case(name, rng, m, k, n, scale)
    with backends.skip_value_checks():  # the NaN scans have their own tests
        got = call(backend, name, args)
    for g, want in zip(got, call(ref, name, args)):
        if name.endswith("accuracy"):
            assert isinstance(g, float) and g == want
        else:
            if name.endswith("_forward") and "loss" in name or name == "mse_forward":
                assert isinstance(g, float)
            assert_matches(g, want, reduction, magnitude ** 0.5 + scale)


@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(backend, ref, rng, name, shape):
    check_against_reference(name, backend, ref, rng, *shape)


@pytest.mark.parametrize("name", ["matmul", "linear_forward", "linear_backward", "bias_backward",
                                  "cross_entropy_forward", "cross_entropy_backward", "sgd_update"])
@pytest.mark.parametrize("scale", [1e-3, 30.0])
def test_kernel_matches_reference_at_other_scales(backend, ref, rng, name, scale):
    check_against_reference(name, backend, ref, rng, *SHAPES[1], scale=scale)


@pytest.mark.parametrize("extreme", [1e4, -1e4, 88.8, -88.8, 1e-30])
def test_sigmoid_and_softmax_stay_finite_at_extremes(backend, extreme):
    x = np.full((4, 10), extreme, np.float32)
    x[:, 0] = -extreme
    xd = backend.asarray(x)
    s = backend.to_numpy(backend.sigmoid_forward(xd))
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    labels = backend.asarray(np.arange(4), dtype=np.int64)
    loss = backend.cross_entropy_forward(xd, labels)
    grad = backend.to_numpy(backend.cross_entropy_backward(xd, labels))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-6)
    preds = backend.asarray(x[:, 0].copy())
    targets = backend.asarray(np.array([1, 0, 1, 0], np.float32))
    assert np.isfinite(backend.mnist_loss_forward(preds, targets))
    assert np.isfinite(backend.to_numpy(backend.mnist_loss_backward(preds, targets))).all()
    t = backend.to_numpy(backend.tanh_forward(xd))
    assert np.isfinite(t).all() and (np.abs(t) <= 1).all()
    np.testing.assert_allclose(t[:, 1:], np.tanh(np.float64(extreme)), rtol=1e-6, atol=1e-30)


def test_mse_takes_any_real_targets_of_either_shape(backend):
    p = np.array([[1.5], [-2.0], [0.25]], np.float32)
    t = np.array([-100.5, 3.0, 0.25], np.float32)
    preds, targets = backend.asarray(p), backend.asarray(t)
    diff = p[:, 0].astype(np.float64) - t
    assert backend.mse_forward(preds, targets) == pytest.approx((diff ** 2).mean(), rel=1e-6)
    grad = backend.to_numpy(backend.mse_backward(preds, targets))
    assert grad.shape == (3, 1)
    np.testing.assert_allclose(grad[:, 0], 2 * diff / 3, rtol=1e-6)
    wide = backend.asarray(np.arange(6, dtype=np.float32).reshape(3, 2))
    assert backend.mse_forward(wide, wide) == 0
    np.testing.assert_array_equal(backend.to_numpy(backend.mse_backward(wide, wide)), 0)


def test_kernels_accept_and_fill_out_arrays(backend, rng):
    a, b = f32(rng, 5, 7), f32(rng, 7, 3)
    out = backend.asarray(np.full((5, 3), np.nan, np.float32))
    assert backend.matmul(backend.asarray(a), backend.asarray(b), out=out) is out
    assert_matches(backend.to_numpy(out), a.astype(np.float64) @ b, 7, 3)
    x = backend.asarray(f32(rng, 4, 6))
    assert backend.relu_forward(x, out=x) is x  # elementwise kernels may work in place
    assert (backend.to_numpy(x) >= 0).all()


def test_linear_backward_can_skip_the_input_gradient(backend, rng):
    x, w, dy = f32(rng, 5, 7), f32(rng, 7, 3), f32(rng, 5, 3)
    dx, dw, db = backend.linear_backward(*(backend.asarray(a) for a in (x, w, dy)),
                                         need_dx=False)
    assert dx is None
    assert_matches(backend.to_numpy(dw), x.T.astype(np.float64) @ dy, 5, 3)
    assert_matches(backend.to_numpy(db), dy.astype(np.float64).sum(0), 5)


def test_sgd_update_without_momentum_matches_formula(backend):
    p0 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    g = np.array([[0.5, 0.5], [-1.0, 2.0]], np.float32)
    p = backend.asarray(p0.copy())
    assert backend.sgd_update(p, backend.asarray(g), lr=0.1, weight_decay=0.01) is p
    np.testing.assert_allclose(backend.to_numpy(p), p0 - 0.1 * (g + 0.01 * p0), rtol=1e-6)


def test_sgd_update_with_momentum_accumulates_velocity(backend):
    p, v = backend.asarray(np.array([1.0, 2.0])), backend.zeros(2)
    g = backend.asarray(np.array([1.0, -1.0]))
    backend.sgd_update(p, g, lr=0.5, momentum=0.9, velocity=v)
    np.testing.assert_allclose(backend.to_numpy(v), [1.0, -1.0])
    np.testing.assert_allclose(backend.to_numpy(p), [0.5, 2.5])
    backend.sgd_update(p, g, lr=0.5, momentum=0.9, velocity=v)
    np.testing.assert_allclose(backend.to_numpy(v), [1.9, -1.9], rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(p), [-0.45, 3.45], rtol=1e-6)


def test_accuracy_kernels_count_hits(backend):
    preds = backend.asarray(np.array([2.0, -1.0, 0.5, -3.0], np.float32))
    targets = backend.asarray(np.array([1, 0, 0, 0], np.float32))
    assert backend.binary_accuracy(preds, targets) == 0.75
    logits = backend.asarray(np.array([[0, 5, 1], [9, 1, 1], [2, 2, 0]], np.float32))  # tie -> first
    labels = backend.asarray(np.array([1, 0, 1]), dtype=np.int64)
    assert backend.multiclass_accuracy(logits, labels) == pytest.approx(2 / 3)


def test_take_rows_gathers_rows_and_labels(backend, rng):
    x, y = f32(rng, 9, 5), rng.integers(0, 3, 9)
    idx = np.array([8, 0, 3, 3], np.int64)
    xs, ys = backend.asarray(x), backend.asarray(y, dtype=np.int64)
    ids = backend.asarray(idx, dtype=np.int64)
    xb, yb = backend.empty((4, 5)), backend.empty(4, np.int64)
    assert backend.take_rows(xs, ids, out=xb) is xb
    assert backend.take_rows(ys, ids, out=yb) is yb
    np.testing.assert_array_equal(backend.to_numpy(xb), x[idx])
    np.testing.assert_array_equal(backend.to_numpy(yb), y[idx])


def test_take_rows_checks_indices(backend, rng):
    xs, xb = backend.asarray(f32(rng, 4, 3)), backend.empty((2, 3))
    bad = backend.asarray(np.array([1, 4]), dtype=np.int64)
    with pytest.raises(IndexError, match=r"idx: expected indices in \[0, 4\)"):
        backend.take_rows(xs, bad, out=xb)
    with pytest.raises(TypeError, match="idx: expected a 1-D int64 array"):
        backend.take_rows(xs, backend.asarray(np.array([1.0]), dtype=np.float32),
                          out=backend.empty((1, 3)))
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3\)"):
        backend.take_rows(xs, bad, out=backend.empty((2, 4)))
