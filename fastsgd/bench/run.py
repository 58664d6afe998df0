"""Validate, then time: every kernel case on every runner, and the epoch rows.

Runners are fastsgd's backends (``numpy`` is the reference and the baseline)
and the peers (``bench.peers``).  A kernel row runs here, through the contract
as the trainer calls it (inside ``skip_value_checks()``), while the pools it
does not use are held to one thread; an epoch row runs in a child process of
its own (``bench.epochs``).  Every result is validated before its timing counts.
"""
from __future__ import annotations

import contextlib
import functools
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .. import backends
from . import peers
from .cases import (EPOCH_SAMPLES, LR, Case, ValidationError, check, items, kernel_data,
                    parse_kernels, parse_sizes, select_cases)
from .epochs import EPOCH_SIZES, EpochSpec, compare as compare_epochs
from .lockstep import run_interleaved
from .machine import load_average, machine_info, remeasure_peak
from .stats import SETTLE_S, measure, quiet_pools, time_call


def runners(include_unavailable: bool = False) -> dict[str, bool | str]:
    """``{name: True | reason}``: fastsgd's backends, ``numpy`` first, then the peers."""
    status = backends.available()
    found = {n: status[n] for n in ["numpy"] + [n for n in status if n != "numpy"]}
    found.update({name: peers.status(name) for name in peers.EPOCH_PEERS})
    return {n: s for n, s in found.items() if include_unavailable or s is True}


def runs(runner: str, kernel: str) -> bool:
    """Whether ``runner`` has rows for ``kernel`` (the compiled peers train epochs only)."""
    if runner in backends.names():
        return True
    return runner in (peers.EPOCH_PEERS if kernel == "epoch" else peers.KERNEL_PEERS)


def parse_backends(spec) -> list[str]:
    """Comma-separated runner names; ``numpy``, the baseline, is always added."""
    usable = runners()
    if spec is None:
        return list(usable)
    known = runners(include_unavailable=True)
    chosen = items(spec, "backends")
    for name in chosen:
        if name not in known:
            raise ValueError(f"backends: unknown backend {name!r}; expected some of "
                             f"{', '.join(known)}")
        if known[name] is not True:
            raise ValueError(f"backends: {name} is unavailable: {known[name]}")
    return [n for n in usable if n in set(chosen) | {"numpy"}]


@functools.lru_cache(maxsize=None)
def on_device(runner: str) -> bool:
    """True when ``runner`` computes on an accelerator: its rows get no % of the CPU's peak."""
    if runner not in backends.names():
        return False
    return hasattr(backends.get(runner).empty((1,)), "__cuda_array_interface__")


# ------------------------------------------------------------------ kernels
@dataclass
class Job:
    """A kernel case ready to time on one runner: call ``fn()`` repeatedly."""

    case: Case
    runner: str
    fn: Callable[[], object]
    max_error: float = 0.0     # the largest deviation from the reference seen while validating


def prepare(case: Case, runner: str, validate: bool = True) -> Job:
    """Set kernel ``case`` up on ``runner``, run it once, check it against the reference.

    Raises ``ValidationError`` on a mismatch.  The first call also compiles
    whatever a JIT compiles, so the returned ``fn`` is warm.
    """
    if case.kernel == "epoch":
        raise ValueError("kernels: an epoch case runs through bench.epochs, not prepare")
    inputs, outputs, expected, tol = kernel_data(case)
    if runner in peers.KERNEL_PEERS:
        fn, result = peers.torch_kernel(case.kernel, inputs, outputs)
    else:
        fn, result = _backend_kernel(case, backends.get(runner), inputs, outputs)
    with backends.skip_value_checks():
        value = fn()
    error = check(case, runner, result(value), expected, tol) if validate else 0.0
    return Job(case, runner, fn, error)


def _backend_kernel(case, k, inputs, outputs):
    """(fn, result) for fastsgd backend ``k``: ``fn`` calls the kernel through the contract."""
    # copies: the numpy backend would otherwise compute on (and sgd_update write into) the cache
    args = [k.asarray(x.copy(), dtype=x.dtype) for x in inputs]
    outs = [k.empty(shape, dtype) for shape, dtype in outputs]
    if case.kernel == "sgd_update":
        param, grad = args
        call = functools.partial(k.sgd_update, param, grad, LR)
        produced = param
    else:
        call = functools.partial(getattr(k, case.kernel), *args, *outs)
        produced = outs[0] if outs else None
    device = any(hasattr(a, "__cuda_array_interface__") for a in args + outs)
    fn = _synchronized(call) if device else call
    return fn, lambda value: k.to_numpy(produced) if produced is not None else value


def _synchronized(call):
    """``call`` followed by a wait for the GPU, so the time covers the kernel itself."""
    from numba import cuda

    def fn():
        value = call()
        cuda.synchronize()
        return value
    return fn


