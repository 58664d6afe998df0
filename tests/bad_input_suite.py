"""The bad-input suite: bad input to every public kernel of one backend gets a clear
exception naming the argument.

Test bodies only, collected where a test module imports them (tests/test_bad_input.py
on every backend here, tests_cuda/test_suite.py on cuda).  The fixture ``backend``
is the backend under test; arrays reach it through ``backend.asarray``.
"""
import numpy as np
import pytest

from fastsgd import backends

from .helpers import CASES, DEVICE_ERRORS, A, Z, bad_input_arg, f32_0, with_nan

__all__ = ["test_bad_input_raises_a_clear_error", "test_output_may_not_alias_a_matmul_input",
           "test_value_checks_can_be_skipped_but_label_and_target_checks_cannot",
           "test_an_output_partly_overlapping_an_input_is_refused",
           "test_sgd_update_refuses_partly_overlapping_buffers",
           "test_exact_aliasing_runs_in_place_and_matches",
           "test_linear_backward_outputs_may_not_overlap_each_other",
           "test_strided_backend_arrays_are_rejected",
           "test_a_learning_rate_beyond_float32_is_refused", "test_relu_keeps_nan_on_every_backend"]


@pytest.mark.parametrize("kernel, args, kwargs, error, text", CASES,
                         ids=[f"{c[0]}-{c[4][:30]}" for c in CASES])
def test_bad_input_raises_a_clear_error(backend, kernel, args, kwargs, error, text):
    if backend.arrays.device:
        error, text = DEVICE_ERRORS.get((kernel, text), (error, text))
    args = tuple(bad_input_arg(backend, a) for a in args)
    kwargs = {k: bad_input_arg(backend, v) for k, v in kwargs.items()}
    with pytest.raises(error) as info:
        getattr(backend, kernel)(*args, **kwargs)
    assert text in str(info.value)


def test_output_may_not_alias_a_matmul_input(backend):
    a = backend.asarray(f32_0(4, 4))
    with pytest.raises(ValueError, match="out: must not overlap"):
        backend.matmul(a, a, out=a)
    rows = backend.asarray(np.ones((8, 4), np.float32))  # x is rows[:4]; the rest may be outputs
    x, w, dy = rows[:4], backend.asarray(np.ones((4, 4))), backend.asarray(np.ones((4, 4)))
    backend.linear_backward(x, w, dy, dw=rows[4:])  # adjacent, not overlapping
    with pytest.raises(ValueError, match="dw: must not overlap"):
        backend.linear_backward(x, w, dy, dw=rows[2:6])


def test_value_checks_can_be_skipped_but_label_and_target_checks_cannot(backend):
    nan = backend.asarray(with_nan(A))
    z = backend.asarray(Z)
    with backends.skip_value_checks():
        backend.relu_forward(nan)  # no scan for NaN inside the trainer's hot loop
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from 0 to 9"):
            backend.cross_entropy_forward(z, backend.asarray(np.array([0, 9, 1, 0]), np.int64))
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from -1 to 2"):
            backend.cross_entropy_backward(z, backend.asarray(np.array([0, 2, -1, 0]), np.int64))
        with pytest.raises(ValueError, match="labels must lie"):
            backend.multiclass_accuracy(z, backend.asarray(np.array([0, 3, 1, 0]), np.int64))
        with pytest.raises(ValueError, match="targets: expected every target to be 0 or 1"):
            backend.mnist_loss_backward(backend.asarray(A[:, 0].copy()),
                                        backend.asarray(np.array([0, 1, 0.5, 1], np.float32)))
    with pytest.raises(ValueError, match="x: contains NaN"):
        backend.relu_forward(nan)


def test_strided_backend_arrays_are_rejected(backend):
    a = backend.asarray(np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        backend.relu_forward(a[:, ::2])
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        backend.relu_forward(backend.asarray(np.ones((4, 3))), out=a[:, :3])


def shifted(backend, n=1000):
    """(input, output): two views of one buffer, the output one element further on."""
    buf = backend.asarray(np.linspace(-3, 3, n + 1, dtype=np.float32))
    return buf[:-1], buf[1:]


@pytest.mark.parametrize("kernel, make_args", [
    ("sigmoid_forward", lambda x, out, ones, zeros: ((x,), {"out": out})),
    ("relu_forward", lambda x, out, ones, zeros: ((x,), {"out": out})),
    ("tanh_forward", lambda x, out, ones, zeros: ((x,), {"out": out})),
    ("sigmoid_backward", lambda x, out, ones, zeros: ((x, ones), {"dx": out})),
    ("relu_backward", lambda x, out, ones, zeros: ((ones, x), {"dx": out})),
    ("tanh_backward", lambda x, out, ones, zeros: ((x, ones), {"dx": out})),
    ("mse_backward", lambda x, out, ones, zeros: ((x, zeros), {"dpreds": out})),
])
def test_an_output_partly_overlapping_an_input_is_refused(backend, kernel, make_args):
    x, out = shifted(backend, 100)
    ones = backend.asarray(np.ones(100, np.float32))
    args, kwargs = make_args(x, out, ones, backend.zeros(100))
    with pytest.raises(ValueError, match="partly overlaps an input"):
        getattr(backend, kernel)(*args, **kwargs)


def test_sgd_update_refuses_partly_overlapping_buffers(backend):
    buf = backend.zeros(11)
    with pytest.raises(ValueError, match="param: partly overlaps"):
        backend.sgd_update(buf[1:], buf[:-1], 0.1)
    with pytest.raises(ValueError, match="velocity: partly overlaps"):
        backend.sgd_update(backend.asarray(f32_0(10)), buf[1:], 0.1, momentum=0.9,
                           velocity=buf[:-1])


def test_exact_aliasing_runs_in_place_and_matches(backend, ref):
    x = np.linspace(-3, 3, 101, dtype=np.float32)
    for kernel in ("sigmoid_forward", "relu_forward", "tanh_forward"):
        want = getattr(ref, kernel)(x.astype(np.float64))
        y = backend.asarray(x.copy())
        assert getattr(backend, kernel)(y, out=y) is y
        np.testing.assert_allclose(backend.to_numpy(y), want, rtol=1e-6, atol=1e-7)


def test_linear_backward_outputs_may_not_overlap_each_other(backend):
    x, w, dy = (backend.asarray(f32_0(*shape)) for shape in ((4, 5), (5, 3), (4, 3)))
    buf = backend.zeros(20)
    with pytest.raises(ValueError, match="db: must not overlap"):
        backend.linear_backward(x, w, dy, dw=buf[:15].reshape(5, 3), db=buf[14:17],
                                need_dx=False)
    z = backend.asarray(f32_0(4, 3))
    with pytest.raises(ValueError, match="dlogits: must not overlap"):
        backend.cross_entropy_backward(z, backend.asarray(np.array([0, 1, 2, 0]), np.int64),
                                       dlogits=z)


def test_a_learning_rate_beyond_float32_is_refused(backend):
    param = backend.asarray(np.ones(3, np.float32))
    grad = backend.asarray(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="lr: expected a finite number in"):
        backend.sgd_update(param, grad, 1e39)
    np.testing.assert_array_equal(backend.to_numpy(param), 1)


def test_relu_keeps_nan_on_every_backend(backend):
    x = backend.asarray(np.array([np.nan, -1, 2], np.float32))
    with backends.skip_value_checks():
        out = backend.to_numpy(backend.relu_forward(x))
    assert np.isnan(out[0]) and out[1] == 0 and out[2] == 2
