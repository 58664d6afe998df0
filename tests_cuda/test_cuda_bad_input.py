"""Bad input to the CUDA backend: the contract's errors, plus the device-array rules.

The cases of tests/test_bad_input.py are replayed with every C-contiguous,
writable NumPy array moved to the device; what stays a NumPy array (read-only or
strided views) exercises the host path.  Outputs and in-place arrays must be
device arrays, so those cases expect that TypeError instead.
"""
import numpy as np
import pytest

from fastsgd import backends
from tests.test_bad_input import CASES, A, Z, with_nan

#: case id -> (error, text) where the CUDA backend answers differently on purpose.
DEVICE_ONLY = {
    ("matmul", "out: expected a writable"): (TypeError, "out: expected a numba CUDA device array"),
    ("matmul", "out: expected a C-contiguous"): (TypeError, "out: expected a numba CUDA device array"),
    ("sigmoid_forward", "out: expected a writable"): (TypeError, "out: expected a numba CUDA device array"),
    ("sgd_update", "param: expected a writable"): (TypeError, "param: expected a numba CUDA device array"),
}


def to_device(cu, x):
    if isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable:
        return cu.asarray(x.copy(), dtype=x.dtype)
    return x


@pytest.mark.parametrize("kernel, args, kwargs, error, text", CASES,
                         ids=[f"{c[0]}-{c[4][:30]}" for c in CASES])
def test_bad_input_raises_a_clear_error(cu, kernel, args, kwargs, error, text):
    error, text = DEVICE_ONLY.get((kernel, text), (error, text))
    args = tuple(to_device(cu, a) for a in args)
    kwargs = {k: to_device(cu, v) for k, v in kwargs.items()}
    with pytest.raises(error) as info:
        getattr(cu, kernel)(*args, **kwargs)
    assert text in str(info.value)


def test_output_may_not_alias_an_input(cu):
    a = cu.asarray(np.ones((4, 4), np.float32))
    with pytest.raises(ValueError, match="out: must not overlap"):
        cu.matmul(a, a, out=a)
    rows = cu.asarray(np.ones((8, 4), np.float32))  # x is rows[:4]; views of the rest may be outputs
    x, w, dy = rows[:4], cu.asarray(np.ones((4, 4))), cu.asarray(np.ones((4, 4)))
    cu.linear_backward(x, w, dy, dw=rows[4:])  # adjacent, not overlapping
    with pytest.raises(ValueError, match="dw: must not overlap"):
        cu.linear_backward(x, w, dy, dw=rows[2:6])


def test_strided_device_arrays_are_rejected(cu):
    a = cu.asarray(np.ones((4, 6), np.float32))
    with pytest.raises(ValueError, match="x: expected a C-contiguous"):
        cu.relu_forward(a[:, ::2])
    with pytest.raises(ValueError, match="out: expected a C-contiguous"):
        cu.relu_forward(cu.asarray(np.ones((4, 3))), out=a[:, :3])


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


def test_value_checks_can_be_skipped_but_label_and_target_checks_cannot(cu):
    with backends.skip_value_checks():
        cu.relu_forward(cu.asarray(with_nan(A)))  # no NaN scan inside the trainer's hot loop
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from 0 to 9"):
            cu.cross_entropy_forward(cu.asarray(Z), cu.asarray(np.array([0, 9, 1, 0]), np.int64))
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from -1 to 2"):
            cu.cross_entropy_backward(cu.asarray(Z), cu.asarray(np.array([0, 2, -1, 0]), np.int64))
        with pytest.raises(ValueError, match="labels must lie"):
            cu.multiclass_accuracy(cu.asarray(Z), cu.asarray(np.array([0, 3, 1, 0]), np.int64))
        with pytest.raises(ValueError, match="targets: expected every target to be 0 or 1"):
            cu.mnist_loss_backward(cu.asarray(A[:, 0].copy()),
                                   cu.asarray(np.array([0, 1, 0.5, 1], np.float32)))
    with pytest.raises(ValueError, match="x: contains NaN"):
        cu.relu_forward(cu.asarray(with_nan(A)))


@pytest.mark.parametrize("kernel", ["sigmoid_forward", "relu_forward", "tanh_forward"])
def test_an_output_partly_overlapping_its_input_is_refused(cu, kernel):
    buf = cu.asarray(np.linspace(-3, 3, 33, dtype=np.float32))
    with pytest.raises(ValueError, match="out: partly overlaps an input"):
        getattr(cu, kernel)(buf[:-1], out=buf[1:])
    x = cu.asarray(np.linspace(-3, 3, 32, dtype=np.float32))
    assert getattr(cu, kernel)(x, out=x) is x  # exactly in place is fine


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
