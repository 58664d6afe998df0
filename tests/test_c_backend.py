"""The C backend on its own: symbols, memory safety of direct calls, tile edges.

The contract-level tests (test_kernels.py, test_bad_input.py) already run on ``c``
through ``contract.Backend``.  Here ``fastsgd.backends.c_ext`` is called directly,
bypassing that validation, and the blocked matmul is checked at shapes around its
tile sizes.
"""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fastsgd import backends
from fastsgd.backends import program as prog
from fastsgd.backends.contract import KERNELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C_STATUS = backends.available()["c"]
needs_c = pytest.mark.skipif(C_STATUS is not True, reason=f"c unavailable: {C_STATUS}")

# Tile sizes of csrc/gemm.c: C tiles of MR x NR for each micro-kernel, A packed
# MC rows at a time (rounded down to whole tiles), depth blocks of at most KC.
TILES = {"avx512": (8, 32), "avx2": (6, 16), "baseline": (6, 8)}
MC, KC = 128, 256


def run_python(code, **env):
    """Run ``code`` in a fresh interpreter at the project root; return the CompletedProcess."""
    full_env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                    **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=full_env, timeout=300)


@pytest.fixture
def c_ext():
    from fastsgd.backends import c_ext
    return c_ext


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request, c_ext):
    """Run the test with the matmuls limited to 1, then 2 threads."""
    previous = c_ext.set_threads(request.param)
    yield request.param
    c_ext.set_threads(previous)


@pytest.fixture(params=list(TILES))
def isa(request, c_ext):
    """Run the test with each matmul micro-kernel this CPU runs; yields (mr, nr)."""
    try:
        previous = c_ext.set_isa(request.param)
    except ValueError:
        pytest.skip(f"this CPU does not run the {request.param} micro-kernel")
    yield TILES[request.param]
    c_ext.set_isa(previous)


# ---------------------------------------------------------------- the build
@needs_c
def test_every_c_symbol_exists(c_ext):
    exported = set(dir(c_ext.lib))
    expected = set(KERNELS) | {"train_epoch", "pool_threads", "set_pool_threads",
                               "matmul_isa", "set_matmul_isa"}
    assert expected <= exported, sorted(expected - exported)


@needs_c
def test_c_ext_implements_the_contract(c_ext):
    assert backends.contract.missing_kernels(c_ext) == []


@needs_c
def test_thread_limit_can_be_set_and_restored(c_ext):
    previous = c_ext.set_threads(1)
    assert c_ext.threads() == 1
    assert c_ext.set_threads(previous) == 1
    assert c_ext.threads() == previous >= 1


def test_disabled_c_backend_is_unavailable_with_its_reason():
    out = run_python("from fastsgd import backends; print(backends.available()['c'])",
                     FASTSGD_DISABLE_C="1")
    assert out.returncode == 0, out.stderr
    assert "disabled by FASTSGD_DISABLE_C=1" in out.stdout
    out = run_python("from fastsgd import backends; print(backends.default_name())",
                     FASTSGD_DISABLE_C="1", FASTSGD_BACKEND="")
    assert out.returncode == 0 and out.stdout.strip() != "c", out.stdout + out.stderr


def test_disabled_c_backend_skips_its_tests():
    env = dict(os.environ, FASTSGD_DISABLE_C="1")
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/test_kernels.py", "-k", "test_kernels_accept_and_fill_out_arrays"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "c unavailable: C extension disabled by FASTSGD_DISABLE_C=1" in out.stdout


# ------------------------------------------------ direct calls, bad input
OUTPUTS = {"out", "dx", "dw", "db", "dpreds", "dlogits", "param", "velocity"}


