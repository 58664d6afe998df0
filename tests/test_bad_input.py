"""Bad input to every public kernel gets a clear exception naming the argument."""
import numpy as np
import pytest

from fastsgd import backends


def f32(*shape):
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def with_nan(x):
    x = x.copy()
    x.flat[0] = np.nan
    return x


def read_only(x):
    x = x.copy()
    x.flags.writeable = False
    return x


A, B, OUT = f32(4, 5), f32(5, 3), f32(4, 3)
P, T = f32(4), np.array([1, 0, 1, 0], np.float32)
Z, L = f32(4, 3), np.array([0, 2, 1, 0], np.int64)

# (kernel, args, kwargs, exception, text the message must contain)
CASES = [
    ("matmul", (A[0], B), {}, ValueError, "a: expected a 2-D array"),
    ("matmul", (A, f32(4, 3)), {}, ValueError, "b.shape[0] is 4 but a.shape[1] is 5"),
    ("matmul", (A.astype(np.int32), B), {}, TypeError, "a: expected dtype"),
    ("matmul", (A, B.astype(np.float16)), {}, TypeError, "b: expected dtype"),
    ("matmul", (A.tolist(), B), {}, TypeError, "a: expected a numpy.ndarray"),
    ("matmul", (f32(4, 10)[:, ::2], B), {}, ValueError, "a: expected a C-contiguous"),
    ("matmul", (f32(0, 5), B), {}, ValueError, "a: empty array"),
    ("matmul", (with_nan(A), B), {}, ValueError, "a: contains NaN or Inf"),
    ("matmul", (A, B * np.float32(np.inf)), {}, ValueError, "b: contains NaN or Inf"),
    ("matmul", (A, B), {"out": f32(3, 4)}, ValueError, "out: expected shape (4, 3)"),
    ("matmul", (A, B), {"out": read_only(OUT)}, ValueError, "out: expected a writable"),
    ("matmul", (A, B), {"out": OUT.astype(np.float64)}, TypeError, "out: expected dtype float32"),
    ("matmul", (A, B), {"out": A[:, :3]}, ValueError, "out: expected a C-contiguous"),
    ("matmul_backward_input", (OUT, f32(5, 4)), {}, ValueError, "w.shape[1] is 4 but dy.shape[1] is 3"),
    ("matmul_backward_input", (OUT, B), {"dx": f32(4, 4)}, ValueError, "dx: expected shape (4, 5)"),
    ("matmul_backward_weight", (A, f32(3, 3)), {}, ValueError, "dy.shape[0] is 3 but x.shape[0] is 4"),
    ("matmul_backward_weight", (A, with_nan(OUT)), {}, ValueError, "dy: contains NaN"),
    ("bias_backward", (P,), {}, ValueError, "dy: expected a 2-D array"),
    ("bias_backward", (OUT,), {"db": f32(4)}, ValueError, "db: expected shape (3,)"),
    ("linear_forward", (A, B, f32(4)), {}, ValueError, "b.shape[0] is 4 but w.shape[1] is 3"),
    ("linear_forward", (A, B, f32(1, 3)), {}, ValueError, "b: expected a 1-D array"),
    ("linear_forward", (A, f32(6, 3), f32(3)), {}, ValueError, "w.shape[0] is 6 but x.shape[1] is 5"),
    ("linear_backward", (A, B, f32(4, 2)), {}, ValueError, "dy.shape[1] is 2 but w.shape[1] is 3"),
    ("linear_backward", (A, B, f32(2, 3)), {}, ValueError, "dy.shape[0] is 2 but x.shape[0] is 4"),
    ("linear_backward", (A, B, OUT), {"dw": f32(3, 5)}, ValueError, "dw: expected shape (5, 3)"),
    ("sigmoid_forward", (A.astype(np.int64),), {}, TypeError, "x: expected dtype"),
    ("sigmoid_forward", (f32(0),), {}, ValueError, "x: empty array"),
    ("sigmoid_forward", (A,), {"out": read_only(A)}, ValueError, "out: expected a writable"),
    ("sigmoid_backward", (A, f32(4, 4)), {}, ValueError, "dy.shape is (4, 4) but y.shape is (4, 5)"),
    ("relu_forward", (with_nan(A),), {}, ValueError, "x: contains NaN"),
    ("tanh_forward", (A.astype(np.float16),), {}, TypeError, "x: expected dtype"),
    ("tanh_forward", (A,), {"out": f32(4, 4)}, ValueError, "out: expected shape (4, 5)"),
    ("tanh_backward", (A, f32(5, 4)), {}, ValueError, "dy.shape is (5, 4) but y.shape is (4, 5)"),
    ("mse_forward", (P, f32(5)), {}, ValueError, "targets: expected shape (4,) to match preds"),
    ("mse_forward", (Z, f32(4)), {}, ValueError, "targets: expected shape (4, 3) to match preds"),
    ("mse_forward", (f32(2, 2, 2), f32(2, 2, 2)), {}, ValueError, "preds: expected shape (B,) or (B, O)"),
    ("mse_forward", (P, with_nan(P)), {}, ValueError, "targets: contains NaN"),
    ("mse_backward", (Z, Z), {"dpreds": f32(4)}, ValueError, "dpreds: expected shape (4, 3)"),
    ("relu_forward", (A.T,), {}, ValueError, "x: expected a C-contiguous"),
    ("relu_backward", (A, f32(5, 4)), {}, ValueError, "dy.shape is (5, 4) but x.shape is (4, 5)"),
    ("mnist_loss_forward", (P, np.array([1, 0, 2, 0], np.float32)), {}, ValueError,
     "targets: expected every target to be 0 or 1"),
    ("mnist_loss_forward", (P, T[:3]), {}, ValueError, "targets: expected 4 targets"),
    ("mnist_loss_forward", (f32(4, 3), T), {}, ValueError, "preds: expected shape (B,) or (B, 1)"),
    ("mnist_loss_forward", (P, T.astype(np.int64)), {}, TypeError, "targets: expected dtype"),
    ("mnist_loss_forward", (with_nan(P), T), {}, ValueError, "preds: contains NaN"),
    ("mnist_loss_backward", (P, T), {"dpreds": f32(3)}, ValueError, "dpreds: expected shape (4,)"),
    ("cross_entropy_forward", (Z, np.array([0, 3, 1, 0], np.int64)), {}, ValueError,
     "labels: labels must lie in [0, 3)"),
    ("cross_entropy_forward", (Z, np.array([0, -1, 1, 0], np.int64)), {}, ValueError,
     "labels: labels must lie in [0, 3)"),
    ("cross_entropy_forward", (Z, L.astype(np.float32)), {}, TypeError, "labels: expected dtype int64"),
    ("cross_entropy_forward", (Z, L[:3]), {}, ValueError, "labels: expected shape (4,)"),
    ("cross_entropy_forward", (Z, [0, 1, 2, 0]), {}, TypeError, "labels: expected a numpy.ndarray"),
    ("cross_entropy_backward", (Z[0], L), {}, ValueError, "logits: expected a 2-D array"),
    ("cross_entropy_backward", (Z * np.float32(np.inf), L), {}, ValueError, "logits: contains NaN or Inf"),
    ("sgd_update", (f32(3), f32(3), 0.1), {"momentum": 0.9}, ValueError, "velocity is required"),
    ("sgd_update", (f32(3), f32(4), 0.1), {}, ValueError, "grad.shape is (4,) but param.shape is (3,)"),
    ("sgd_update", (f32(3), f32(3), -0.1), {}, ValueError, "lr: expected a finite number"),
    ("sgd_update", (f32(3), f32(3), "fast"), {}, TypeError, "lr: expected a number"),
    ("sgd_update", (f32(3), f32(3), 0.1), {"momentum": 1.5, "velocity": f32(3)}, ValueError,
     "momentum: expected a finite number in [0.0, 1.0]"),
    ("sgd_update", (read_only(f32(3)), f32(3), 0.1), {}, ValueError, "param: expected a writable"),
    ("sgd_update", (f32(3), with_nan(f32(3)), 0.1), {}, ValueError, "grad: contains NaN"),
    ("sgd_update", (f32(3), f32(3), 0.1), {"momentum": 0.5, "velocity": f32(2)}, ValueError,
     "velocity.shape is (2,) but param.shape is (3,)"),
    ("binary_accuracy", (P, np.array([1, 0, 1, 5], np.float32)), {}, ValueError, "targets: expected every"),
    ("multiclass_accuracy", (Z, np.array([0, 1, 2, 3], np.int64)), {}, ValueError, "labels: labels must lie"),
]


