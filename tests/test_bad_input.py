"""Bad input to every public kernel gets a clear exception naming the argument: the
bad-input suite on every backend here, plus what only host backends do."""
import numpy as np
import pytest

from fastsgd import backends

from .bad_input_suite import *  # noqa: F403  (the bad-input suite, on every backend here)


def test_float64_is_for_the_reference_only():
    a = np.ones((2, 2))
    np.testing.assert_array_equal(backends.get("numpy").matmul(a, a), a @ a)
    if backends.available()["numba"] is True:
        with pytest.raises(TypeError, match="a: expected dtype float32, got float64"):
            backends.get("numba").matmul(a, a)


def test_a_mnist_loss_gradient_partly_overlapping_its_input_is_refused(backend):
    buf = backend.asarray(np.linspace(-3, 3, 101, dtype=np.float32))
    x, out = buf[:-1], buf[1:]
    targets = backend.asarray((backend.to_numpy(x) > 0).astype(np.float32))
    with pytest.raises(ValueError, match="partly overlaps an input"):
        backend.mnist_loss_backward(x, targets, dpreds=out)


@pytest.mark.parametrize("make", [
    lambda x: x,                                        # the C extension's pass, if built
    lambda x: x.astype(np.float64),
    lambda x: x[:, ::2],                                # not contiguous: NumPy's
    lambda x: x.astype(np.float16),                     # a dtype C does not read
])
def test_host_value_check_finds_nan_and_inf_in_any_layout(make):
    from fastsgd.backends.arrays import host_all_finite
    x = np.linspace(-3, 3, 64 * 130).reshape(64, 130).astype(np.float32)
    assert host_all_finite(make(x))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[40, 128] = bad
        assert not host_all_finite(make(y))


def test_an_output_sharing_memory_with_an_input_of_another_dtype_is_refused(backend):
    raw = np.zeros(256, np.uint8)
    labels = raw[:32].view(np.int64)
    labels[:] = [0, 2, 1, 0]
    dlogits = raw[16:64].view(np.float32).reshape(4, 3)   # over labels[2:]
    logits = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="^dlogits: must not overlap labels, an input"):
        backend.cross_entropy_backward(logits, labels, dlogits=dlogits)
    np.testing.assert_array_equal(labels, [0, 2, 1, 0])
    idx = raw[:16].view(np.int64)
    idx[:] = [1, 0]
    src = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="^out: must not overlap idx, an input"):
        backend.take_rows(src, idx, out=raw[8:40].view(np.float32).reshape(2, 4))
    np.testing.assert_array_equal(idx, [1, 0])



def test_sgd_update_refuses_a_velocity_that_is_the_parameter(backend):
    param = backend.asarray(np.ones(50, np.float32))
    with pytest.raises(ValueError, match="^velocity: must not overlap param, another output"):
        backend.sgd_update(param, backend.zeros(50), 0.1, momentum=0.9, velocity=param)
    np.testing.assert_array_equal(backend.to_numpy(param), 1)
