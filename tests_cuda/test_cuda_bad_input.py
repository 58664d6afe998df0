"""Bad input only the cuda backend sees: other array types, device-side value checks.

The contract's errors on every kernel are the shared bad-input suite (test_suite.py).
"""
import numpy as np
import pytest

from fastsgd import backends
from tests.helpers import A, with_nan


def test_other_array_types_are_rejected_by_name(cu):
    with pytest.raises(TypeError, match="b: expected a numpy.ndarray or a numba CUDA device array, got list"):
        cu.matmul(cu.asarray(A), [[1.0]])
    with pytest.raises(TypeError, match="out: expected a numba CUDA device array .* got a numpy.ndarray"):
        cu.relu_forward(cu.asarray(A), out=np.empty_like(A))
    with pytest.raises(TypeError, match="velocity: expected a numba CUDA device array"):
        cu.sgd_update(cu.asarray(A), cu.asarray(A), 0.1, momentum=0.9, velocity=np.zeros_like(A))
    with pytest.raises(TypeError, match="a: expected dtype float32, got float64"):
        cu.matmul(cu.asarray(A, dtype=np.float64), cu.asarray(A.T.copy()))


def test_value_checks_run_on_the_device(cu):
    x = cu.asarray(with_nan(A))
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        cu.relu_forward(x)
    inf = cu.asarray(np.full((3, 2), np.inf, np.float32))
    with pytest.raises(ValueError, match="a: contains NaN or Inf"):
        cu.matmul(inf, cu.asarray(np.ones((2, 2))))


def test_value_checks_switched_off_in_another_thread_stay_on_here(cu):
    import threading
    inside, go_on = threading.Event(), threading.Event()

    def skipper():
        with backends.skip_value_checks():
            inside.set()
            go_on.wait(5)

    thread = threading.Thread(target=skipper)
    thread.start()
    inside.wait(5)
    try:
        with pytest.raises(ValueError, match="x: contains NaN"):
            cu.relu_forward(cu.asarray(np.array([np.nan, 1], np.float32)))
    finally:
        go_on.set()
        thread.join()