@pytest.mark.parametrize("kernel, args, kwargs, error, text", CASES,
                         ids=[f"{c[0]}-{c[4][:30]}" for c in CASES])
def test_bad_input_raises_a_clear_error(kernels, kernel, args, kwargs, error, text):
    with pytest.raises(error) as info:
        getattr(kernels, kernel)(*args, **kwargs)
    assert text in str(info.value)


def test_output_may_not_alias_a_matmul_input(kernels):
    a = f32(4, 4)
    with pytest.raises(ValueError, match="out: must not overlap"):
        kernels.matmul(a, a, out=a)


def test_float64_is_for_the_reference_only():
    a = np.ones((2, 2))
    np.testing.assert_array_equal(backends.get("numpy").matmul(a, a), a @ a)
    if backends.available()["numba"] is True:
        with pytest.raises(TypeError, match="a: expected dtype float32, got float64"):
            backends.get("numba").matmul(a, a)


def test_value_checks_can_be_skipped_but_shape_checks_cannot(kernels):
    with backends.skip_value_checks():
        kernels.relu_forward(with_nan(A))  # no scan for NaN inside the trainer's hot loop
        with pytest.raises(ValueError, match="labels must lie"):
            kernels.cross_entropy_forward(Z, np.array([0, 9, 1, 0], np.int64))
    with pytest.raises(ValueError, match="x: contains NaN"):
        kernels.relu_forward(with_nan(A))


