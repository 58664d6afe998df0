"""The results: a printed table, a JSON file and a PNG of the speed-ups.

Marks in the tables:  ``~`` before a median: the row stayed noisy after being
measured twice (wide spread or a stalled round);  ``!`` after a % of peak: the
row ran faster than the measured peak, which means a measuring error.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .. import files
from .stats import STALL_FACTOR, WIDE_SPREAD

#: Every row's fields (epoch rows add ``samples``, ``data``, ``train_loss``,
#: ``valid_loss``, ``step_losses``, ``first_epoch_s``, ``compile_s``, ``epoch_samples_s``).
ROW_FIELDS = ("kernel", "shape", "group", "size", "batch", "backend", "device", "status",
              "median_s", "min_s", "p10_s", "p90_s", "q1_s", "q3_s", "mean_s", "max_s", "rounds",
              "iterations", "spread", "remeasured", "flags", "flop", "bytes", "rate", "unit",
              "pct_peak", "speedup_vs_numpy", "speedup_vs_torch", "max_error", "load")


def write_json(path, rows, machine) -> Path:
    """``{"machine": ..., "rows": [...]}`` to ``path`` (written to a temporary name, then renamed)."""
    return files.write_json(path, {"machine": machine, "rows": rows})


def plot(rows, path) -> Path:
    """The speed-ups over numpy as a PNG bar chart (needs matplotlib)."""
    from ..plots import plot_speedups
    return plot_speedups(rows, path)


# --------------------------------------------------------------- formatting
def _scale(seconds):
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return unit, scale
    return "ns", 1e-9


def _num(value) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def format_seconds(s) -> str:
    if s is None:
        return "-"
    unit, scale = _scale(s)
    return f"{_num(s / scale)} {unit}"


def format_range(lo, hi, like) -> str:
    """``lo-hi`` in the unit of ``like`` (the median)."""
    unit, scale = _scale(like)
    return f"{_num(lo / scale)}-{_num(hi / scale)} {unit}"


def _ratio(r) -> str:
    return "-" if r is None else f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"


def _noisy(row) -> bool:
    return any(f in ("wide", "stalled") for f in row["flags"])


def _note(row) -> str:
    notes = []
    if "wide" in row["flags"]:
        notes.append(f"noisy: p90/p10 {row['spread']:.2f}")
    if "stalled" in row["flags"]:
        notes.append(f"stalled: a round {row['max_s'] / row['median_s']:.0f}x the median")
    if notes:
        notes[-1] += " (measured twice)"
    elif row["remeasured"]:
        notes.append("re-measured")
    if row.get("pool_stalls"):
        notes.append(f"{row['pool_stalls']} pool stalls (a worker kept off its core)")
    if "over_peak" in row["flags"]:
        notes.append("! above the measured peak: measuring error")
    return "; ".join(notes)


def _pct(row) -> str:
    if row["pct_peak"] is None:
        return "-"
    return f"{row['pct_peak']:.1f}%" + ("!" if "over_peak" in row["flags"] else "")


def _timing_cells(row) -> list[str]:
    return [("~" if _noisy(row) else "") + format_seconds(row["median_s"]),
            format_seconds(row["min_s"]), format_range(row["p10_s"], row["p90_s"], row["median_s"]),
            str(row["rounds"])]


def _table(header, right, rows, cells_of, group_of, file):
    """Columns padded to width; ``right``: indices of right-aligned columns; a blank line
    between groups; a failed row prints its first cells and its status."""
    table = [(row, cells_of(row) if row["status"] == "ok" else None) for row in rows]
    widths = [max([len(h)] + [len(c[i]) for _, c in table if c]) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(header), file=file)
    previous = None
    for row, cells in table:
        if previous is not None and group_of(row) != previous:
            print(file=file)
        previous = group_of(row)
        if cells:
            print(line(cells), file=file)
        else:
            lead = cells_of.lead(row)
            print(line(lead) + "  " + row["status"].upper(), file=file)


def _header(machine, rows, file):
    blas = machine.get("blas") or {}
    peers = "".join(f", {name} {machine[name]}" for name in ("torch", "jax") if machine.get(name))
    blas_text = (f"{blas['library']} {blas['version']} {blas['architecture'] or 'kernel unknown'}, "
                 f"{blas['threads']} threads" if blas else "BLAS unknown without threadpoolctl")
    print(f"machine: {machine['cpu']} ({machine['llvm_cpu']}), {machine['cores']} cores, "
          f"{machine['isa']}; numpy {machine['numpy']} ({blas_text}), "
          f"numba {machine['numba']}{peers}", file=file)
    print(f"peak: {machine['peak_gflops']:.0f} GFLOP/s fp32, {machine['peak_source']}; every "
          f"% peak below is of it", file=file)
    for probe in machine.get("peak_probes", []):
        print(f"  probe {probe['probe']}: " + (f"{probe['gflops']:.0f} GFLOP/s" if "gflops" in probe
                                               else probe["error"]), file=file)
    print(f"  implies ~{machine['clock_ghz_estimate']:.2f} GHz at {machine['flops_per_cycle']} "
          f"flops/cycle/core ({machine['flops_per_cycle_basis']})"
          + (f"; /proc/cpuinfo reports {machine['clock_ghz_reported']:.2f} GHz"
             if machine.get("clock_ghz_reported") else ""), file=file)
    reported = machine.get("clock_ghz_reported")
    if reported and machine["clock_ghz_estimate"] < 0.6 * reported:
        print("warning: the peak implies a clock well below the reported one: the machine was "
              "busy while it was measured, so % peak reads high", file=file)
    print(f"copy bandwidth: {machine['bandwidth_gbs']:.1f} GB/s ({machine['bandwidth_source']}); "
          f"GB/s rows get no % (arrays in cache run faster)", file=file)
    if machine.get("openblas_warning"):
        print(f"warning: {machine['openblas_warning']}", file=file)
    start = (machine.get("load_average") or [None])[0]
    loads = [r["load"] for r in rows if r.get("load") is not None]
    if start is not None:
        busiest = max([start] + loads)
        print(f"load average: {start:.2f} at the start, up to {busiest:.2f} during the run "
              f"({machine['cores']} cores; the run itself adds up to {machine['cores']})", file=file)
        if start > 0.75 * machine["cores"] or busiest > 1.5 * machine["cores"]:
            print("warning: the machine was busy; timings are less reliable (see the spreads)",
                  file=file)


class _KernelCells:
    header = ["kernel", "shape", "backend", "median", "min", "p10-p90", "rounds", "rate",
              "% peak", "vs numpy", "vs torch", "note"]
    right = {3, 4, 5, 6, 7, 8, 9, 10}

    def __call__(self, row):
        return [row["kernel"], row["shape"], row["backend"], *_timing_cells(row),
                f"{_num(row['rate'])} {row['unit']}", _pct(row), _ratio(row["speedup_vs_numpy"]),
                _ratio(row["speedup_vs_torch"]), _note(row)]

    @staticmethod
    def lead(row):
        return [row["kernel"], row["shape"], row["backend"]]


class _EpochCells:
    header = ["bs", "runner", "median", "min", "p10-p90", "epochs", "GFLOP/s", "% peak",
              "vs numpy", "vs torch", "compile", "loss", "note"]
    right = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}

    def __call__(self, row):
        return [str(row["batch"]), row["backend"], *_timing_cells(row), _num(row["rate"]),
                _pct(row), _ratio(row["speedup_vs_numpy"]), _ratio(row["speedup_vs_torch"]),
                format_seconds(row["compile_s"]) if row["compile_s"] >= 1e-3 else "0",
                f"{row['train_loss']:.5f}", _note(row)]

    @staticmethod
    def lead(row):
        return [str(row["batch"]), row["backend"]]


def _fastest(rows, names) -> dict | None:
    ok = [r for r in rows if r["status"] == "ok" and r["backend"] in names]
    return min(ok, key=lambda r: r["median_s"]) if ok else None


def print_table(rows: list[dict], machine: dict | None = None, file=None) -> None:
    """The header (machine, peak, load), the kernel table, then the epoch table."""
    file = file or sys.stdout
    if machine:
        _header(machine, rows, file)
    kernel_rows = [r for r in rows if r["kernel"] != "epoch"]
    epoch_rows = [r for r in rows if r["kernel"] == "epoch"]
    if kernel_rows:
        print(file=file)
        _table(_KernelCells.header, _KernelCells.right, kernel_rows, _KernelCells(),
               lambda r: r["group"], file)
    if epoch_rows:
        first = epoch_rows[0]
        model = first["shape"].split()[0]
        print(f"\nepochs: {model} (ReLU), softmax cross-entropy, SGD lr 0.1, {first['samples']:,} "
              f"{first['data']} samples, same initial weights and order everywhere; each runner "
              f"in its own process, the runners' epochs taken in turn (round robin); medians "
              f"of the epochs after a warm-up epoch", file=file)
        _table(_EpochCells.header, _EpochCells.right, epoch_rows, _EpochCells(),
               lambda r: r["batch"], file)
        print(file=file)
        for bs in dict.fromkeys(r["batch"] for r in epoch_rows):
            group = [r for r in epoch_rows if r["batch"] == bs]
            mine = _fastest(group, {"numpy", "numba", "c", "cuda"})
            peer = _fastest(group, {"torch", "torch.compile", "jax.jit", "jax.scan"})
            if mine and peer:
                ratio = peer["median_s"] / mine["median_s"]
                print(f"bs {bs}: fastest fastsgd {mine['backend']} {format_seconds(mine['median_s'])}"
                      f", fastest peer {peer['backend']} {format_seconds(peer['median_s'])}: "
                      f"speed-up of fastsgd over the strongest peer {ratio:.2f}x", file=file)
        print("compile: the first epoch's time beyond the median (compilation, warm-up); loss: "
              "mean training loss of the first epoch, validated against numpy's", file=file)
    print(f"\nrounds: timed rounds (a kernel round averages back-to-back calls); ~: still noisy "
          f"when measured twice (p90/p10 > {WIDE_SPREAD} or a round > {STALL_FACTOR:.0f}x the "
          f"median); !: above the measured peak", file=file)
