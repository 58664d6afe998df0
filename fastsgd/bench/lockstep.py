"""Epoch runners timed in turn: one process per runner, their epochs interleaved.

A shared machine drifts: another tenant's load can slow every epoch for seconds at a
time.  Timed one runner after another, a slow spell lands on whoever runs then, and
the ratio between two runners measures the spell as much as the runners.  Here every
runner gets a process of its own (so no thread pool takes the cores from another),
runs its warm-up epoch alone, and then waits; the parent asks each in turn for one
timed epoch, round after round, starting each round one runner further on, with a
short pause between turns so that the last runner's pool has gone to sleep.  A slow
spell then touches every runner alike.

The child side (``serve``) speaks lines on stdin and stdout:

    child  -> ``@epoch-ready {"train_loss", "valid_loss", "step_losses", "first_epoch_s"}``
    parent -> ``epoch``     child -> ``@epoch-time {"seconds", "pool_stalls"}``
    parent -> ``quit`` (or end of input): the child exits.
"""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import tempfile
import threading
import time

from .epochs import CHECK_STEPS, EpochSpec, initial_weights, load_data, pool_stalls, trainer
from .stats import SETTLE_S, Stats, notes

_READY, _TIME = "@epoch-ready ", "@epoch-time "


def serve(spec: EpochSpec, commands=sys.stdin, out=sys.stdout) -> int:
    """The child: the warm-up epoch of ``spec``'s runner, then one timed epoch per
    ``epoch`` line read from ``commands``."""
    data = load_data(spec.samples, spec.data, spec.sizes)
    runner = trainer(spec.runner, data, initial_weights(spec.sizes), spec.bs)
    t0 = time.perf_counter()
    train_loss, valid_loss, steps = runner.epoch(CHECK_STEPS)
    first = time.perf_counter() - t0
    print(_READY + json.dumps({"train_loss": train_loss, "valid_loss": valid_loss,
                               "step_losses": list(steps), "first_epoch_s": first}),
          file=out, flush=True)
    for line in commands:
        if line.strip() != "epoch":
            break
        stalls = pool_stalls(spec.runner)
        t0 = time.perf_counter()
        runner.epoch()
        seconds = time.perf_counter() - t0
        after = pool_stalls(spec.runner)
        print(_TIME + json.dumps({"seconds": seconds,
                                  "pool_stalls": None if stalls is None else after - stalls}),
              file=out, flush=True)
    return 0


class EpochProcess:
    """One runner's child process (``python -m fastsgd.bench.worker epochs SPEC``)."""

    def __init__(self, spec: EpochSpec, timeout: float):
        from .machine import child_env
        self.spec, self.timeout = spec, timeout
        self._stderr = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-m", "fastsgd.bench.worker", "epochs", spec.to_json()]
        self._proc = subprocess.Popen(cmd, env=child_env(strip_openblas=False), text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=self._stderr, bufsize=1)
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.ready = self._answer(_READY)
        except RuntimeError:
            self.close()
            raise

    def _read(self):
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)   # the child has closed its output

    def _answer(self, mark: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.close()
                raise RuntimeError(f"{self.spec.runner}: no answer within "
                                   f"{self.timeout:.0f} s") from None
            if line is None:
                raise RuntimeError(f"{self.spec.runner}: worker exited with code "
                                   f"{self._proc.wait()}: {self._last_error()}")
            if line.startswith(mark):
                return json.loads(line[len(mark):])

    def _last_error(self) -> str:
        self._stderr.seek(0)
        return (self._stderr.read().strip().splitlines() or ["no output"])[-1]

    def epoch(self) -> dict:
        """One timed epoch: ``{"seconds", "pool_stalls"}``."""
        try:
            self._proc.stdin.write("epoch\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass   # the child is gone: _answer says how it ended
        return self._answer(_TIME)

    def close(self) -> None:
        """Ask the child to exit; end it if it does not."""
        try:
            self._proc.stdin.write("quit\n")
            self._proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._stderr.close()


def _rounds(procs: dict, names: list, rounds: int, failed: dict, clock_start: float) -> dict:
    """``rounds`` rounds of one epoch per runner of ``names``, each round starting one
    runner further on; per runner its seconds, start times and pool stalls."""
    taken = {name: {"seconds": [], "started": [], "stalls": 0} for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if name in failed:
                continue
            started = time.monotonic() - clock_start
            try:
                answer = procs[name].epoch()
            except RuntimeError as exc:
                failed[name] = exc
                continue
            taken[name]["seconds"].append(answer["seconds"])
            taken[name]["started"].append(started)
            taken[name]["stalls"] += answer["pool_stalls"] or 0
            time.sleep(SETTLE_S)   # the last runner's pool goes to sleep
    return taken


def run_interleaved(specs: list[EpochSpec], timeout: float = 600) -> dict:
    """Each spec's runner in its own process, their timed epochs taken in turn.

    Returns, per runner, a dict of its first epoch's losses (``train_loss``,
    ``valid_loss``, ``step_losses``), ``first_epoch_s``, ``compile_s``, the ``Stats``
    fields of its timed epochs, ``flags``, ``remeasured``, ``pool_stalls`` for ``c`` and
    ``epoch_started_s`` (when each timed epoch started, seconds after the rounds began);
    or the exception that ended that runner.  A runner whose epochs were noisy is timed
    once more, in turn with the other noisy ones (as ``stats.measure`` does alone).
    """
    by_name = {spec.runner: spec for spec in specs}
    procs, failed = {}, {}
    try:
        for spec in specs:   # one at a time: warm-ups and compilations do not overlap
            try:
                procs[spec.runner] = EpochProcess(spec, timeout)
            except RuntimeError as exc:
                failed[spec.runner] = exc
        names, start = list(procs), time.monotonic()
        rounds = max((by_name[name].epochs for name in names), default=0)
        taken = _rounds(procs, names, rounds, failed, start)
        first = {name: Stats(tuple(taken[name]["seconds"])) for name in names
                 if name not in failed}
        noisy = [name for name, stats in first.items() if stats.noisy and by_name[name].retry]
        again = _rounds(procs, noisy, rounds, failed, start) if noisy else {}
        out = dict(failed)
        for name in [name for name in first if name not in failed]:
            kept = again.get(name, taken[name])
            stats = Stats(tuple(kept["seconds"]))
            said = notes(stats, first[name] if name in again else None)
            if name == "c":
                said["pool_stalls"] = kept["stalls"]
            ready = procs[name].ready
            out[name] = {"runner": name, "bs": by_name[name].bs, **ready,
                         "compile_s": max(0.0, ready["first_epoch_s"] - stats.median),
                         "epoch_samples_s": list(stats.samples),
                         "epoch_started_s": kept["started"], **stats.as_dict(), **said}
        return out
    finally:
        for proc in procs.values():
            proc.close()
