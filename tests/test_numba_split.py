"""The numba fused epoch's first layer, split by input features between the threads."""
import numpy as np
import pytest

from fastsgd import backends

pytestmark = pytest.mark.skipif(backends.available().get("numba") is not True,
                                reason="numba unavailable")

# (rows of x, features I, outputs O, batch B): whole tiles; rows and columns left over;
# a half of one feature (I = 1: the first half is empty); a batch of one row
SHAPES = [(300, 784, 128, 64), (90, 37, 20, 13), (40, 1, 5, 7), (12, 9, 3, 1)]


def _split():
    from fastsgd.backends.numba_cpu import config, split
    return config, split


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_the_split_forward_gathers_the_batch_and_adds_both_halves_and_the_bias(shape):
    config, split = _split()
    N, I, O, B = shape
    rng = np.random.default_rng(I)
    x = rng.standard_normal((N, I), dtype=np.float32)
    order = rng.permutation(N).astype(np.int64)
    start = 3
    w = rng.standard_normal((I, O), dtype=np.float32)
    bias = rng.standard_normal(O, dtype=np.float32)
    half = split.half_of(I)
    results = []
    for threaded in (False, True):
        xb = np.full((B, I), np.nan, np.float32)
        out, partial = np.full((2, B, O), np.nan, np.float32)
        if threaded:
            with config._PARALLEL:
                split.first_forward(x, order, start, xb, w, bias, out, partial, half)
        else:
            split.first_forward_one_thread(x, order, start, xb, w, bias, out, partial, half)
        rows = x[order[start:start + B]]
        np.testing.assert_array_equal(xb, rows)
        want = rows.astype(np.float64) @ w + bias
        np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)
        results.append(out)
    np.testing.assert_array_equal(results[0], results[1])


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("step", [False, True])
def test_the_split_weight_gradient_takes_the_sgd_step_of_its_rows(shape, momentum, step):
    config, split = _split()
    _, I, O, B = shape
    rng = np.random.default_rng(O)
    xb = rng.standard_normal((B, I), dtype=np.float32)
    dy = rng.standard_normal((B, O), dtype=np.float32)
    w0 = rng.standard_normal((I, O), dtype=np.float32)
    v0 = rng.standard_normal((I, O), dtype=np.float32)
    lr, wd = np.float32(0.1), np.float32(0.01)
    g = xb.astype(np.float64).T @ dy
    if not step:
        want_w, want_v = w0, v0
    elif momentum:
        want_v = momentum * v0 + (g + wd * w0)
        want_w = w0 - lr * want_v
    else:
        want_w, want_v = w0 - lr * (g + wd * w0), v0
    results = []
    for threaded in (False, True):
        dw, w, v = np.full((I, O), np.nan, np.float32), w0.copy(), v0.copy()
        args = (xb, dy, dw, w, v, split.half_of(I), lr, np.float32(momentum), wd, step,
                momentum > 0)
        if threaded:
            with config._PARALLEL:
                split.first_gradient(*args)
        else:
            split.first_gradient_one_thread(*args)
        np.testing.assert_allclose(dw, g, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(w, want_w, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(v, want_v, rtol=1e-4, atol=1e-4)
        results.append((dw, w, v))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_the_halves_start_on_a_whole_tile_of_rows():
    _, split = _split()
    from fastsgd.backends.numba_cpu.gemm import TILE_ROWS
    for n_in in (1, 8, 9, 17, 784, 1000):
        half = split.half_of(n_in)
        assert half % TILE_ROWS == 0 and 0 <= half <= n_in // 2
        assert n_in // 2 - half < TILE_ROWS
