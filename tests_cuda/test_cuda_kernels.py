"""What only the cuda backend does: device arrays in and out, NumPy inputs copied over,
gathers that never read out of bounds.  The kernels against the reference are the
shared suite (test_suite.py)."""
import inspect

import numpy as np
import pytest

from fastsgd import backends
from fastsgd.backends import cuda as cuda_backend
from tests.helpers import assert_matches, f32

from .conftest import ON_DEVICE


# --------------------------------------------------------------- the backend
def test_cuda_is_available_and_implements_the_contract(cu):
    assert backends.available()["cuda"] is True
    assert isinstance(cu, cuda_backend.CudaBackend)
    assert backends.contract.missing_kernels(cu.module) == []
    assert cuda_backend.SIMULATED is not ON_DEVICE


def test_every_kernel_has_compile_signatures():
    """Every kernel has PTX signatures, or is listed as device-only with the reason."""
    assert sorted(cuda_backend.kernels()) == sorted(
        [*cuda_backend.KERNEL_SIGNATURES, *cuda_backend.DEVICE_ONLY_KERNELS])


def test_every_entry_carries_its_contract_name_and_parameters():
    """The launchers made from kernel tables are bound under the names they were made for."""
    for name, params in backends.contract.KERNELS.items():
        fn = getattr(cuda_backend, name)
        assert fn.__name__ == name
        assert tuple(inspect.signature(fn).parameters) == params
        assert fn.__doc__


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
def test_results_are_device_arrays(cu, rng):
    """Filling out= arrays is the shared suite's; here the results it allocates stay on the device."""
    x, w, dy = (cu.asarray(f32(rng, *shape)) for shape in ((5, 7), (7, 3), (5, 3)))
    assert cuda_backend.is_device_array(cu.relu_forward(cu.linear_forward(x, w, cu.asarray(f32(rng, 3)))))
    assert all(cuda_backend.is_device_array(g) for g in cu.linear_backward(x, w, dy))


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


# ------------------------------------------------------------------ gather
def test_take_rows_reads_no_row_out_of_bounds_when_value_checks_are_skipped(cu, rng):
    """The index checks are the shared suite's; skipped, a bad index yields a zero row."""
    x = f32(rng, 4, 3)
    out = cu.empty((2, 3))
    with backends.skip_value_checks():
        cu.take_rows(cu.asarray(x), cu.asarray(np.array([1, 4]), dtype=np.int64), out=out)
    np.testing.assert_array_equal(cu.to_numpy(out), [x[1], np.zeros(3, np.float32)])
