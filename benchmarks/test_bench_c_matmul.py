"""The C backend's kernels against NumPy (OpenBLAS) and Numba, with pytest-benchmark.

    pytest benchmarks/test_bench_c_matmul.py                       # one table per kernel + shape
    pytest benchmarks/test_bench_c_matmul.py --benchmark-disable   # each case once: a smoke test
    pytest benchmarks/test_bench_c_matmul.py --benchmark-json=out.json   # rates in extra_info

The cases, inputs, references and tolerances are ``fastsgd.bench``'s: the matmuls of
a 784-128-10 layer pair at batch 64 and 256 and a 1024^3 product, the elementwise
kernels at a hidden layer of batch 256, the SGD update of a 784x128 weight.  Each
runner is validated against the float64 reference, then timed through its public
``Backend`` methods inside ``skip_value_checks()``, as the trainer calls them.  The
matmuls are also timed through the C module's own functions
(``fastsgd.backends.c_ext.matmul(a, b, out)``, row ``c-module``): the difference is
what the contract's argument checks cost.

Thread pools: OpenBLAS is held to one thread while the others run and OpenMP while
numpy runs (``bench.timing``).  The C matmuls use OpenMP; its idle threads spin for a
while after each call (see GOMP_SPINCOUNT / OMP_WAIT_POLICY), which favours
back-to-back calls of the same backend, as in a training loop.  Compare medians.
"""
import functools

import pytest

from fastsgd import backends, bench
from fastsgd.bench.cases import MATMULS, check

from .conftest import record, runner_params

RUNNERS = ("numpy", "numba", "c")
MATMUL_CASES = [c for c in bench.select_cases(MATMULS, [64, 256, "large"])
                if c.size == "large" or c.dims[1:] in ((784, 128), (128, 10))]
OTHER_CASES = [c for c in bench.select_cases(
    ["bias_backward", "sigmoid_forward", "sigmoid_backward", "relu_forward", "relu_backward",
     "cross_entropy_backward"], [256]) if c.shape in ("256x128", "256x10")]
OTHER_CASES += [c for c in bench.select_cases(["sgd_update"], [64]) if c.shape == "784x128"]


@pytest.mark.parametrize("runner", runner_params(only=RUNNERS))
@pytest.mark.parametrize("case", MATMUL_CASES + OTHER_CASES, ids=str)
def test_kernel(benchmark, case, runner, machine):
    job = bench.prepare(case, runner)   # raises ValidationError on a mismatch
    benchmark.group = case.group
    with bench.timing(runner):
        benchmark(job.fn)
    record(benchmark, case, runner, machine, job.max_error)


@pytest.mark.skipif(backends.available()["c"] is not True,
                    reason=f"c unavailable: {backends.available()['c']}")
@pytest.mark.parametrize("case", MATMUL_CASES, ids=str)
def test_c_module_matmul(benchmark, case, machine):
    """The C module's function alone: outputs preallocated, no contract checks."""
    from fastsgd.backends import c_ext
    inputs, outputs, expected, tol = bench.kernel_data(case)
    (shape, dtype), = outputs
    out = backends.get("c").empty(shape, dtype)
    fn = functools.partial(getattr(c_ext, case.kernel), *(x.copy() for x in inputs), out)
    fn()
    error = check(case, "c-module", out, expected, tol)
    benchmark.group = case.group
    with bench.timing("c"):
        benchmark(fn)
    record(benchmark, case, "c-module", machine, error)