def valid_args(kernel):
    """Keyword arguments for a valid direct call of c_ext.<kernel> (small shapes)."""
    rng = np.random.default_rng(7)

    def f32(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    B, I, O, C = 5, 7, 3, 4
    targets = np.array([1, 0, 1, 1, 0], np.float32)
    labels = np.array([0, 2, 1, 2, 0], np.int64)  # valid for 3, 4 or 5 classes
    return {
        "matmul": dict(a=f32(B, I), b=f32(I, O), out=f32(B, O)),
        "matmul_backward_input": dict(dy=f32(B, O), w=f32(I, O), dx=f32(B, I)),
        "matmul_backward_weight": dict(x=f32(B, I), dy=f32(B, O), dw=f32(I, O)),
        "bias_backward": dict(dy=f32(B, O), db=f32(O)),
        "linear_forward": dict(x=f32(B, I), w=f32(I, O), b=f32(O), out=f32(B, O)),
        "linear_backward": dict(x=f32(B, I), w=f32(I, O), dy=f32(B, O), dx=f32(B, I),
                                dw=f32(I, O), db=f32(O)),
        "sigmoid_forward": dict(x=f32(B, O), out=f32(B, O)),
        "sigmoid_backward": dict(y=f32(B, O), dy=f32(B, O), dx=f32(B, O)),
        "relu_forward": dict(x=f32(B, O), out=f32(B, O)),
        "relu_backward": dict(x=f32(B, O), dy=f32(B, O), dx=f32(B, O)),
        "tanh_forward": dict(x=f32(B, O), out=f32(B, O)),
        "tanh_backward": dict(y=f32(B, O), dy=f32(B, O), dx=f32(B, O)),
        "mnist_loss_forward": dict(preds=f32(B), targets=targets),
        "mnist_loss_backward": dict(preds=f32(B), targets=targets, dpreds=f32(B)),
        "cross_entropy_forward": dict(logits=f32(B, C), labels=labels),
        "cross_entropy_backward": dict(logits=f32(B, C), labels=labels, dlogits=f32(B, C)),
        "mse_forward": dict(preds=f32(B, O), targets=f32(B, O)),
        "mse_backward": dict(preds=f32(B, O), targets=f32(B, O), dpreds=f32(B, O)),
        "sgd_update": dict(param=f32(B, O), grad=f32(B, O), velocity=f32(B, O), lr=0.1,
                           momentum=0.9, weight_decay=0.01),
        "binary_accuracy": dict(preds=f32(B), targets=targets),
        "multiclass_accuracy": dict(logits=f32(B, C), labels=labels),
    }[kernel]


def non_contiguous(x):
    """A strided view with x's shape and values."""
    wide = np.repeat(x[..., None], 2, axis=-1)
    return wide[..., 0]


def read_only(x):
    x = x.copy()
    x.flags.writeable = False
    return x


def more_rows(x):
    return np.concatenate([x, x[:1]])


def fewer_rows(x):
    return x[:-1].copy()


def more_cols(x):
    return np.concatenate([x, x[:, :1]], axis=1)


def fewer_cols(x):
    return x[:, :-1].copy()


def wrong_dtype(x):
    return x.astype(np.int32 if x.dtype == np.int64 else np.float64)


MUTATIONS = {
    "dtype": (wrong_dtype, TypeError),
    "float16": (lambda x: x.astype(np.float16), TypeError),
    "more_rows": (more_rows, ValueError),
    "fewer_rows": (fewer_rows, ValueError),
    "more_cols": (more_cols, ValueError),  # 2-D arrays only
    "fewer_cols": (fewer_cols, ValueError),
    "non_contiguous": (non_contiguous, ValueError),
    "list": (lambda x: x.tolist(), TypeError),
    "read_only": (read_only, ValueError),  # outputs only
    "flat": (lambda x: x.reshape(-1) if x.ndim > 1 else x.reshape(1, -1), ValueError),
}
ELEMENTWISE = ("sigmoid_forward", "sigmoid_backward", "relu_forward", "relu_backward",
               "tanh_forward", "tanh_backward", "mse_forward", "mse_backward", "sgd_update")
# Changed arrays that still make a valid call: a free dimension of the kernel, or a
# reshape (elementwise kernels work on flat arrays and only need equal sizes).
STILL_VALID = {("bias_backward", "dy", "more_rows"), ("bias_backward", "dy", "fewer_rows")} | {
    (kernel, "logits", m) for kernel in ("cross_entropy_forward", "multiclass_accuracy")
    for m in ("more_cols", "fewer_cols")} | {
    (kernel, name, "flat") for kernel in ELEMENTWISE for name in KERNELS[kernel]}


def bad_input_cases():
    """(case id, kernel, argument, mutation, expected exception name or "None")."""
    cases = []
    for kernel in KERNELS:
        for name, value in valid_args(kernel).items():
            if not isinstance(value, np.ndarray):
                continue
            for mutation, (_, error) in MUTATIONS.items():
                if mutation == "read_only" and name not in OUTPUTS:
                    continue
                if mutation.endswith("_cols") and value.ndim < 2:
                    continue
                expected = ("None" if (kernel, name, mutation) in STILL_VALID
                            else error.__name__)
                cases.append((f"{kernel}-{name}-{mutation}", kernel, name, mutation, expected))
    return cases


def run_sweep():
    """Run every bad-input case; print one JSON line per case (run in a subprocess)."""
    from fastsgd.backends import c_ext
    for case_id, kernel, name, mutation, _ in bad_input_cases():
        args = valid_args(kernel)
        args[name] = MUTATIONS[mutation][0](args[name])
        print(json.dumps({"id": case_id, "start": True}), flush=True)
        try:
            getattr(c_ext, kernel)(**args)
            result = {"id": case_id, "error": None, "message": ""}
        except Exception as exc:
            result = {"id": case_id, "error": type(exc).__name__, "message": str(exc)}
        print(json.dumps(result), flush=True)
    print(json.dumps({"done": True}), flush=True)


@pytest.fixture(scope="module")
def sweep_results():
    """Results of run_sweep() from a subprocess, so a crash fails tests instead of pytest."""
    out = run_python("from tests.test_c_backend import run_sweep; run_sweep()")
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines or "done" not in lines[-1]:
        last = lines[-1]["id"] if lines else "before the first case"
        pytest.fail(f"the bad-input sweep died (exit {out.returncode}) at {last}:\n"
                    f"{out.stderr[-3000:]}")
    return {r["id"]: r for r in lines if "error" in r}


@needs_c
@pytest.mark.parametrize("kernel", list(KERNELS))
def test_valid_direct_calls_succeed(c_ext, kernel):
    getattr(c_ext, kernel)(**valid_args(kernel))


@needs_c
@pytest.mark.parametrize("case_id, kernel, name, mutation, error", bad_input_cases(),
                         ids=[c[0] for c in bad_input_cases()])
def test_bad_direct_call_raises_naming_the_argument(sweep_results, case_id, kernel, name,
                                                    mutation, error):
    result = sweep_results[case_id]
    assert str(result["error"]) == error, result
    if error == "None":
        return
    # The message names the argument: "x: ...", "x.shape ..." or "x.size" (not just any "x").
    assert re.search(rf"(?<![\w.]){name}(:|\.shape|\.size)", result["message"]), result


@needs_c
def test_out_of_range_labels_raise(c_ext):
    logits = np.zeros((3, 4), np.float32)
    for labels in ([0, 4, 1], [0, -1, 1], [2**40, 0, 0]):
        labels = np.array(labels, np.int64)
        with pytest.raises(ValueError, match=r"labels: labels must lie in \[0, 4\)"):
            c_ext.cross_entropy_forward(logits, labels)
        with pytest.raises(ValueError, match=r"labels: labels must lie in \[0, 4\)"):
            c_ext.cross_entropy_backward(logits, labels, np.empty_like(logits))


@needs_c
def test_velocity_none_is_plain_sgd(c_ext):
    p = np.array([1.0, -2.0], np.float32)
    c_ext.sgd_update(p, np.array([0.5, 0.5], np.float32), 0.1, 0.9, 0.0, None)
    np.testing.assert_allclose(p, [0.95, -2.05], rtol=1e-6)


# --------------------------------------------------- matmuls vs the reference
def reference(kernel, *args):
    """The float64 result of a matmul-family kernel."""
    args = [a.astype(np.float64) for a in args]
    if kernel == "matmul":
        return args[0] @ args[1]
    if kernel == "matmul_backward_input":
        return args[0] @ args[1].T
    if kernel == "matmul_backward_weight":
        return args[0].T @ args[1]
    if kernel == "linear_forward":
        return args[0] @ args[1] + args[2]
    raise KeyError(kernel)


def check_matmuls(c_ext, rng, m, k, n):
    """All matmul-family kernels as a (m, k) @ (k, n) product, vs float64."""
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    bias = rng.standard_normal(n, dtype=np.float32)
    cases = {  # kernel: (inputs, output shape)
        "matmul": ((a, b), (m, n)),
        "linear_forward": ((a, b, bias), (m, n)),
        # dy (B=m, O=k) @ w.T with w (I=n, O=k) -> (m, n)
        "matmul_backward_input": ((a, np.ascontiguousarray(b.T)), (m, n)),
        # x.T @ dy with x (B=k, I=m), dy (B=k, O=n) -> (m, n)
        "matmul_backward_weight": ((np.ascontiguousarray(a.T), b), (m, n)),
    }
    for kernel, (inputs, shape) in cases.items():
        out = np.full(shape, np.nan, np.float32)
        getattr(c_ext, kernel)(*inputs, out)
        want = reference(kernel, *inputs)
        # float32 sums of k products of N(0, 1) numbers: error ~ eps * k; a dropped or
        # doubled term is off by O(1).
        np.testing.assert_allclose(out, want, rtol=0, atol=2e-6 * k + 1e-5,
                                   err_msg=f"{kernel} {m}x{k}x{n}")


def edge_sizes(mr, nr):
    """Sizes of M and N at and around the tile and block boundaries.

    N in whole panels up to 256 takes the unpacked-B path when B is row-major.
    """
    mc = MC // mr * mr
    return ([1, mr - 1, mr, mr + 1, 2 * mr + 3, mc - 1, mc, mc + 1, 2 * mc + mr + 1],
            [1, nr - 1, nr, nr + 1, 2 * nr + 5, 4 * nr, 4 * nr + 1, 288])


@needs_c
@pytest.mark.parametrize("k", [1, 17, KC - 1, KC, KC + 1, 2 * KC + 3])
def test_matmuls_at_tile_edges(c_ext, isa, k):
    previous = c_ext.set_threads(1)
    try:
        rng = np.random.default_rng(k)
        edge_m, edge_n = edge_sizes(*isa)
        for m in edge_m:
            for n in edge_n:
                check_matmuls(c_ext, rng, m, k, n)
    finally:
        c_ext.set_threads(previous)


@needs_c
def test_matmuls_at_tile_edges_on_two_threads(c_ext, isa):
    # Rows split between the threads, or columns when C has a single row panel.
    previous = c_ext.set_threads(2)
    try:
        rng = np.random.default_rng(2)
        edge_m, edge_n = edge_sizes(*isa)
        for m in edge_m:
            for n in edge_n:
                check_matmuls(c_ext, rng, m, KC + 1, n)
    finally:
        c_ext.set_threads(previous)


@needs_c
def test_isa_can_be_chosen(c_ext):
    best = c_ext.isa()  # the fastest this CPU runs
    assert best in TILES
    try:
        assert c_ext.set_isa("baseline") == best  # every CPU runs the baseline
        assert c_ext.isa() == "baseline"
        with pytest.raises(ValueError, match="isa: 'sse9' is unknown"):
            c_ext.set_isa("sse9")
        assert c_ext.isa() == "baseline"
    finally:
        c_ext.set_isa(best)


@needs_c
@pytest.mark.parametrize("shape", [(256, 784, 128), (64, 784, 128), (1000, 1000, 37),
                                   (784, 256, 128), (129, 1025, 65), (3, 4000, 300),
                                   (17, 2100, 2050)],
                         ids=lambda s: "x".join(map(str, s)))
def test_matmuls_at_large_shapes(c_ext, threads, shape):
    # 17x2100x2050 packs B in more than one chunk (more than 16 MiB of panels).
    check_matmuls(c_ext, np.random.default_rng(1), *shape)


@needs_c
@pytest.mark.parametrize("shape", [(17, 2100, 2050), (1030, 2100, 2050)],
                         ids=["columns-split", "rows-split"])
def test_two_threads_give_the_same_bits_every_run(c_ext, shape):
    # Packed B spans two chunks at these shapes; the threads split the columns (each
    # packs its own panels) or the rows (they share the packed B).  The work is split
    # statically, so every run must give the same bits: a race shows as a difference.
    m, k, n = shape
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((k, n), dtype=np.float32)
    previous = c_ext.set_threads(2)
    try:
        first = np.empty((m, n), np.float32)
        c_ext.matmul(a, b, first)
        np.testing.assert_allclose(first, a.astype(np.float64) @ b, rtol=0, atol=2e-6 * k)
        out = np.empty_like(first)
        for _ in range(8):
            out.fill(np.nan)
            c_ext.matmul(a, b, out)
            np.testing.assert_array_equal(out, first)
    finally:
        c_ext.set_threads(previous)


@needs_c
def test_linear_backward_direct(c_ext):
    rng = np.random.default_rng(3)
    x, w, dy = (rng.standard_normal(s, dtype=np.float32) for s in ((65, 300), (300, 33), (65, 33)))
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty(33, np.float32)
    c_ext.linear_backward(x, w, dy, dx, dw, db)
    x64, w64, dy64 = (v.astype(np.float64) for v in (x, w, dy))
    np.testing.assert_allclose(dx, dy64 @ w64.T, atol=1e-4)
    np.testing.assert_allclose(dw, x64.T @ dy64, atol=1e-4)
    np.testing.assert_allclose(db, dy64.sum(0), atol=1e-4)
    dw2 = np.empty_like(w)
    c_ext.linear_backward(x, w, dy, None, dw2, db)
    np.testing.assert_array_equal(dw2, dw)


NARROW = [(256, 128, 10), (64, 128, 10), (300, 97, 1), (600, 40, 16), (33, 500, 3), (5, 40, 17)]


def padded(a, columns=64):
    """``a`` with zero columns added up to ``columns``: a product too wide to be swapped."""
    return np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, columns - a.shape[-1])])


