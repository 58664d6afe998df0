"""Kernel inputs and tolerances shared by tests/test_kernels.py and tests_cuda/.

Numpy only (no hypothesis), so the CUDA suite can use it on a machine that has
just numpy and pytest.  The reference runs in float64 on the float32 inputs;
tolerances grow with the length of the reduction behind each output (fastmath,
threads and tiles reorder sums).
"""
import numpy as np

F32_EPS = float(np.finfo(np.float32).eps)


def assert_matches(actual, expected, reduction=1, scale=1.0):
    """float32 result vs float64 reference: |a - e| <= tol * (scale + |e|), tol ~ eps * n."""
    tol = 8 * F32_EPS * (reduction + 4)
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_case(name, rng, m, k, n, scale=1.0):
    """(args, reduction length, magnitude of the summed terms) for kernel ``name``.

    m is the batch (B / M), k the in-features (I / K), n the outputs or classes (O / N / C).
    """
    if name == "matmul":
        return (f32(rng, m, k, scale=scale), f32(rng, k, n, scale=scale)), k, scale**2 * k
    if name == "matmul_backward_input":
        return (f32(rng, m, n, scale=scale), f32(rng, k, n, scale=scale)), n, scale**2 * n
    if name == "matmul_backward_weight":
        return (f32(rng, m, k, scale=scale), f32(rng, m, n, scale=scale)), m, scale**2 * m
    if name == "bias_backward":
        return (f32(rng, m, n, scale=scale),), m, scale * m
    if name == "linear_forward":
        return (f32(rng, m, k, scale=scale), f32(rng, k, n, scale=scale),
                f32(rng, n, scale=scale)), k, scale**2 * k + scale
    if name == "linear_backward":
        return (f32(rng, m, k, scale=scale), f32(rng, k, n, scale=scale),
                f32(rng, m, n, scale=scale)), max(m, n), scale**2 * max(m, n)
    if name in ("sigmoid_forward", "relu_forward", "tanh_forward"):
        return (f32(rng, m, n, scale=scale),), 1, 1.0
    if name == "sigmoid_backward":
        return (rng.uniform(0, 1, (m, n)).astype(np.float32), f32(rng, m, n, scale=scale)), 1, scale
    if name == "tanh_backward":
        return (rng.uniform(-1, 1, (m, n)).astype(np.float32), f32(rng, m, n, scale=scale)), 1, scale
    if name in ("mse_forward", "mse_backward"):
        return (f32(rng, m, n, scale=scale), f32(rng, m, n, scale=scale)), m * n, scale ** 2
    if name == "relu_backward":
        return (f32(rng, m, n, scale=scale), f32(rng, m, n, scale=scale)), 1, scale
    if name in ("mnist_loss_forward", "mnist_loss_backward", "binary_accuracy"):
        return (f32(rng, m, scale=scale), rng.integers(0, 2, m).astype(np.float32)), m, 1.0
    if name in ("cross_entropy_forward", "cross_entropy_backward", "multiclass_accuracy"):
        return (f32(rng, m, n, scale=scale), rng.integers(0, n, m)), n, 1.0 + scale
    if name == "sgd_update":
        return (f32(rng, m, n), f32(rng, m, n, scale=scale), 0.05, 0.9, 0.01, f32(rng, m, n)), 1, 1.0 + scale
    raise KeyError(name)