@contextlib.contextmanager
def timing(runner: str):
    """The conditions a runner is timed under: quiet thread pools, no NaN/Inf scans."""
    with quiet_pools(runner), backends.skip_value_checks():
        yield


# --------------------------------------------------------------------- rows
def _row(case: Case, runner: str) -> dict:
    return {"kernel": case.kernel, "shape": case.shape, "group": case.group, "size": case.size,
            "batch": case.batch, "backend": runner, "device": "cpu", "status": "ok",
            "median_s": None, "min_s": None, "p10_s": None, "p90_s": None, "q1_s": None,
            "q3_s": None, "mean_s": None, "max_s": None, "rounds": 0, "iterations": 0,
            "spread": None, "remeasured": False, "flags": [], "flop": case.flop,
            "bytes": case.nbytes, "rate": None, "unit": case.unit, "pct_peak": None,
            "speedup_vs_numpy": None, "speedup_vs_torch": None, "max_error": None, "load": None}


def apply_peak(row: dict, peak_gflops: float) -> dict:
    """``pct_peak`` of a flop row on the CPU, and the ``over_peak`` flag when it exceeds 100."""
    flags = [f for f in row["flags"] if f != "over_peak"]
    if row["status"] == "ok" and row["flop"] and row["device"] == "cpu":
        row["pct_peak"] = 100.0 * row["rate"] / peak_gflops
        if row["pct_peak"] > 100.0:   # faster than the machine can go: a measuring error
            flags.append("over_peak")
    row["flags"] = flags
    return row


def _finish(row: dict, case: Case, machine: dict) -> dict:
    """Rate, % of the measured peak and the load average now."""
    row["rate"] = case.rate(row["median_s"])
    row["load"] = (load_average() or [None])[0]
    return apply_peak(row, machine["peak_gflops"])


def kernel_row(case: Case, runner: str, machine: dict, budget: float = 0.05,
               retry: bool = True) -> dict:
    """Validate, then time ``case`` on ``runner`` here; a failure becomes the row's status."""
    row = _row(case, runner)
    try:
        row["device"] = "gpu" if on_device(runner) else "cpu"
        job = prepare(case, runner)
        row["max_error"] = job.max_error
        # the reference's (or the last row's) pool goes to sleep; running beside NumPy
        # is what benchmarks/calm.py alternate measures
        time.sleep(SETTLE_S)
        with timing(runner):
            stats, notes = measure(lambda: time_call(job.fn, budget=budget), retry)
    except ValidationError as exc:
        return {**row, "status": f"mismatch: {exc}"}
    except Exception as exc:   # a broken backend fails its row, not the run
        return {**row, "status": f"error: {type(exc).__name__}: {exc}"}
    row.update(stats.as_dict(), **notes)
    return _finish(row, case, machine)


def epoch_rows(case: Case, names: list[str], machine: dict, spec: dict,
               on_row: Callable[[dict], None] = lambda row: None) -> list[dict]:
    """One row per runner of ``names`` (``numpy`` first: the reference), each in its own
    process, their timed epochs taken in turn (``lockstep.run_interleaved``)."""
    results = run_interleaved([EpochSpec(runner, case.batch, **spec) for runner in names])
    rows, reference = [], None
    for runner in names:
        row = {**_row(case, runner), "samples": spec["samples"], "data": spec["data"]}
        try:
            row["device"] = "gpu" if on_device(runner) else "cpu"
            result = results[runner]
            if isinstance(result, Exception):
                raise result
            row.update({k: v for k, v in result.items() if k not in ("runner", "bs")})
            if runner == "numpy":
                reference, row["max_error"] = result, 0.0
            elif reference is None:
                raise RuntimeError("no reference: the numpy epoch failed")
            else:
                row["max_error"] = compare_epochs(runner, result, reference)
        except ValidationError as exc:
            row = {**row, "status": f"mismatch: {exc}"}
        except Exception as exc:
            row = {**row, "status": f"error: {type(exc).__name__}: {exc}"}
        else:
            row = _finish(row, case, machine)
        rows.append(row)
        on_row(row)
    return rows


def add_speedups(rows: list[dict]) -> None:
    """``speedup_vs_numpy`` / ``speedup_vs_torch``: that runner's median over this row's."""
    base = {(r["group"], r["backend"]): r["median_s"] for r in rows
            if r["status"] == "ok" and r["backend"] in ("numpy", "torch")}
    for row in rows:
        if row["status"] == "ok":
            for peer in ("numpy", "torch"):
                if (row["group"], peer) in base:
                    row[f"speedup_vs_{peer}"] = base[(row["group"], peer)] / row["median_s"]