@needs_c
@pytest.mark.parametrize("batch, features, outputs", NARROW)
def test_narrow_products_equal_the_wide_product_bit_for_bit(c_ext, threads, isa, batch,
                                                            features, outputs):
    """x @ w + b and x.T @ dy with few outputs are computed transposed (gemm_swapped):
    the same values, bit for bit, as the columns of a product too wide for that."""
    rng = np.random.default_rng(batch + outputs)
    x = rng.standard_normal((batch, features), dtype=np.float32)
    w = rng.standard_normal((features, outputs), dtype=np.float32)
    b = rng.standard_normal(outputs, dtype=np.float32)
    dy = rng.standard_normal((batch, outputs), dtype=np.float32)
    out, wide_out = np.empty((batch, outputs), np.float32), np.empty((batch, 64), np.float32)
    c_ext.linear_forward(x, w, b, out)
    c_ext.linear_forward(x, padded(w), padded(b), wide_out)
    np.testing.assert_array_equal(out, wide_out[:, :outputs])
    np.testing.assert_allclose(out, x.astype(np.float64) @ w + b, rtol=0, atol=2e-6 * features)
    dw, wide_dw = np.empty((features, outputs), np.float32), np.empty((features, 64), np.float32)
    c_ext.matmul_backward_weight(x, dy, dw)
    c_ext.matmul_backward_weight(x, padded(dy), wide_dw)
    np.testing.assert_array_equal(dw, wide_dw[:, :outputs])
    np.testing.assert_allclose(dw, x.astype(np.float64).T @ dy, rtol=0, atol=2e-6 * batch)


