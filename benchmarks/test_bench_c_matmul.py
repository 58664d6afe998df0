"""The C backend's kernels against NumPy (OpenBLAS) and Numba, with pytest-benchmark.

    pytest benchmarks/test_bench_c_matmul.py                       # one table per kernel + shape
    pytest benchmarks/test_bench_c_matmul.py --benchmark-disable   # each case once: a smoke test
    pytest benchmarks/test_bench_c_matmul.py --benchmark-json=out.json   # extra_info["gflops"]

Each case times one backend's implementation function (``backends.get(name)._impl``):
the kernel and its Python binding, outputs preallocated, without the contract's
argument checks (they cost every backend the same).  The result is validated against
NumPy in float64 before anything is timed.

Thread pools: two pools busy-waiting on two cores stall each other, so OpenBLAS gets
2 threads while numpy is timed and 1 otherwise (threadpoolctl, when installed).  The
C matmuls use OpenMP (2 threads here); its idle threads spin for a while after each
call (see GOMP_SPINCOUNT / OMP_WAIT_POLICY), which favours back-to-back calls of the
same backend, as in a training loop.  Compare medians.
"""
import contextlib

import numpy as np
import pytest

from fastsgd import backends

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # timings are still taken, only less isolated
    threadpool_limits = None

BACKENDS = ["numpy", "numba", "c"]


def backend_param(name):
    status = backends.available().get(name, "unknown backend")
    marks = [] if status is True else [pytest.mark.skip(reason=f"{name} unavailable: {status}")]
    return pytest.param(name, marks=marks, id=name)


@pytest.fixture(params=[backend_param(name) for name in BACKENDS])
def impl(request):
    """(name, implementation module) of the backend under test, its thread pools set."""
    name = request.param
    limits = (threadpool_limits(limits=2 if name == "numpy" else 1, user_api="blas")
              if threadpool_limits else contextlib.nullcontext())
    with limits:
        yield name, backends.get(name)._impl


def f32(rng, *shape):
    return rng.standard_normal(shape).astype(np.float32)


def record(benchmark, flop):
    """Store the work and, when timed, the GFLOP/s at the median."""
    benchmark.extra_info["gflop"] = flop / 1e9
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gflops"] = flop / stats.stats.median / 1e9


# ------------------------------------------------------------------ matmuls
# (kernel, B / M, I / K, O / N); the first six are the training shapes of a
# 784-128 layer at batch 64 and 256, the last a square product.
MATMULS = [
    ("matmul", 64, 784, 128), ("matmul", 256, 784, 128),
    ("matmul_backward_weight", 64, 784, 128), ("matmul_backward_weight", 256, 784, 128),
    ("matmul_backward_input", 64, 784, 128), ("matmul_backward_input", 256, 784, 128),
    ("matmul", 1024, 1024, 1024),
]


def matmul_case(kernel, B, I, O, rng):
    """(inputs, output, float64 expected value, reduction length)."""
    if kernel == "matmul":  # x (B, I) @ w (I, O)
        x, w = f32(rng, B, I), f32(rng, I, O)
        return (x, w), np.empty((B, O), np.float32), x.astype(np.float64) @ w, I
    if kernel == "matmul_backward_weight":  # x.T @ dy:  x (B, I), dy (B, O) -> (I, O)
        x, dy = f32(rng, B, I), f32(rng, B, O)
        return (x, dy), np.empty((I, O), np.float32), x.T.astype(np.float64) @ dy, B
    if kernel == "matmul_backward_input":  # dy @ w.T:  dy (B, O), w (I, O) -> (B, I)
        dy, w = f32(rng, B, O), f32(rng, I, O)
        return (dy, w), np.empty((B, I), np.float32), dy.astype(np.float64) @ w.T, O
    raise KeyError(kernel)


@pytest.mark.parametrize("kernel, B, I, O", MATMULS,
                         ids=[f"{k}-{b}x{i}x{o}" for k, b, i, o in MATMULS])
def test_matmul(benchmark, impl, kernel, B, I, O):
    name, module = impl
    inputs, out, expected, k = matmul_case(kernel, B, I, O, np.random.default_rng(0))
    fn = getattr(module, kernel)
    fn(*inputs, out)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6 * k + 1e-5)

    benchmark.group = f"{kernel} B/M={B} I/K={I} O/N={O}"
    benchmark(fn, *inputs, out)
    record(benchmark, 2.0 * B * I * O)


# -------------------------------------------------------------- elementwise
def elementwise_case(kernel, rng):
    """(shape label, inputs, outputs, float64 expected values, flop count)."""
    h = f32(rng, 256, 128)  # a hidden layer's activations at batch 256
    if kernel == "relu_forward":
        return "256x128", (h,), (np.empty_like(h),), [np.maximum(h, 0)], h.size
    if kernel == "relu_backward":
        dy = f32(rng, 256, 128)
        return "256x128", (h, dy), (np.empty_like(h),), [dy * (h > 0)], h.size
    if kernel == "sigmoid_forward":
        x = h.astype(np.float64)
        return "256x128", (h,), (np.empty_like(h),), [1 / (1 + np.exp(-x))], 4 * h.size
    if kernel == "sigmoid_backward":
        y, dy = rng.uniform(0, 1, h.shape).astype(np.float32), f32(rng, 256, 128)
        return ("256x128", (y, dy), (np.empty_like(h),),
                [dy.astype(np.float64) * y * (1 - y.astype(np.float64))], 3 * h.size)
    if kernel == "bias_backward":
        return "256x128", (h,), (np.empty(128, np.float32),), [h.sum(0, dtype=np.float64)], h.size
    if kernel == "cross_entropy_backward":
        z, labels = f32(rng, 256, 10), rng.integers(0, 10, 256)
        p = np.exp(z - z.max(1, keepdims=True).astype(np.float64))
        p /= p.sum(1, keepdims=True)
        p[np.arange(256), labels] -= 1
        return "256x10", (z, labels), (np.empty_like(z),), [p / 256], 5 * z.size
    raise KeyError(kernel)


ELEMENTWISE = ["relu_forward", "relu_backward", "sigmoid_forward", "sigmoid_backward",
               "bias_backward", "cross_entropy_backward"]


@pytest.mark.parametrize("kernel", ELEMENTWISE)
def test_elementwise(benchmark, impl, kernel):
    name, module = impl
    label, inputs, outputs, expected, flop = elementwise_case(kernel, np.random.default_rng(0))
    fn = getattr(module, kernel)
    fn(*inputs, *outputs)
    for got, want in zip(outputs, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)

    benchmark.group = f"{kernel} {label}"
    benchmark(fn, *inputs, *outputs)
    record(benchmark, flop)


def test_sgd_update(benchmark, impl):
    """One momentum SGD step of a 784x128 weight matrix, in place."""
    name, module = impl
    rng = np.random.default_rng(0)
    param, grad, velocity = f32(rng, 784, 128), f32(rng, 784, 128), f32(rng, 784, 128)
    p64, v64 = param.astype(np.float64), velocity.astype(np.float64)
    v64 = 0.9 * v64 + (grad + 1e-4 * p64)
    p64 -= 0.01 * v64
    module.sgd_update(param, grad, velocity, 0.01, 0.9, 1e-4)
    np.testing.assert_allclose(param, p64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(velocity, v64, rtol=1e-5, atol=1e-6)

    benchmark.group = "sgd_update 784x128 momentum"
    benchmark(module.sgd_update, param, grad, velocity, 0.01, 0.9, 1e-4)
    record(benchmark, 5 * param.size)
