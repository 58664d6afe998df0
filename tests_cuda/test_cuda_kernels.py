"""Every CUDA kernel against the NumPy reference, plus the device-array rules of the backend.

Inputs are moved to the device first (device arrays in), results copied back
(device arrays out).  Cases and tolerances as in tests/test_kernels.py (see cases.py).
"""
import numpy as np
import pytest

from fastsgd import backends
from fastsgd.backends import cuda as cuda_backend
from fastsgd.backends.contract import KERNELS
from .cases import F32_EPS, assert_matches, f32, make_case, reference
from .conftest import ON_DEVICE, SHAPES


def to_device(cu, args):
    """Arrays in ``args`` copied to the device, other values as they are."""
    return tuple(cu.asarray(a.copy(), dtype=a.dtype) if isinstance(a, np.ndarray) else a
                 for a in args)


def run(cu, name, args):
    """Kernel ``name`` on device copies of ``args``; its outputs as NumPy arrays or floats."""
    dev = to_device(cu, args)
    result = getattr(cu, name)(*dev)
    outs = [dev[0], dev[5]] if name == "sgd_update" else \
        list(result) if isinstance(result, tuple) else [result]
    return [cu.to_numpy(o) if cuda_backend.is_device_array(o) else o for o in outs]


def check_against_reference(cu, ref, name, rng, m, k, n, scale=1.0):
    args, reduction, magnitude = make_case(name, rng, m, k, n, scale)
    with backends.skip_value_checks():  # the NaN scans have their own tests; this keeps the simulator quick
        got = run(cu, name, args)
    for g, want in zip(got, reference(ref, name, args)):
        if name.endswith("accuracy"):
            assert isinstance(g, float) and g == want
        elif name.endswith("loss_forward") or name == "mse_forward":
            assert isinstance(g, float)
            assert_matches(g, want, reduction, magnitude ** 0.5 + scale)
        else:
            assert_matches(g, want, reduction, magnitude ** 0.5 + scale)


# --------------------------------------------------------------- the backend
def test_cuda_is_available_and_implements_the_contract(cu):
    assert backends.available()["cuda"] is True
    assert isinstance(cu, cuda_backend.CudaBackend)
    assert backends.contract.missing_kernels(cu._impl) == []
    assert cuda_backend.SIMULATED is not ON_DEVICE


def test_every_kernel_has_compile_signatures():
    """Every kernel has PTX signatures, or is listed as device-only with the reason."""
    assert sorted(cuda_backend.kernels()) == sorted(
        [*cuda_backend.KERNEL_SIGNATURES, *cuda_backend.DEVICE_ONLY_KERNELS])