# --------------------------------------------------------- elementwise kernels
@needs_c
@pytest.mark.parametrize("n", [1, 15, 16, 17, 63, 64, 65, 1000, 100_003])
def test_elementwise_kernels_at_vector_tails(c_ext, n):
    ref = backends.get("numpy")._impl
    rng = np.random.default_rng(n)
    x, dy = rng.standard_normal(n, dtype=np.float32) * 5, rng.standard_normal(n, dtype=np.float32)
    y = rng.uniform(0, 1, n).astype(np.float32)
    t = rng.uniform(-1, 1, n).astype(np.float32)
    for kernel, args in (("sigmoid_forward", (x,)), ("relu_forward", (x,)),
                         ("relu_backward", (x, dy)), ("sigmoid_backward", (y, dy)),
                         ("tanh_forward", (x,)), ("tanh_backward", (t, dy))):
        got, want = np.empty(n, np.float32), np.empty(n, np.float64)
        getattr(c_ext, kernel)(*args, got)
        getattr(ref, kernel)(*(a.astype(np.float64) for a in args), want)
        np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-7, err_msg=kernel)


@needs_c
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 4095, 4096, 4097, 10_000])
def test_all_finite_finds_every_nan_and_inf(c_ext, dtype, n):
    info = np.finfo(dtype)
    x = np.linspace(-1, 1, n).astype(dtype)
    x[::7] = info.max                             # extremes and subnormals are finite
    x[1::7] = -info.tiny / 4
    x[2::7] = -0.0
    assert c_ext.all_finite(x)
    for bad in (np.nan, np.inf, -np.inf):
        for at in sorted({0, n // 2, n - 1, min(4095, n - 1), min(4096, n - 1)}):
            y = x.copy()
            y[at] = bad
            assert not c_ext.all_finite(y), (bad, at)
    y = x.copy()
    y[-1] = np.nan    # a NaN's payload bits do not matter, nor its sign
    y.view(np.uint32 if dtype == np.float32 else np.uint64)[-1] |= 1
    assert not c_ext.all_finite(-y)


@needs_c
@pytest.mark.parametrize("bad, error", [(np.zeros(3, np.int32), TypeError), ([1.0, 2.0], TypeError),
                                        (np.zeros((4, 4), np.float32)[:, ::2], ValueError)])
def test_all_finite_refuses_what_it_cannot_read(c_ext, bad, error):
    with pytest.raises(error, match="x: expected"):
        c_ext.all_finite(bad)


@needs_c
def test_elementwise_kernels_work_in_place(c_ext):
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    want = 1 / (1 + np.exp(-x.astype(np.float64)))
    c_ext.sigmoid_forward(x, x)
    np.testing.assert_allclose(x, want, rtol=3e-7)
    x = np.linspace(-3, 3, 1001, dtype=np.float32)
    c_ext.relu_forward(x, x)
    assert (x >= 0).all() and x[-1] == 3


@needs_c
@pytest.mark.parametrize("classes", [1, 2, 10, 17, 100])
def test_cross_entropy_at_extremes_and_widths(c_ext, classes):
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((33, classes)) * 40).astype(np.float32)
    labels = rng.integers(0, classes, 33)
    ref = backends.get("numpy")._impl
    z64 = logits.astype(np.float64)
    got = c_ext.cross_entropy_forward(logits, labels)
    assert got == pytest.approx(ref.cross_entropy_forward(z64, labels), rel=1e-6, abs=1e-6)
    grad, want = np.empty_like(logits), np.empty_like(z64)
    c_ext.cross_entropy_backward(logits, labels, grad)
    ref.cross_entropy_backward(z64, labels, want)
    np.testing.assert_allclose(grad, want, rtol=1e-6, atol=1e-8)


@needs_c
@pytest.mark.parametrize("n", [1, 15, 16, 17, 63, 64, 65, 1000, 100_003])
def test_mse_kernels_at_vector_tails(c_ext, n):
    ref = backends.get("numpy")._impl
    rng = np.random.default_rng(n)
    p, t = (rng.standard_normal(n, dtype=np.float32) * 3 for _ in range(2))
    p64, t64 = p.astype(np.float64), t.astype(np.float64)
    assert c_ext.mse_forward(p, t) == pytest.approx(ref.mse_forward(p64, t64), rel=1e-12)
    got, want = np.full(n, np.nan, np.float32), np.empty(n, np.float64)
    c_ext.mse_backward(p, t, got)
    ref.mse_backward(p64, t64, want)
    np.testing.assert_allclose(got, want, rtol=4e-7, atol=1e-30)


@needs_c
def test_tanh_kernels_work_in_place(c_ext):
    x = np.linspace(-5, 5, 1001, dtype=np.float32)
    want = np.tanh(x.astype(np.float64))
    c_ext.tanh_forward(x, x)
    np.testing.assert_allclose(x, want, rtol=3e-7)
    dy = np.full_like(x, 0.5)
    c_ext.tanh_backward(x, dy, dy)
    np.testing.assert_allclose(dy, 0.5 * (1 - want**2), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------ fused epoch
# c_ext.train_epoch against the reference's plain loop, both in float32.
ACTIVATIONS = ("relu", "sigmoid", "tanh")
LOSSES = (prog.MNIST_LOSS, prog.CROSS_ENTROPY, prog.MSE)


def epoch_args(spec, loss_kind, N=70, bs=16, momentum=0.9, weight_decay=1e-3, seed=0,
               with_velocities=None):
    """Keyword arguments of a fused epoch of the program ``spec`` on random data.

    ``spec`` lists ``(kind name, n_in, n_out)`` as ``program.layer_table`` takes it;
    velocities are None unless ``with_velocities`` (default: when momentum != 0).
    """
    if with_velocities is None:
        with_velocities = momentum != 0
    rng = np.random.default_rng(seed)
    layers, P = prog.layer_table(spec)
    I, O = spec[0][1], spec[-1][2]
    if loss_kind == prog.CROSS_ENTROPY:
        targets = rng.integers(0, O, N).astype(np.int64)
    elif loss_kind == prog.MNIST_LOSS:
        targets = rng.integers(0, 2, (N, 1)).astype(np.float32)
    else:
        targets = rng.standard_normal((N, O), dtype=np.float32)
    steps = -(-N // bs)
    return dict(layers=layers, loss_kind=loss_kind,
                x=rng.standard_normal((N, I), dtype=np.float32), targets=targets,
                order=rng.permutation(N).astype(np.int64), bs=bs,
                lrs=np.linspace(0.2, 0.05, steps).astype(np.float32),
                momentum=np.float32(momentum), weight_decay=np.float32(weight_decay),
                params=(0.4 * rng.standard_normal(P)).astype(np.float32),
                grads=np.zeros(P, np.float32),
                velocities=(0.1 * rng.standard_normal(P)).astype(np.float32)
                if with_velocities else None,
                losses=np.zeros(steps, np.float64))


def random_program(seed):
    """(spec, loss kind, epoch options) for seed: depth 1-5, widths incl. 1 and odd sizes.

    The seed cycles through every loss and, at each depth, every activation.
    """
    rng = np.random.default_rng(seed)
    loss_kind = LOSSES[seed % 3]
    depth = 1 + seed % 5
    sizes = [int(rng.choice([1, 3, 13, 40]))]
    sizes += [int(rng.choice([1, 2, 5, 9, 17, 33])) for _ in range(depth - 1)]
    sizes.append(1 if loss_kind == prog.MNIST_LOSS else int(rng.choice([1, 3, 10])))
    spec = []
    if seed % 7 == 3:  # an activation before the first LINEAR
        spec.append((ACTIVATIONS[seed % 3], sizes[0], sizes[0]))
    for k, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        spec.append(("linear", n_in, n_out))
        if k < depth - 1 or seed % 4 == 0:  # between layers, sometimes also after the last
            spec.append((ACTIVATIONS[(seed // 3 + k) % 3], n_out, n_out))
    bs = int(rng.choice([1, 7, 16, 32]))
    N = int(bs * rng.integers(1, 6) + rng.integers(1, bs + 1))  # a short last batch, mostly
    options = dict(N=N, bs=bs, momentum=(0.0, 0.9)[seed % 2],
                   weight_decay=(0.0, 1e-3)[(seed // 2) % 2], seed=seed,
                   with_velocities=seed % 4 != 0)  # also with momentum 0: v = g
    return spec, loss_kind, options


def copy_args(args):
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}


def run_both(c_ext, args):
    """(c's arguments after the epoch, the reference's), each run on its own copy."""
    from fastsgd.backends import numpy_ref
    mine, theirs = copy_args(args), copy_args(args)
    done = c_ext.train_epoch(**mine)
    assert done == numpy_ref.train_epoch(**theirs)
    return done, mine, theirs


def assert_same_epoch(mine, theirs, tol=1e-5):
    """Same losses and blocks to float32 rounding (a wrong term, e.g. lr * wd * p, is larger)."""
    np.testing.assert_allclose(mine["losses"], theirs["losses"], rtol=tol, atol=1e-6)
    for name in ("params", "grads", "velocities"):
        if mine[name] is not None:
            scale = max(1.0, float(np.abs(theirs[name]).max()))
            np.testing.assert_allclose(mine[name], theirs[name], rtol=tol, atol=tol * scale,
                                       err_msg=name)


@needs_c
@pytest.mark.parametrize("seed", range(30))
def test_train_epoch_matches_the_reference_on_random_programs(c_ext, threads, seed):
    spec, loss_kind, options = random_program(seed)
    args = epoch_args(spec, loss_kind, **options)
    done, mine, theirs = run_both(c_ext, args)
    assert done == len(args["lrs"])
    assert_same_epoch(mine, theirs)


@needs_c
@pytest.mark.parametrize("bs", [64, 256, 1100])
@pytest.mark.parametrize("deep", [False, True], ids=["784-128-10", "784-64-32-3 mse"])
def test_train_epoch_gives_the_same_bits_on_one_and_two_threads(c_ext, isa, bs, deep):
    # 784 inputs are two depth blocks with AVX-512 (four with AVX2): on two threads the
    # first layer's forward takes them apart (partial products added in block order),
    # on one in turn.  The
    # layers after it and the loss run in pieces of rows, spread over the threads, and
    # their gradients are added piece by piece: 2 pieces at bs 64 and at bs 256, 8 (the
    # most) at bs 1100, 1 in the last batch of 5 rows.
    spec = [("linear", 784, 128), ("relu", 128, 128), ("linear", 128, 10)]
    loss_kind, options = prog.CROSS_ENTROPY, {}
    if deep:
        spec = [("linear", 784, 64), ("tanh", 64, 64), ("linear", 64, 32),
                ("sigmoid", 32, 32), ("linear", 32, 3)]
        loss_kind, options = prog.MSE, {"momentum": 0.9, "weight_decay": 1e-3}
    args = epoch_args(spec, loss_kind, N=3 * bs + 5, bs=bs, seed=2, **options)
    args["params"] *= 0.1
    results = []
    for n in (1, 2, 2):
        previous = c_ext.set_threads(n)
        try:
            mine = copy_args(args)
            assert c_ext.train_epoch(**mine) == 4
            results.append(mine)
        finally:
            c_ext.set_threads(previous)
    for other in results[1:]:
        for name in ("losses", "params", "grads", "velocities"):
            np.testing.assert_array_equal(other[name], results[0][name], err_msg=name)


@needs_c
def test_the_first_layers_forward_in_the_epoch_is_the_layer_paths_bit_for_bit(c_ext, isa):
    # One step, lr 0: the loss of the fused epoch (its forward split over the threads by
    # depth, reading the batch's rows of x in place) equals the loss of the
    # layer-by-layer kernels on the same batch (x[rows] gathered, then packed), on every
    # micro-kernel.  A batch of 32 rows is one piece of the epoch's tail, whose loss is
    # then the batch's own.  17 classes: the tail's second layer is not narrow (narrow.c
    # runs the CPU's best instruction set whatever the micro-kernel), so both paths run
    # the same product there.
    H, C = 128, 17
    spec = [("linear", 784, H), ("relu", H, H), ("linear", H, C)]
    args = epoch_args(spec, prog.CROSS_ENTROPY, N=32, bs=32, momentum=0.0,
                      weight_decay=0.0, seed=3)
    args["lrs"][:] = 0.0
    params = args["params"]
    w1, b1 = params[:784 * H].reshape(784, H), params[784 * H:784 * H + H]
    w2 = params[784 * H + H:784 * H + H + H * C].reshape(H, C)
    b2 = params[784 * H + H + H * C:]
    x = args["x"][args["order"]]
    previous = c_ext.set_threads(2)
    try:
        h = np.empty((32, H), np.float32)
        c_ext.linear_forward(x, w1, b1, h)
        c_ext.relu_forward(h.copy(), h)
        z = np.empty((32, C), np.float32)
        c_ext.linear_forward(h, w2, b2, z)
        want = c_ext.cross_entropy_forward(z, args["targets"][args["order"]])
        mine = copy_args(args)
        c_ext.train_epoch(**mine)
    finally:
        c_ext.set_threads(previous)
    assert mine["losses"][0] == want


@needs_c
@pytest.mark.parametrize("outputs", [1, 15, 16, 17])
@pytest.mark.parametrize("loss_kind", [prog.CROSS_ENTROPY, prog.MSE])
def test_train_epoch_matches_the_reference_with_narrow_layers_in_the_tail(
        c_ext, threads, outputs, loss_kind):
    # The LINEARs after the first with at most 16 outputs run narrow.c's products in the
    # tail's pieces: 33 in-features (two vectors and one float), a middle layer of 16
    # outputs, and a last one of 1, 15, 16 or 17 (not narrow) outputs.
    spec = [("linear", 40, 33), ("relu", 33, 33), ("linear", 33, 16), ("tanh", 16, 16),
            ("linear", 16, outputs)]
    args = epoch_args(spec, loss_kind, N=300, bs=64, momentum=0.9, weight_decay=1e-3,
                      seed=outputs)
    done, mine, theirs = run_both(c_ext, args)
    assert done == 5
    assert_same_epoch(mine, theirs)


@needs_c
def test_a_relu_before_a_narrow_layer_passes_no_gradient_at_zero(c_ext, threads):
    # The narrow layer's backward takes the ReLU's too (dx 0 where its input is not above
    # 0).  Rows of zeros and a zero bias make inputs exactly 0: the reference's ReLU
    # passes no gradient there, so the first layer's bias gradient is that of the other
    # rows alone.
    spec = [("linear", 40, 33), ("relu", 33, 33), ("linear", 33, 10)]
    args = epoch_args(spec, prog.CROSS_ENTROPY, N=64, bs=64, seed=5)
    args["x"][::2] = 0.0
    args["params"][40 * 33:40 * 33 + 33] = 0.0
    done, mine, theirs = run_both(c_ext, args)
    assert done == 1
    assert_same_epoch(mine, theirs)


@needs_c
@pytest.mark.parametrize("spec", [
    [("linear", 784, 128), ("relu", 128, 128), ("linear", 128, 10)],
    [("linear", 784, 256), ("relu", 256, 256), ("linear", 256, 128), ("tanh", 128, 128),
     ("linear", 128, 10)],
], ids=["784-128-10", "784-256-128-10"])
def test_train_epoch_matches_the_reference_at_mnist_sizes(c_ext, threads, isa, spec):
    # Big enough that the gather, the matmuls and the update of the block run threaded.
    args = epoch_args(spec, prog.CROSS_ENTROPY, N=300, bs=64, seed=1)
    args["params"] *= 0.1
    done, mine, theirs = run_both(c_ext, args)
    assert done == 5
    assert_same_epoch(mine, theirs)


@needs_c
@pytest.mark.parametrize("loss_kind", LOSSES)
def test_train_epoch_with_fewer_rows_than_the_batch(c_ext, loss_kind):
    spec = [("linear", 6, 4), ("sigmoid", 4, 4), ("linear", 4, 1)]
    args = epoch_args(spec, loss_kind, N=5, bs=64)
    done, mine, theirs = run_both(c_ext, args)
    assert done == 1
    assert_same_epoch(mine, theirs)


@needs_c
@pytest.mark.parametrize("loss_kind", LOSSES)
def test_train_epoch_stops_at_the_first_non_finite_loss(c_ext, loss_kind):
    spec = [("linear", 13, 5), ("relu", 5, 5), ("linear", 5, 1)]
    args = epoch_args(spec, loss_kind)
    args["x"][args["order"][16]] = np.nan  # a row of step 1
    done, mine, theirs = run_both(c_ext, args)
    assert done == 1
    assert np.isfinite(mine["losses"][0]) and np.isnan(mine["losses"][1])
    assert (mine["losses"][2:] == 0).all()
    assert np.isfinite(mine["params"]).all()  # step 1's update was skipped
    assert_same_epoch(mine, theirs)


@needs_c
def test_train_epoch_with_no_rows_does_nothing(c_ext):
    args = epoch_args([("linear", 3, 2)], prog.MSE, N=0)
    before = args["params"].copy()
    assert c_ext.train_epoch(**args) == 0
    np.testing.assert_array_equal(args["params"], before)


def bad_epoch_cases():
    """(id, loss kind, change of the valid arguments, error, message pattern)."""
    def set_(name, value):
        return lambda a: a.update({name: value(a) if callable(value) else value})

    def item(name, index, value):
        return lambda a: a[name].__setitem__(index, value)

    def read_only(name):
        return lambda a: a[name].setflags(write=False)

    CE, MNIST, MSE = prog.CROSS_ENTROPY, prog.MNIST_LOSS, prog.MSE
    f64 = lambda name: set_(name, lambda a: a[name].astype(np.float64))  # noqa: E731
    return [
        ("layers-dtype", CE, set_("layers", lambda a: a["layers"].astype(np.int32)), TypeError,
         "layers: expected an int64"),
        ("layers-list", CE, set_("layers", lambda a: a["layers"].tolist()), TypeError, "layers"),
        ("layers-shape", CE, set_("layers", lambda a: a["layers"][:, :3].copy()), ValueError,
         r"layers: expected shape \(L, 4\)"),
        ("layers-kind", CE, item("layers", (1, 0), 7), ValueError, r"layers\[1\]: unknown kind"),
        ("layers-chain", CE, item("layers", (2, 1), 8), ValueError, r"layers\[2\]: n_in is 8"),
        ("layers-param", CE, item("layers", (2, 3), 200), ValueError,
         r"layers\[2\]: w and b span"),
        ("loss_kind-unknown", CE, set_("loss_kind", 3), ValueError, "loss_kind: expected one of"),
        ("loss_kind-float", CE, set_("loss_kind", 1.0), TypeError, "loss_kind: expected an int"),
        ("loss_kind-mnist-outputs", MNIST, item("layers", (2, 2), 3), ValueError,
         "layers|loss_kind"),
        ("x-dtype", CE, f64("x"), TypeError, "x: expected dtype float32"),
        ("x-fortran", CE, set_("x", lambda a: np.asfortranarray(a["x"])), ValueError,
         "x: expected a C-contiguous"),
        ("x-width", CE, set_("x", lambda a: a["x"][:, 1:].copy()), ValueError,
         r"x.shape\[1\] is 12 but layers\[0\] n_in is 13"),
        ("x-1d", CE, set_("x", lambda a: a["x"][:, 0].copy()), ValueError, "x: expected a 2-D"),
        ("labels-high", CE, item("targets", 4, 3), ValueError,
         r"targets: labels must lie in \[0, 3\), got values from 0 to 3"),
        ("labels-negative", CE, item("targets", 4, -1), ValueError,
         r"targets: labels must lie in \[0, 3\), got values from -1 to"),
        ("labels-dtype", CE, set_("targets", lambda a: a["targets"].astype(np.int32)), TypeError,
         "targets: expected dtype int64"),
        ("labels-rows", CE, set_("targets", lambda a: a["targets"][:-1].copy()), ValueError,
         "targets: expected shape"),
        ("labels-strided", CE, set_("targets", lambda a: np.repeat(a["targets"], 2)[::2]),
         ValueError, "targets: expected a C-contiguous"),
        ("labels-as-floats", CE, set_("targets", np.zeros((70, 1), np.float32)), ValueError,
         r"targets: expected shape \(70,\)"),
        ("floats-as-labels", MSE, set_("targets", np.zeros((70, 3), np.int64)), TypeError,
         "targets: expected dtype float32"),
        ("targets-mse-shape", MSE, set_("targets", lambda a: a["targets"][:, :1].copy()),
         ValueError, r"targets: expected shape \(70, 3\)"),
        ("targets-mse-rows", MSE, set_("targets", lambda a: a["targets"][:-1].copy()),
         ValueError, "targets: expected shape"),
        ("targets-mse-dtype", MSE, f64("targets"), TypeError, "targets: expected dtype"),
        ("targets-mnist-flat", MNIST, set_("targets", lambda a: a["targets"][:, 0].copy()),
         ValueError, r"targets: expected shape \(70, 1\)"),
        ("order-2d", CE, set_("order", lambda a: a["order"].reshape(7, 10)), ValueError,
         r"order: expected a 1-D array"),
        ("order-part", CE, set_("order", lambda a: a["order"][:-16].copy()), ValueError,
         r"lrs: expected shape \(4,\) = \(ceil\(order.size / bs\),\)"),
        ("order-dtype", CE, set_("order", lambda a: a["order"].astype(np.int32)), TypeError,
         "order: expected dtype int64"),
        ("order-high", CE, item("order", 3, 70), ValueError,
         r"order: row indices must lie in \[0, 70\), got values from 0 to 70"),
        ("order-negative", CE, item("order", 3, -1), ValueError, r"order: row indices must lie"),
        ("bs-zero", CE, set_("bs", 0), ValueError, "bs: expected a batch size >= 1"),
        ("bs-float", CE, set_("bs", 2.0), TypeError, "bs: expected an integer"),
        ("lrs-steps", CE, set_("lrs", lambda a: a["lrs"][:-1].copy()), ValueError,
         r"lrs: expected shape \(5,\)"),
        ("lrs-dtype", CE, f64("lrs"), TypeError, "lrs: expected dtype float32"),
        ("losses-steps", CE, set_("losses", np.zeros(6)), ValueError, "losses: expected shape"),
        ("losses-dtype", CE, set_("losses", np.zeros(5, np.float32)), TypeError,
         "losses: expected dtype float64"),
        ("losses-read-only", CE, read_only("losses"), ValueError, "losses: expected a writable"),
        ("params-dtype", CE, f64("params"), TypeError, "params: expected dtype float32"),
        ("params-2d", CE, set_("params", lambda a: a["params"].reshape(1, -1)), ValueError,
         "params: expected a 1-D"),
        ("params-short", CE, set_("params", lambda a: a["params"][:-1].copy()), ValueError,
         r"layers\[2\]: w and b span"),
        ("params-read-only", CE, read_only("params"), ValueError, "params: expected a writable"),
        ("grads-size", CE, set_("grads", lambda a: a["grads"][:-1].copy()), ValueError,
         "grads: expected shape"),
        ("grads-read-only", CE, read_only("grads"), ValueError, "grads: expected a writable"),
        ("velocities-size", CE, set_("velocities", lambda a: a["velocities"][1:].copy()),
         ValueError, "velocities: expected shape"),
        ("velocities-dtype", CE, f64("velocities"), TypeError, "velocities: expected dtype"),
        ("velocities-none", CE, set_("velocities", None), ValueError,
         "velocities: required when momentum != 0"),
        ("velocities-read-only", CE, read_only("velocities"), ValueError,
         "velocities: expected a writable"),
    ]


@needs_c
@pytest.mark.parametrize("loss_kind, change, error, match",
                         [case[1:] for case in bad_epoch_cases()],
                         ids=[case[0] for case in bad_epoch_cases()])
def test_train_epoch_rejects_bad_input(c_ext, loss_kind, change, error, match):
    out = 1 if loss_kind == prog.MNIST_LOSS else 3
    args = epoch_args([("linear", 13, 9), ("tanh", 9, 9), ("linear", 9, out)], loss_kind)
    change(args)
    with pytest.raises(error, match=match):
        c_ext.train_epoch(**args)


@needs_c
@pytest.mark.parametrize("classes", [3, 10, 40])
def test_cross_entropy_of_equal_huge_logits_is_log_of_the_classes(c_ext, classes):
    logits = np.full((5, classes), 1e16, np.float32)
    labels = np.arange(5, dtype=np.int64) % classes
    assert c_ext.cross_entropy_forward(logits, labels) == pytest.approx(np.log(classes),
                                                                        rel=1e-6)
