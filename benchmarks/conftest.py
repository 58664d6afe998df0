"""Shared pieces of the benchmark suites: runner params, the machine's peak, rates.

Run with ``pytest benchmarks`` (see benchmarks/README.md); ``pytest`` alone runs only tests/.
"""
import pytest

from fastsgd import bench


def runner_params():
    """Every fastsgd backend and the torch peer as pytest params; unusable ones are skipped."""
    return [pytest.param(name, id=name, marks=[] if status is True else
                         [pytest.mark.skip(reason=f"{name} unavailable: {status}")])
            for name, status in bench.runners(include_unavailable=True).items()]


@pytest.fixture(scope="session")
def machine():
    """Machine info with the measured sgemm peak and copy bandwidth (measured once)."""
    return bench.machine_info()


def record(benchmark, case, job, machine):
    """Put the case's size and, once timed, its rate and % of peak into ``extra_info``."""
    info = benchmark.extra_info
    info.update(kernel=case.kernel, shape=case.shape, backend=job.runner, flop=case.flop,
                bytes=case.nbytes, unit=case.unit, max_error=job.max_error)
    stats = getattr(benchmark, "stats", None)
    if stats is None:   # under --benchmark-disable
        return
    median = stats.stats.median
    info["rate"] = case.rate(median)
    if not bench.on_device(job.runner):   # the peaks measured are the CPU's
        info["pct_peak"] = bench.percent_of_peak(case, median, machine)
        info["peak"] = (f"{machine['peak_gflops']:.0f} GFLOP/s ({machine['peak_source']})"
                        if case.flop else
                        f"{machine['bandwidth_gbs']:.1f} GB/s ({machine['bandwidth_source']})")


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved runs (--benchmark-autosave, --benchmark-json) carry the peak they were compared with."""
    info = bench.machine_info()
    machine_info["fastsgd"] = {k: info[k] for k in (
        "peak_gflops", "peak_source", "computed_peak_gflops", "computed_peak_basis",
        "bandwidth_gbs", "bandwidth_source", "blas", "numba", "numba_threads", "torch",
        "torch_threads", "thread_limiting")}