# ---------------------------------------------------------------------- run
def parse_options(kernels=None, backends=None, sizes=None, epochs=5, samples=EPOCH_SAMPLES,
                  budget=0.05, data="random") -> dict:
    """The checked options of ``run_bench``; ``ValueError("<option>: ...")`` for a bad one."""
    chosen = {"kernels": parse_kernels(kernels), "backends": parse_backends(backends),
              "sizes": parse_sizes(sizes)}
    for name, value, low in (("epochs", epochs, 1), ("samples", samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0:
        raise ValueError(f"budget: expected seconds >= 0, got {budget!r}")
    if data != "random" and not Path(data).is_dir():
        raise ValueError(f"data: {data} is not a folder; expected 'random' or a folder of "
                         f"MNIST-format IDX files")
    selected = select_cases(chosen["kernels"], chosen["sizes"], samples)
    if not selected:
        raise ValueError(f"sizes: {','.join(map(str, chosen['sizes']))} selects no case of "
                         f"{','.join(chosen['kernels'])}")
    too_small = [c.batch for c in selected if c.kernel == "epoch" and c.batch > samples]
    if too_small:
        raise ValueError(f"samples: {samples} is fewer than the batch size {max(too_small)}")
    return {**chosen, "cases": selected, "epochs": epochs, "samples": samples,
            "budget": float(budget), "data": str(data)}


def run_bench(kernels=None, backends=None, sizes=None, json_path=None, plot_path=None,
              progress=True, budget: float = 0.05, epochs: int = 5,
              samples: int = EPOCH_SAMPLES, data: str = "random", retry: bool = True) -> list[dict]:
    """Validate, then time, every case of ``kernels`` x ``sizes`` on every runner of ``backends``.

    Arguments take lists or comma-separated strings (see ``parse_options``); bad
    ones raise ``ValueError("<option>: ...")`` before anything runs.  ``budget``
    is about the seconds spent timing a kernel row; an epoch row times
    ``epochs`` epochs of ``samples`` after a warm-up.  Noisy rows are measured
    once more when ``retry``.  Returns one row per case and runner (see
    ``report.ROW_FIELDS``); ``json_path`` gets ``{"machine": ..., "rows": ...}``,
    ``plot_path`` a PNG of the speed-ups over numpy (needs matplotlib).
    """
    opts = parse_options(kernels, backends, sizes, epochs, samples, budget, data)
    if plot_path is not None:
        from ..plots import require_matplotlib
        require_matplotlib()
    kernel_jobs = [(c, r) for c in opts["cases"] if c.kernel != "epoch"
                   for r in opts["backends"] if runs(r, c.kernel)]
    epoch_jobs = [(c, [r for r in opts["backends"] if runs(r, "epoch")])
                  for c in opts["cases"] if c.kernel == "epoch"]
    bar = _progress_bar(1 + len(kernel_jobs) + sum(len(n) for _, n in epoch_jobs), progress)
    bar.set_postfix_str("measuring the peak")
    machine = machine_info()
    bar.update()
    rows = []
    with warnings.catch_warnings():
        # small shapes launch small GPU grids on purpose: the timing says what that costs
        warnings.filterwarnings("ignore", message=r"(?s).*will likely result in GPU under-utilization")
        for case, runner in kernel_jobs:
            bar.set_postfix_str(f"{case.group} {runner}")
            rows.append(kernel_row(case, runner, machine, opts["budget"], retry))
            bar.update()
    spec = {"samples": opts["samples"], "epochs": opts["epochs"], "data": opts["data"],
            "sizes": EPOCH_SIZES, "retry": retry}
    for case, names in epoch_jobs:
        bar.set_postfix_str(f"{case.group} (own processes)")
        rows += epoch_rows(case, names, machine, spec, on_row=lambda row: (
            bar.set_postfix_str(f"{row['group']} {row['backend']}"), bar.update()))
    bar.set_postfix_str("measuring the peak again")
    remeasure_peak(machine)   # the best of two: the load may have changed during the run
    for row in rows:
        apply_peak(row, machine["peak_gflops"])
    bar.close()
    add_speedups(rows)
    from . import report
    if json_path is not None:
        report.write_json(json_path, rows, machine)
    if plot_path is not None:
        report.plot(rows, plot_path)
    return rows



class _NoBar:
    def set_postfix_str(self, text):
        pass

    def update(self, n=1):
        pass

    def close(self):
        pass


class _Lines:
    """Progress as one line per finished row on stderr, for output that is not a terminal
    (a file or a pipe would get a screen of redraws from a bar)."""

    def __init__(self, total: int):
        self.total, self.done, self.label = total, 0, ""

    def set_postfix_str(self, text):
        self.label = text

    def update(self, n=1):
        self.done += n
        print(f"bench {self.done}/{self.total}: {self.label}", file=sys.stderr, flush=True)

    def close(self):
        pass


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _progress_bar(total, enabled):
    """A bar on a terminal, lines when stdout or stderr is not one, nothing when disabled."""
    if not enabled:
        return _NoBar()
    if not (_is_terminal(sys.stdout) and _is_terminal(sys.stderr)):
        return _Lines(total)
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="bench", unit="row", leave=False, dynamic_ncols=True,
                file=sys.stderr)
