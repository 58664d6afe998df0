"""Shared pieces of the benchmark suites: runner params, the machine's peak, rates.

Run with ``pytest benchmarks`` (see benchmarks/README.md); ``pytest`` alone runs only tests/.
The cases, tolerances, peers and the peak all come from ``fastsgd.bench``.
"""
import pytest

from fastsgd import bench


def runner_params(kernel="matmul", only=None):
    """The runners with rows for ``kernel`` as pytest params; unusable ones are skipped."""
    params = []
    for name, status in bench.runners(include_unavailable=True).items():
        if not bench.runs(name, kernel) or (only is not None and name not in only):
            continue
        marks = [] if status is True else [pytest.mark.skip(reason=f"{name} unavailable: {status}")]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


@pytest.fixture(scope="session")
def machine():
    """Machine info with the measured peak and copy bandwidth (measured once)."""
    return bench.machine_info()


def record(benchmark, case, runner, machine, max_error=0.0):
    """Put the case's size and, once timed, its rate and % of peak into ``extra_info``."""
    info = benchmark.extra_info
    info.update(kernel=case.kernel, shape=case.shape, backend=runner, flop=case.flop,
                bytes=case.nbytes, unit=case.unit, max_error=max_error)
    stats = getattr(benchmark, "stats", None)
    if stats is None:   # under --benchmark-disable
        return
    median = stats.stats.median
    info["rate"] = case.rate(median)
    if case.flop and not bench.on_device(runner):   # the peak measured is the CPU's
        info["pct_peak"] = 100.0 * info["rate"] / machine["peak_gflops"]
        info["over_peak"] = info["pct_peak"] > 100.0   # a measuring error if ever true
        info["peak"] = f"{machine['peak_gflops']:.0f} GFLOP/s ({machine['peak_source']})"


def pytest_benchmark_update_machine_info(config, machine_info):
    """Saved runs (--benchmark-autosave, --benchmark-json) carry the peak they were compared with."""
    info = bench.machine_info()
    machine_info["fastsgd"] = {k: info[k] for k in (
        "cpu", "llvm_cpu", "cores", "isa", "peak_gflops", "peak_source", "peak_probes",
        "clock_ghz_estimate", "flops_per_cycle", "bandwidth_gbs", "bandwidth_source", "blas",
        "openblas_warning", "numba", "numba_threads", "torch", "jax", "thread_limiting",
        "load_average")}
