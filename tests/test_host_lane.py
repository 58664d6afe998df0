"""The contract's host lane (``backends/host_lane.py``): the matmul family's checks in
one pass for plain NumPy arguments, and the NaN/Inf scan after C's products.

Whatever lane a call takes, it gives the reference's numbers or the general path's
error naming the argument."""
import numpy as np
import pytest

from fastsgd import backends
from fastsgd.backends import host_lane
from fastsgd.backends.spec import SIGNATURES

CPU = [name for name in ("numpy", "numba", "c") if backends.available()[name] is True]

#: kernel -> the shapes of its inputs (B 5, I 7, O 3 / M 5, K 7, N 3)
INPUTS = {
    "matmul": [(5, 7), (7, 3)],
    "matmul_backward_input": [(5, 3), (7, 3)],
    "matmul_backward_weight": [(5, 7), (5, 3)],
    "bias_backward": [(5, 3)],
    "linear_forward": [(5, 7), (7, 3), (3,)],
    "linear_backward": [(5, 7), (7, 3), (5, 3)],
}


def _inputs(kernel, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for shape in INPUTS[kernel]]


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("kernel", list(INPUTS))
def test_each_product_matches_the_reference(name, kernel):
    got = _as_tuple(getattr(backends.get(name), kernel)(*_inputs(kernel)))
    want = _as_tuple(getattr(backends.get("numpy"), kernel)(*_inputs(kernel)))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CPU)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kernel", list(INPUTS))
def test_a_non_finite_input_is_named_wherever_it_is(name, kernel, bad):
    backend = backends.get(name)
    params = [p.name for p in SIGNATURES[kernel] if not p.written]
    for index, param in enumerate(params):
        for position in (0, -1):
            args = _inputs(kernel)
            args[index].reshape(-1)[position] = bad
            with pytest.raises(ValueError, match=f"^{param}: contains NaN or Inf"):
                getattr(backend, kernel)(*args)


@pytest.mark.parametrize("name", CPU)
def test_an_unused_weight_with_nan_is_still_refused_without_dx(name):
    x, w, dy = _inputs("linear_backward")
    w[0, 0] = np.nan
    with pytest.raises(ValueError, match="^w: contains NaN or Inf"):
        backends.get(name).linear_backward(x, w, dy, need_dx=False)


@pytest.mark.parametrize("name", CPU)
def test_finite_inputs_that_overflow_give_inf_like_numpy(name):
    a = np.full((4, 8), 3e38, np.float32)
    b = np.full((8, 4), 2.0, np.float32)
    with np.errstate(over="ignore"):
        out = backends.get(name).matmul(a, b)
    assert np.isposinf(out).all()


@pytest.mark.parametrize("name", CPU)
def test_scans_can_be_skipped_and_nan_then_flows_through(name):
    a, b = _inputs("matmul")
    a[2, 3] = np.nan
    with backends.skip_value_checks():
        out = backends.get(name).matmul(a, b)
    assert np.isnan(out[2]).all() and np.isfinite(np.delete(out, 2, axis=0)).all()


class Tagged(np.ndarray):
    """An ndarray subclass: the lane leaves it to the general path."""


@pytest.mark.parametrize("name", CPU)
def test_what_the_lane_does_not_take_goes_down_the_general_path(name):
    backend = backends.get(name)
    a, b = _inputs("matmul")
    want = a @ b
    np.testing.assert_allclose(backend.matmul(a.view(Tagged), b), want, rtol=1e-5, atol=1e-5)
    out = np.empty((5, 3), np.float32)
    with pytest.raises(ValueError, match="out: expected shape"):
        backend.matmul(a, b, out=np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="b.shape\\[0\\] is 3 but a.shape\\[1\\] is 7"):
        backend.matmul(a, b.T.copy())
    with pytest.raises(ValueError, match="out: expected a writable array"):
        out.flags.writeable = False
        backend.matmul(a, b, out=out)


def test_the_plan_accepts_plain_arrays_and_declines_the_rest():
    plan = host_lane.plan(SIGNATURES["linear_backward"])
    x, w, dy = _inputs("linear_backward")
    f32 = (np.dtype(np.float32),)
    outs = host_lane.accept(plan, (x, w, dy, None, None, None), (), f32, True)
    assert [o.shape for o in outs] == [(5, 7), (7, 3), (3,)]
    assert host_lane.accept(plan, (x, w, dy, None, None, None), ("dx",), f32, True)[0] is None
    declined = [
        (x.astype(np.float64), w, dy, None, None, None),       # dtypes differ
        (x, w, dy[:4], None, None, None),                      # B disagrees
        (x.T, w, dy, None, None, None),                        # not C-contiguous
        (x, w, dy, None, np.empty((3, 7), np.float32), None),  # dw of the wrong shape
        (x, w, dy, None, None, dy[0]),                         # db overlaps dy
        (x.view(Tagged), w, dy, None, None, None),             # a subclass
    ]
    for args in declined:
        assert host_lane.accept(plan, args, (), f32, True) is None
    x[1, 1] = np.inf
    assert host_lane.accept(plan, (x, w, dy, None, None, None), (), f32, True) is None
    assert host_lane.accept(plan, (x, w, dy, None, None, None), (), f32, False) is not None


@pytest.mark.skipif("c" not in CPU, reason="the C extension is not built")
@pytest.mark.parametrize("isa", ["avx512", "avx2", "baseline"])
@pytest.mark.parametrize("kernel, shapes", [
    ("matmul", [(64, 784), (784, 128)]),                  # whole tiles, B read in place
    ("matmul", [(37, 300), (300, 45)]),                   # edge tiles, B packed
    ("matmul_backward_weight", [(64, 784), (64, 128)]),   # x.T read in place
    ("matmul_backward_input", [(70, 128), (784, 128)]),   # w.T packed, columns split
    ("linear_forward", [(50, 40), (40, 10), (10,)]),      # swapped (10 columns)
])
def test_cs_output_scan_finds_a_bad_input_on_every_micro_kernel(isa, kernel, shapes):
    from fastsgd.backends import c_ext
    try:
        previous = c_ext.set_isa(isa)
    except ValueError:
        pytest.skip(f"this CPU does not run the {isa} micro-kernel")
    try:
        backend = backends.get("c")
        rng = np.random.default_rng(4)
        names = [p.name for p in SIGNATURES[kernel] if not p.written]
        clean = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        got = _as_tuple(getattr(backend, kernel)(*clean))
        want = _as_tuple(getattr(backends.get("numpy"), kernel)(*clean))
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
        for index, name in enumerate(names):
            for bad in (np.nan, np.inf):
                args = [a.copy() for a in clean]
                args[index].reshape(-1)[rng.integers(args[index].size)] = bad
                with pytest.raises(ValueError, match=f"^{name}: contains NaN or Inf"):
                    getattr(backend, kernel)(*args)
    finally:
        c_ext.set_isa(previous)