def shifted(n=1000):
    """(input, output): two views of one buffer, the output one element further on."""
    buf = np.linspace(-3, 3, n + 1, dtype=np.float32)
    return buf[:-1], buf[1:]


@pytest.mark.parametrize("kernel, make_args", [
    ("sigmoid_forward", lambda x, out: ((x,), {"out": out})),
    ("relu_forward", lambda x, out: ((x,), {"out": out})),
    ("tanh_forward", lambda x, out: ((x,), {"out": out})),
    ("sigmoid_backward", lambda x, out: ((x, np.ones_like(x)), {"dx": out})),
    ("relu_backward", lambda x, out: ((np.ones_like(x), x), {"dx": out})),
    ("tanh_backward", lambda x, out: ((x, np.ones_like(x)), {"dx": out})),
    ("mnist_loss_backward", lambda x, out: ((x, (x > 0).astype(np.float32)), {"dpreds": out})),
    ("mse_backward", lambda x, out: ((x, np.zeros_like(x)), {"dpreds": out})),
])
def test_an_output_partly_overlapping_an_input_is_refused(kernels, kernel, make_args):
    x, out = shifted()
    args, kwargs = make_args(x, out)
    with pytest.raises(ValueError, match="partly overlaps an input"):
        getattr(kernels, kernel)(*args, **kwargs)


def test_sgd_update_refuses_partly_overlapping_buffers(kernels):
    buf = np.zeros(11, np.float32)
    with pytest.raises(ValueError, match="param: partly overlaps"):
        kernels.sgd_update(buf[1:], buf[:-1], 0.1)
    with pytest.raises(ValueError, match="velocity: partly overlaps"):
        kernels.sgd_update(f32(10), buf[1:], 0.1, momentum=0.9, velocity=buf[:-1])


def test_exact_aliasing_runs_in_place_and_matches(kernels, ref):
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    for kernel in ("sigmoid_forward", "relu_forward", "tanh_forward"):
        want = getattr(ref, kernel)(x.astype(np.float64))
        y = x.copy()
        assert getattr(kernels, kernel)(y, out=y) is y
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7)


def test_linear_backward_outputs_may_not_overlap_each_other(kernels):
    x, w, dy = f32(4, 5), f32(5, 3), f32(4, 3)
    buf = np.zeros(20, np.float32)
    with pytest.raises(ValueError, match="db: must not overlap"):
        kernels.linear_backward(x, w, dy, dw=buf[:15].reshape(5, 3), db=buf[14:17], need_dx=False)
    with pytest.raises(ValueError, match="dlogits: must not overlap"):
        z = f32(4, 3)
        kernels.cross_entropy_backward(z, np.array([0, 1, 2, 0]), dlogits=z)
