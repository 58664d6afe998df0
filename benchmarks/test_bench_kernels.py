"""One group per kernel and shape, the backends (and PyTorch) as its rows.

Each test validates its runner's result against the float64 reference, then times
the kernel as the trainer calls it (``bench.timing``: other thread pools held to one
thread, no NaN/Inf scans).  Cases: ``fastsgd.bench.select_cases()``.
"""
import pytest

from fastsgd import bench

from .conftest import record, runner_params

CASES = bench.select_cases([k for k in bench.KERNEL_NAMES if k != "epoch"])


@pytest.mark.parametrize("runner", runner_params())
@pytest.mark.parametrize("case", CASES, ids=str)
def test_kernel(benchmark, case, runner, machine):
    job = bench.prepare(case, runner)   # raises ValidationError on a mismatch
    benchmark.group = case.group
    with bench.timing(runner):
        benchmark(job.fn)
    record(benchmark, case, runner, machine, job.max_error)