# ----------------------------------------------------------- vs the reference
@pytest.mark.parametrize("name", list(KERNELS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kernel_matches_reference(cu, ref, rng, name, shape):
    check_against_reference(cu, ref, name, rng, *shape)


@pytest.mark.parametrize("name", ["matmul", "linear_forward", "linear_backward", "bias_backward",
                                  "cross_entropy_forward", "cross_entropy_backward", "sgd_update"])
@pytest.mark.parametrize("scale", [1e-3, 30.0])
def test_kernel_matches_reference_at_other_scales(cu, ref, rng, name, scale):
    check_against_reference(cu, ref, name, rng, *SHAPES[1], scale=scale)


@pytest.mark.parametrize("extreme", [1e4, -1e4, 88.8, -88.8, 1e-30])
def test_sigmoid_tanh_and_softmax_stay_finite_at_extremes(cu, extreme):
    x = np.full((4, 10), extreme, np.float32)
    x[:, 0] = -extreme
    s = cu.to_numpy(cu.sigmoid_forward(cu.asarray(x)))
    assert np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all()
    t = cu.to_numpy(cu.tanh_forward(cu.asarray(x)))
    assert np.isfinite(t).all() and (np.abs(t) <= 1).all()
    np.testing.assert_allclose(t, np.tanh(x.astype(np.float64)), rtol=4 * F32_EPS, atol=1e-38)
    z, labels = cu.asarray(x), cu.asarray(np.arange(4), dtype=np.int64)
    loss = cu.cross_entropy_forward(z, labels)
    grad = cu.to_numpy(cu.cross_entropy_backward(z, labels))
    assert np.isfinite(loss) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad.sum(axis=1), 0, atol=1e-6)
    preds, targets = cu.asarray(x[:, 0].copy()), cu.asarray(np.array([1, 0, 1, 0], np.float32))
    assert np.isfinite(cu.mnist_loss_forward(preds, targets))
    assert np.isfinite(cu.to_numpy(cu.mnist_loss_backward(preds, targets))).all()


def test_accuracy_kernels_count_hits(cu):
    preds = cu.asarray(np.array([2.0, -1.0, 0.5, -3.0], np.float32))
    targets = cu.asarray(np.array([1, 0, 0, 0], np.float32))
    assert cu.binary_accuracy(preds, targets) == 0.75
    logits = cu.asarray(np.array([[0, 5, 1], [9, 1, 1], [2, 2, 0]], np.float32))  # tie -> first
    assert cu.multiclass_accuracy(logits, cu.asarray(np.array([1, 0, 1]), np.int64)) == pytest.approx(2 / 3)


def test_mse_takes_a_vector_or_a_matrix_of_predictions(cu, ref, rng):
    p, t = f32(rng, 6, 1), f32(rng, 6)  # (B, 1) predictions against (B,) targets
    dp = cu.mse_backward(cu.asarray(p), cu.asarray(t))
    assert tuple(dp.shape) == (6, 1)
    assert_matches(cu.to_numpy(dp), ref.mse_backward(p, t), 6)
    assert_matches(cu.mse_forward(cu.asarray(p), cu.asarray(t)), ref.mse_forward(p, t), 6)
    z, y = f32(rng, 3, 4), f32(rng, 3, 4)
    assert isinstance(cu.mse_forward(cu.asarray(z), cu.asarray(y)), float)
    assert_matches(cu.mse_forward(cu.asarray(z), cu.asarray(y)), ref.mse_forward(z, y), 12)


def test_mnist_loss_takes_a_column_of_predictions(cu, ref, rng):
    p, t = f32(rng, 6, 1), rng.integers(0, 2, (6, 1)).astype(np.float32)
    dp = cu.mnist_loss_backward(cu.asarray(p), cu.asarray(t))
    assert tuple(dp.shape) == (6, 1)
    assert_matches(cu.to_numpy(dp), ref.mnist_loss_backward(p, t))
    assert_matches(cu.mnist_loss_forward(cu.asarray(p), cu.asarray(t)), ref.mnist_loss_forward(p, t))


# ------------------------------------------------------------ device arrays
def test_results_are_device_arrays_and_out_arrays_are_filled(cu, rng):
    a, b = f32(rng, 5, 7), f32(rng, 7, 3)
    out = cu.asarray(np.full((5, 3), np.nan, np.float32))
    assert cu.matmul(cu.asarray(a), cu.asarray(b), out=out) is out
    assert_matches(cu.to_numpy(out), a.astype(np.float64) @ b, 7, 3)
    x = cu.asarray(f32(rng, 4, 6))
    assert cu.relu_forward(x, out=x) is x  # elementwise kernels may work in place
    assert (cu.to_numpy(x) >= 0).all()


def test_numpy_inputs_are_copied_to_the_device(cu, rng):
    a, b = f32(rng, 3, 4), f32(rng, 4, 2)
    out = cu.matmul(a, b)
    assert cuda_backend.is_device_array(out)
    assert_matches(cu.to_numpy(out), a.astype(np.float64) @ b, 4, 2)
    z, labels = f32(rng, 3, 4), np.array([0, 3, 1])
    assert cu.multiclass_accuracy(z, labels) == backends.get("numpy").multiclass_accuracy(z, labels)


def test_asarray_keeps_device_arrays_and_converts_the_rest(cu):
    x = cu.asarray([[1, 2], [3, 4]])
    assert cuda_backend.is_device_array(x) and x.dtype == np.float32
    assert cu.asarray(x) is x
    y = cu.asarray(x, dtype=np.int64)
    assert y.dtype == np.int64 and cu.to_numpy(y).tolist() == [[1, 2], [3, 4]]
    assert cu.to_numpy(cu.zeros((2, 3))).tolist() == [[0, 0, 0]] * 2
    e = cu.empty(4, np.int64)
    assert cuda_backend.is_device_array(e) and tuple(e.shape) == (4,) and e.dtype == np.int64
    assert isinstance(cu.to_numpy(x), np.ndarray)


@pytest.mark.skipif(not ON_DEVICE, reason="needs a GPU: simulated arrays have no CUDA array interface")
def test_asarray_wraps_gpu_arrays_of_other_libraries_without_a_copy(cu):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA device here")
    t = torch.arange(6, dtype=torch.float32, device="cuda").reshape(2, 3)
    d = cu.asarray(t)
    assert cuda_backend.is_device_array(d)
    assert d.__cuda_array_interface__["data"][0] == t.data_ptr()
    np.testing.assert_array_equal(cu.to_numpy(cu.relu_forward(d)), t.cpu().numpy())


def test_linear_backward_can_skip_the_input_gradient(cu, rng):
    x, w, dy = f32(rng, 5, 7), f32(rng, 7, 3), f32(rng, 5, 3)
    dx, dw, db = cu.linear_backward(*to_device(cu, (x, w, dy)), need_dx=False)
    assert dx is None
    assert_matches(cu.to_numpy(dw), x.T.astype(np.float64) @ dy, 5, 3)
    assert_matches(cu.to_numpy(db), dy.astype(np.float64).sum(0), 5)


def test_sgd_update_with_momentum_accumulates_velocity(cu):
    p, v = cu.asarray(np.array([1.0, 2.0])), cu.zeros(2)
    g = cu.asarray(np.array([1.0, -1.0]))
    assert cu.sgd_update(p, g, lr=0.5, momentum=0.9, velocity=v) is p
    np.testing.assert_allclose(cu.to_numpy(v), [1.0, -1.0])
    np.testing.assert_allclose(cu.to_numpy(p), [0.5, 2.5])
    cu.sgd_update(p, g, lr=0.5, momentum=0.9, velocity=v)
    np.testing.assert_allclose(cu.to_numpy(v), [1.9, -1.9], rtol=1e-6)
    np.testing.assert_allclose(cu.to_numpy(p), [-0.45, 3.45], rtol=1e-6)


def test_sgd_update_without_momentum_matches_formula(cu):
    p0 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    g = np.array([[0.5, 0.5], [-1.0, 2.0]], np.float32)
    p = cu.asarray(p0)
    cu.sgd_update(p, cu.asarray(g), lr=0.1, weight_decay=0.01)
    np.testing.assert_allclose(cu.to_numpy(p), p0 - 0.1 * (g + 0.01 * p0), rtol=1e-6)


# ------------------------------------------------------------------ gather
def test_take_rows_gathers_rows_and_labels(cu, rng):
    x, y = f32(rng, 9, 5), rng.integers(0, 3, 9)
    idx = np.array([8, 0, 3, 3], np.int64)
    xs, ys, ids = cu.asarray(x), cu.asarray(y, dtype=np.int64), cu.asarray(idx, dtype=np.int64)
    xb, yb = cu.empty((4, 5)), cu.empty(4, np.int64)
    assert cu.take_rows(xs, ids, out=xb) is xb
    assert cu.take_rows(ys, ids, out=yb) is yb
    np.testing.assert_array_equal(cu.to_numpy(xb), x[idx])
    np.testing.assert_array_equal(cu.to_numpy(yb), y[idx])


def test_take_rows_checks_indices_unless_value_checks_are_skipped(cu, rng):
    xs, xb = cu.asarray(f32(rng, 4, 3)), cu.empty((2, 3))
    bad = cu.asarray(np.array([1, 4]), dtype=np.int64)
    with pytest.raises(IndexError, match=r"idx: expected indices in \[0, 4\)"):
        cu.take_rows(xs, bad, out=xb)
    with backends.skip_value_checks():  # never reads out of bounds: a zero row instead
        cu.take_rows(xs, bad, out=xb)
    assert (cu.to_numpy(xb)[1] == 0).all()
    with pytest.raises(TypeError, match="idx: expected a 1-D int64 array"):
        cu.take_rows(xs, cu.asarray(np.array([1.0]), dtype=np.float32), out=xb[:1])
    with pytest.raises(ValueError, match=r"out: expected shape \(2, 3\)"):
        cu.take_rows(xs, bad, out=cu.empty((2, 4)))
