"""sigmoid and tanh of the compiled CPU backends over the whole float32 range.

Both ``c`` and ``numba`` compute them with their own branch-free exp (no libm call,
so the loops vectorize); these tests hold them to a few ulps of float64 NumPy,
subnormals, infinities and the sign of zero included.  The kernels are called
directly: the contract refuses infinite inputs, which these tests want to pass.
"""
import numpy as np
import pytest

from fastsgd import backends

COMPILED = ["c", "numba"]


@pytest.fixture(params=COMPILED)
def kernels(request):
    """The module of a compiled backend's kernels (no contract around them)."""
    status = backends.available()[request.param]
    if status is not True:
        pytest.skip(f"{request.param} unavailable: {status}")
    return backends.get(request.param)._impl


def ulps(got, want):
    """|got - want| in float32 ulps of |want| (want in float64)."""
    spacing = np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)
    return np.abs(got.astype(np.float64) - want) / spacing


def test_sigmoid_is_accurate_over_the_whole_float_range(kernels):
    x = np.concatenate([np.linspace(-120, 120, 200_001), [-1e30, -1e4, 1e4, 1e30, 0.0, -0.0]])
    x = x.astype(np.float32)
    got = np.empty_like(x)
    kernels.sigmoid_forward(x, got)
    x64 = x.astype(np.float64)
    e = np.exp(-np.abs(x64))
    want = np.where(x64 >= 0, 1, e) / (1 + e)
    normal = want > np.finfo(np.float32).tiny
    np.testing.assert_allclose(got[normal], want[normal], rtol=3e-7)
    np.testing.assert_allclose(got[~normal], want[~normal], rtol=0, atol=2e-45)  # subnormals
    assert ((got >= 0) & (got <= 1)).all()


def test_sigmoid_of_infinities_and_nan(kernels):
    x = np.array([np.inf, -np.inf, np.nan], np.float32)
    kernels.sigmoid_forward(x, x)
    np.testing.assert_array_equal(x[:2], [1, 0])
    assert np.isnan(x[2])


def test_tanh_is_accurate_over_the_whole_float_range(kernels):
    tiny = np.geomspace(1e-45, 1.0, 100_000)
    large = np.geomspace(1.0, 3e38, 100_000)
    x = np.concatenate([np.linspace(-12, 12, 400_001), tiny, -tiny, large, -large,
                        [np.finfo(np.float32).tiny, 0.625, -0.625]]).astype(np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(0)), np.nextafter(x, np.float32(np.inf))])
    got = np.empty_like(x)
    kernels.tanh_forward(x, got)
    want = np.tanh(x.astype(np.float64))
    assert ulps(got, want).max() <= 2.0  # relative to tanh(x), also for tiny |x|
    assert (got[x >= 9.5] == 1).all() and (got[x <= -9.5] == -1).all()
    np.testing.assert_array_equal(np.signbit(got), np.signbit(x))  # odd, -0.0 kept
    inf = np.array([np.inf, -np.inf, 0.0, -0.0, np.nan], np.float32)
    kernels.tanh_forward(inf, inf)
    np.testing.assert_array_equal(inf[:4], [1, -1, 0, 0])
    assert np.signbit(inf[3]) and np.isnan(inf[4])


def test_tanh_backward_is_accurate_near_saturation(kernels):
    y = np.tanh(np.linspace(-9, 9, 10_001)).astype(np.float32)  # 1 - y^2 cancels near +-1
    dy = np.ones_like(y)
    got = np.empty_like(y)
    kernels.tanh_backward(y, dy, got)
    y64 = y.astype(np.float64)
    want = 1 - y64 * y64
    keep = want > 0
    assert ulps(got[keep], want[keep]).max() <= 2.0
    assert (got[~keep] == 0).all()


@pytest.mark.parametrize("n", [1, 7, 8, 15, 16, 17, 33, 1000])
def test_vector_tails_match_the_whole_array(kernels, n):
    """Elements past the last full vector get the same values as those inside one."""
    x = np.linspace(-5, 5, 1024, dtype=np.float32)
    for kernel in ("sigmoid_forward", "tanh_forward"):
        whole = np.empty_like(x)
        getattr(kernels, kernel)(x, whole)
        part = np.empty(n, np.float32)
        getattr(kernels, kernel)(x[:n].copy(), part)
        np.testing.assert_array_equal(part, whole[:n], err_msg=kernel)


def test_numba_log_is_accurate_over_the_positive_normal_floats():
    """numba_math.log_pos, the cross-entropy's log of a softmax sum: within 2 ulp of the
    float64 log over every binade, at the mantissa's ends and around sqrt(2)."""
    if backends.available()["numba"] is not True:
        pytest.skip("numba unavailable")
    from numba import njit

    from fastsgd.backends import numba_math

    @njit(fastmath=numba_math.FASTMATH)
    def logs(x, out):
        for i in range(x.size):
            out[i] = numba_math.log_pos(x[i])

    rng = np.random.default_rng(3)
    x = np.concatenate([np.geomspace(np.finfo(np.float32).tiny, 3e38, 400_000),
                        1 + np.arange(100_000) * 2.0 ** -23, rng.uniform(1, 1e4, 100_000),
                        [1.0, 2.0, 0.5, np.sqrt(2), np.finfo(np.float32).max]]).astype(np.float32)
    below_max = x[x < np.finfo(np.float32).max]
    x = np.concatenate([x, np.nextafter(below_max, np.float32(np.inf))])
    got = np.empty_like(x)
    logs(x, got)
    want = np.log(x.astype(np.float64))
    exact = want == 0
    assert (got[exact] == 0).all()
    assert ulps(got[~exact], want[~exact]).max() <= 2.0
    special = np.array([np.nan, np.inf], np.float32)
    logs(special.copy(), special)
    assert np.isnan(special).all()
