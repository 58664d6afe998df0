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
