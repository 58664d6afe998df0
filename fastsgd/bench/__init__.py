"""Benchmarks of every kernel, and of a whole training epoch, on every backend and peer.

Shared by ``fastsgd bench`` and the pytest-benchmark suites in ``benchmarks/``:

    from fastsgd import bench
    rows = bench.run_bench(kernels="matmul*,epoch", sizes="64,256")   # validate, then time
    bench.print_table(rows, bench.machine_info())

Modules:
    cases    kernels x shapes and the epoch cases, their inputs and float64 references
    peers    PyTorch (eager, torch.compile) and JAX (jit, lax.scan), each optional
    epochs   the same training epoch on every runner; one child process per row
    stats    rounds, their statistics (min, median, p10-p90, IQR) and noise rules
    machine  CPU, ISA, threads, OpenBLAS kernel, the measured peak
    run      validate, then time; the rows
    report   the table, JSON and plot

Vocabulary:
    case     one kernel at one shape, e.g. ``matmul 64x784x128``; its *group* is the
             table (and pytest-benchmark group) whose rows are the runners.
    runner   what computes a case: every fastsgd backend that
             ``fastsgd.backends.available()`` reports usable (``numpy`` is the
             reference and the baseline), and the peers that are installed.

Rates are GFLOP/s for the matmuls and epochs, as a % of the measured fp32 peak
(no row may exceed it: one that does is flagged as a measuring error), and GB/s
of compulsory traffic for the others.
"""
from .cases import (BATCH_SIZES, EPOCH_MODEL, EPOCH_SAMPLES, KERNEL_NAMES, LR, MODELS, Case,
                    ValidationError, epoch_case, epoch_flop, kernel_data, parse_kernels,
                    parse_sizes, select_cases)
from .machine import PEAK_PROBES, Peak, cpu_summary, machine_info, measure_peak
from .report import ROW_FIELDS, print_table, write_json
from .run import (Job, kernel_row, on_device, parse_backends, parse_options, prepare, run_bench,
                  runners, runs, timing)
from .stats import STALL_FACTOR, WIDE_SPREAD, Stats, measure, time_call

__all__ = ["BATCH_SIZES", "EPOCH_MODEL", "EPOCH_SAMPLES", "KERNEL_NAMES", "LR", "MODELS", "Case",
           "ValidationError", "select_cases", "epoch_case", "epoch_flop", "kernel_data",
           "parse_kernels", "parse_sizes", "PEAK_PROBES", "Peak", "cpu_summary", "machine_info",
           "measure_peak", "ROW_FIELDS", "print_table", "write_json", "Job", "kernel_row",
           "on_device", "parse_backends", "parse_options", "prepare", "run_bench", "runners",
           "runs", "timing", "STALL_FACTOR", "WIDE_SPREAD", "Stats", "measure", "time_call"]
