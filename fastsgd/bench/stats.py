"""Timing and its statistics: rounds of calls, their spread, and when to distrust them.

A measurement is a list of rounds, each the mean seconds per call over a few
back-to-back calls (enough that a round outlasts the timer's resolution).
``Stats`` summarises the rounds: min, median, p10-p90, the interquartile range,
mean and max.  A measurement is *noisy* when its spread is wide
(``p90 / p10 > WIDE_SPREAD``) or a round *stalled* (``max > STALL_FACTOR *
median``: another process or a thread pool took the cores); ``measure``
then measures once more and keeps the second measurement, still marked when it
is noisy too.
"""
from __future__ import annotations

import builtins
import contextlib
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable

#: p90 / p10 above this is a wide spread.
WIDE_SPREAD = 1.5
#: A round slower than this many medians stalled.
STALL_FACTOR = 10.0


def quantile(sorted_values, q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, linear between the closest ranks."""
    n = len(sorted_values)
    if n == 0:
        raise ValueError("quantile: no values")
    pos = q * (n - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _of_samples(summary: Callable, doc: str) -> property:
    """A read-only attribute: ``summary`` of the rounds' seconds per call."""
    return property(lambda self: summary(self.samples), doc=doc)


@dataclass(frozen=True)
class Stats:
    """Seconds per call of each round (``samples``), ``iterations`` calls per round."""

    samples: tuple
    iterations: int = 1

    def __post_init__(self):
        if not self.samples:
            raise ValueError("samples: expected at least one round")
        object.__setattr__(self, "samples", tuple(float(s) for s in self.samples))

    rounds = _of_samples(len, "Number of rounds.")
    min = _of_samples(builtins.min, "The fastest round.")
    max = _of_samples(builtins.max, "The slowest round.")
    median = _of_samples(statistics.median, "The median round.")
    mean = _of_samples(statistics.fmean, "The mean of the rounds.")

    def q(self, q: float) -> float:
        """The ``q`` quantile (0..1) of the rounds."""
        return quantile(sorted(self.samples), q)

    @property
    def spread(self) -> float:
        """p90 / p10: 1.0 when every round took the same time."""
        return self.q(0.9) / self.q(0.1) if self.q(0.1) > 0 else math.inf

    @property
    def stalled(self) -> bool:
        return self.max > STALL_FACTOR * self.median

    @property
    def wide(self) -> bool:
        return self.spread > WIDE_SPREAD

    @property
    def noisy(self) -> bool:
        return self.wide or self.stalled

    def as_dict(self) -> dict:
        """The row fields: ``*_s`` in seconds per call, ``rounds``, ``iterations``, ``spread``."""
        return {"median_s": self.median, "min_s": self.min, "p10_s": self.q(0.1),
                "p90_s": self.q(0.9), "q1_s": self.q(0.25), "q3_s": self.q(0.75),
                "mean_s": self.mean, "max_s": self.max, "rounds": self.rounds,
                "iterations": self.iterations, "spread": self.spread}

    def flags(self) -> list[str]:
        """``"wide"`` and/or ``"stalled"``, or nothing."""
        return [name for name, on in (("wide", self.wide), ("stalled", self.stalled)) if on]


def time_call(fn: Callable, budget: float = 0.05, min_rounds: int = 5, max_rounds: int = 2000,
              min_round_s: float = 5e-4, calibrate: bool = True) -> Stats:
    """Rounds of calls of ``fn`` (already warm).

    A first, untimed call measures ``fn``; then calls are grouped so one round
    lasts at least ``min_round_s``, and rounds run until about ``budget``
    seconds are spent: at least ``min_rounds``, at most ``max_rounds``.
    Without ``calibrate`` (slow calls), exactly ``min_rounds`` single calls.
    """
    if calibrate:
        t0 = time.perf_counter()
        fn()
        once = max(time.perf_counter() - t0, 1e-9)
        iterations = max(1, math.ceil(min_round_s / once))
        rounds = int(min(max_rounds, max(min_rounds, budget / (once * iterations))))
    else:
        iterations, rounds = 1, min_rounds
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(iterations):
            fn()
        samples.append((time.perf_counter() - t0) / iterations)
    return Stats(tuple(samples), iterations)


def measure(take: Callable[[], Stats], retry: bool = True) -> tuple[Stats, dict]:
    """``take()`` once, and again when it was noisy; returns (stats, ``notes(...)``)."""
    stats = take()
    if stats.noisy and retry:
        again = take()
        return again, notes(again, first=stats)
    return stats, notes(stats)


def notes(kept: Stats, first: Stats | None = None) -> dict:
    """What a row says of its measurement: ``remeasured`` (bool; ``first`` is the noisy
    set that was replaced), ``first_spread`` and ``first_flags`` when remeasured, and
    ``flags``: what is still wrong with the kept set (``"wide"``, ``"stalled"``; empty
    when it is clean)."""
    said = {"remeasured": first is not None}
    if first is not None:
        said.update(first_spread=first.spread, first_flags=first.flags())
    said["flags"] = kept.flags()
    return said


#: Seconds of rest before a timing that must not run beside another thread pool:
#: OpenBLAS's workers spin for about 2^28 cycles (~0.1 s) after each call, OpenMP's
#: for a while too, and a kernel timed meanwhile (c's matmul after NumPy's) runs on
#: one core.
SETTLE_S = 0.15


@contextlib.contextmanager
def quiet_pools(runner: str):
    """Hold the thread pools that ``runner`` does not use to one thread.

    Two pools busy-waiting on few cores stall each other: while ``numpy`` runs,
    OpenMP pools (numba, c) are held; while anything else runs, OpenBLAS is.
    Without ``threadpoolctl`` nothing is held.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1, user_api="openmp" if runner == "numpy" else "blas"):
        yield
