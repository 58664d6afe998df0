"""Calm threads: fastsgd's kernels beside NumPy, beside a busy core, and after a fork.

    python benchmarks/calm.py [alternate] [fork] [busy] [--backend c] [--bs 64] [--rounds 5]

alternate  NumPy ``a @ b`` and a fastsgd ``matmul(a, b)`` at (256,784)x(784,128), called
           in turn, against each called alone (``c`` and ``numba``): the ratio of the
           pair's median to the sum of the two medians.
fork       after a threaded kernel, ``multiprocessing.Pool(2).map`` (fork start method)
           over a function calling the ``c`` and ``numba`` kernels: its results and time.
busy       fused epochs of 784-128-10 (softmax cross-entropy, plain SGD) on 60,000 rows,
           quiet ones alternating with ones during which another process busy-loops on
           one core: the medians and their ratio.

Every figure is a median over ``--rounds`` rounds, with its range.
"""
from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import subprocess
import sys
import time

import numpy as np

from fastsgd import backends
from fastsgd.bench import epochs
from fastsgd.bench.stats import SETTLE_S

SHAPE = (256, 784, 128)
SPIN = "import os\nos.sched_setaffinity(0, {%d})\nwhile True:\n    pass\n"


def summary(seconds: list[float], unit: float = 1.0, name: str = "s") -> str:
    """The median of ``seconds`` with its range, in ``name``."""
    lo, med, hi = (v / unit for v in (min(seconds), statistics.median(seconds), max(seconds)))
    return f"median {med:.3f} {name} (min {lo:.3f}, max {hi:.3f}, {len(seconds)} rounds)"


def _per_call(fn, calls: int) -> float:
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - t0) / calls


def alternate(rounds: int, calls: int = 200) -> None:
    rng = np.random.default_rng(0)
    m, k, n = SHAPE
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    for name in ("c", "numba"):
        backend = backends.get(name)

        def ours():
            backend.matmul(a, b, out)

        def numpy():
            a @ b

        def pair():
            a @ b
            backend.matmul(a, b, out)

        for fn in (ours, numpy, pair):
            _per_call(fn, 20)                   # warm-up: compilation, threads
        alone, theirs, pairs, ratios = [], [], [], []
        for _ in range(rounds):
            # each "alone" after a rest: OpenBLAS's workers spin ~0.1 s after a NumPy call
            time.sleep(SETTLE_S)
            alone.append(_per_call(ours, calls))
            time.sleep(SETTLE_S)
            theirs.append(_per_call(numpy, calls))
            pairs.append(_per_call(pair, calls))
            ratios.append(pairs[-1] / (alone[-1] + theirs[-1]))
        print(f"alternate {name}: {name} alone {summary(alone, 1e-3, 'ms')}")
        print(f"  numpy alone {summary(theirs, 1e-3, 'ms')}")
        print(f"  the pair {summary(pairs, 1e-3, 'ms')}")
        print(f"  pair / (sum alone): {summary(ratios, 1.0, 'x')}")


def _errors(seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    m, k, n = SHAPE
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    return [float(np.abs(backends.get(name).matmul(a, b) - a @ b).max())
            for name in ("c", "numba")]


def fork(rounds: int) -> None:
    _errors(0)                                  # threads started before the fork
    seconds = []
    for r in range(rounds):
        t0 = time.perf_counter()
        with multiprocessing.get_context("fork").Pool(2) as pool:
            worst = max(max(e) for e in pool.map(_errors, range(4 * r, 4 * r + 4)))
        seconds.append(time.perf_counter() - t0)
        if not worst < 1e-2:
            raise SystemExit(f"fork: a forked worker's matmul is off by {worst}")
    print(f"fork: Pool(2).map of c and numba matmuls, right results, {summary(seconds)}")


@contextlib.contextmanager
def busy_core(core: int):
    """A process busy-looping on ``core`` while the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", SPIN % core])
    try:
        time.sleep(0.2)                         # running before the timing starts
        yield
    finally:
        proc.kill()
        proc.wait()


def _timed_epoch(trainer) -> float:
    t0 = time.perf_counter()
    trainer.epoch()
    return time.perf_counter() - t0


def busy(rounds: int, backend: str, bs: int, data: str, core: int) -> None:
    trainer = epochs.trainer(backend, epochs.load_data(source=data), epochs.initial_weights(),
                             bs)
    trainer.epoch()                             # warm-up: compilation, threads, caches
    quiet, loaded = [], []
    for _ in range(rounds):
        quiet.append(_timed_epoch(trainer))
        with busy_core(core):
            loaded.append(_timed_epoch(trainer))
    print(f"busy: {backend} epoch, bs {bs}: quiet {summary(quiet)}")
    print(f"  one core busy {summary(loaded)}")
    print(f"  ratio of medians: {statistics.median(loaded) / statistics.median(quiet):.2f}x")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checks", nargs="*", choices=["alternate", "fork", "busy"],
                        default=["alternate", "fork", "busy"])
    parser.add_argument("--backend", default="c", help="the backend of the busy check")
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", default="random", help="an MNIST-format IDX folder")
    parser.add_argument("--core", type=int, default=0, help="the core the busy process takes")
    args = parser.parse_args(argv)
    if "alternate" in args.checks:
        alternate(args.rounds)
    if "fork" in args.checks:
        fork(args.rounds)
    if "busy" in args.checks:
        busy(args.rounds, args.backend, args.bs, args.data, args.core)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
