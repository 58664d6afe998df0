"""Callbacks: small objects that run code at fixed points of ``Learner.fit``.

    class PrintValidLoss(Callback):
        def after_epoch(self):
            print(self.learn.epoch, self.learn.last_row["valid_loss"])

    learn = Learner(dls, model, loss, opt, cbs=[EarlyStopping(patience=3)])  # every fit
    learn.fit(20, cbs=[SaveBest("best.npz"), PrintValidLoss()])               # this fit only

The events, in the order a fit runs them::

    before_fit
        before_epoch        learn.epoch is this epoch's number, learn.lrs its step rates
            the epoch's steps (predict, loss, backward, step), each followed
            by after_batch when a callback defines it
        after_epoch         learn.last_row is the epoch's row of the history
    after_fit               always, also when the fit ends on an error

A callback defines the events it needs as methods without arguments and reads
the Learner as ``self.learn``: ``epoch``, ``n_epochs`` (of this fit), ``dl`` (the
training DataLoader of this epoch), ``lrs``, ``last_row``, ``recorder``, the
model and the optimiser; in ``after_batch`` also ``iter`` (the step within the
epoch), ``xb``, ``yb``, ``preds`` and ``loss``.  Callbacks run in ``order``,
lower first; equal orders keep the order in which they were given.  The shipped
ones are ordered so that a callback of the default order 0 sees the epoch's row
recorded (with ``seconds``) and printed.

A fused epoch is one compiled call, so ``after_batch`` cannot run inside it: a
Learner with a callback defining ``after_batch`` trains layer by layer, and
``learn.fused`` says which callback asked for it.

Raise ``CancelFitException`` to end the fit cleanly (the rows so far stay in the
history, ``after_fit`` runs, ``fit`` returns them).  Raise ``CancelEpochException``
to skip the rest of the epoch: its remaining steps, its validation, its row and
the ``after_epoch`` events; ``learn.epoch`` still advances and the fit goes on.
On the fused path the epoch's steps are one call, so raised in ``before_epoch``
it skips the epoch's training entirely; raised in ``after_epoch``, it only skips
the ``after_epoch`` of the callbacks that come later.
"""
from __future__ import annotations

import functools
import math
import sys
import time

import numpy as np

from .backends.spec import F32_MAX
from .optim import SCHEDULES, checked_lr, constant_lr

__all__ = ["Callback", "CancelFitException", "CancelEpochException", "Recorder", "LRSchedule",
           "ProgressCallback", "EpochTable", "EarlyStopping", "SaveBest", "LRFinder",
           "LRFindResult", "metric_name", "suggest_lr"]

class CancelFitException(Exception):
    """Raised by a callback to end the fit; the epochs done so far are kept."""


class CancelEpochException(Exception):
    """Raised by a callback to skip the rest of the epoch (steps, validation, row)."""


class Callback:
    """Base class of callbacks: set ``order`` and define the events you need.

    Events: ``before_fit``, ``before_epoch``, ``after_epoch``, ``after_fit`` and
    (layer path only) ``after_batch``.  ``self.learn`` is the Learner running them.
    """
    order = 0
    learn = None

    @property
    def name(self) -> str:
        """The class name, as ``learn.fused`` reports it."""
        return type(self).__name__

    def __repr__(self):
        return f"{self.name}(order={self.order})"


def metric_name(metric) -> str:
    """The column name of a metric: its ``__name__``, else its type's name."""
    return getattr(metric, "__name__", type(metric).__name__)


def _write(line, file, progress):
    """Print ``line`` to ``file``, clearing and redrawing progress bars when they are on."""
    if progress:
        from tqdm.auto import tqdm
        tqdm.write(line, file=file)
        file.flush()
    else:
        print(line, file=file, flush=True)


# ----------------------------------------------------------------- recorder
class Recorder(Callback):
    """What fits recorded: one row per epoch, every step's loss, compile time, lr_find.

    ``history`` is a list of dicts with keys ``epoch``, ``train_loss``,
    ``valid_loss``, one per metric, and ``seconds``: the epoch's training and
    validation time, less the time numba spent compiling kernels during it.
    ``losses`` holds every training step's loss of the recorded epochs.
    ``compile_seconds`` is the total time numba spent compiling during this
    Learner's fits (0 when everything was compiled, or loaded from numba's disk
    cache, before).  ``lr_find`` is the last ``LRFindResult`` or None.

    Every Learner has one as ``learn.recorder``, run in every fit.  While numba
    compiles for the first time in a fit, a one-line note goes to stderr (when
    the Learner shows its table or progress): the numba backend's compile watch
    (``backends.numba_cpu.watch_compiles``) counts the time and says so.  The
    charts are ``fastsgd.plots``'.
    """
    order = -30

    def __init__(self):
        self.history: list[dict] = []
        self.losses: list[float] = []
        self.compile_seconds = 0.0
        self.lr_find: LRFindResult | None = None
        self._watch = None

    def before_fit(self):
        learn = self.learn
        shown = learn.show or learn.progress
        note = functools.partial(_write, file=sys.stderr, progress=learn.progress) if shown else None
        self._watch = _watch_compiles(note)
        self._compiled_before_epoch = 0.0

    def before_epoch(self):
        self._t0 = time.perf_counter()
        self._compiled_before_epoch = self._compiled()

    def after_epoch(self):
        row = self.learn.last_row
        compiled = self._compiled() - self._compiled_before_epoch
        row["seconds"] = time.perf_counter() - self._t0 - compiled
        self.history.append(row)
        self.losses.extend(self.learn.step_losses)

    def after_fit(self):
        if self._watch is not None:
            self._watch.stop()
            self.compile_seconds += self._watch.seconds
            self._watch = None

    def _compiled(self) -> float:
        """The seconds numba has spent compiling in this fit so far."""
        return self._watch.seconds if self._watch is not None else 0.0

    @property
    def values(self) -> list[list[float]]:
        """fastai's view of ``history``: per epoch ``[train_loss, valid_loss, *metrics]``."""
        return [[value for key, value in row.items() if key not in ("epoch", "seconds")]
                for row in self.history]

    def plot_loss(self, path):
        """Train/valid loss and the metrics per epoch, as a PNG at ``path`` (needs matplotlib)."""
        from .plots import plot_history
        return plot_history(self.history, path)

    def plot_lr_find(self, path):
        """The last ``lr_find``'s loss against the learning rate (log scale), as a PNG at ``path``.

        Draws each step's loss and the smoothed loss, and marks the suggestion.
        Needs matplotlib; written atomically through ``fastsgd.files.open_output``.
        """
        if self.lr_find is None:
            raise ValueError("plot_lr_find: no lr_find result; run learn.lr_find() first")
        from .plots import plot_lr_find
        return plot_lr_find(self.lr_find, path)


def _watch_compiles(note):
    """The numba backend's compile watch, started (``numba_cpu.watch_compiles``), while
    numba is loaded; None before: nothing can compile then."""
    if "numba" not in sys.modules:
        return None
    from .backends.numba_cpu import watch_compiles
    return watch_compiles(note)


# ------------------------------------------------------------ lr schedule
class LRSchedule(Callback):
    """Sets ``learn.lrs``, each epoch's per-step learning rates: ``opt.lr`` times a schedule.

    ``schedule`` is a name of ``fastsgd.optim.SCHEDULES`` ("constant", "cosine")
    or a function of training progress in [0, 1) returning a multiplier.  Every
    rate must be finite, >= 0 and representable in float32 (``optim.checked_lr``): a bad
    one raises ValueError before the epoch's first step.  ``fit(..., schedule=...)`` adds one.
    """
    order = -20

    def __init__(self, schedule="constant"):
        scale = SCHEDULES.get(schedule) if isinstance(schedule, str) else schedule
        if not callable(scale):
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)} or a function, "
                             f"got {schedule!r}")
        self.scale = scale

    def before_fit(self):
        self.first_epoch = self.learn.epoch
        self.total_steps = self.learn.n_epochs * len(self.learn.dls.train)

    def before_epoch(self):
        steps = len(self.learn.dls.train)
        self.learn.lrs = self.rates((self.learn.epoch - self.first_epoch) * steps, steps)

    def rates(self, step0, steps) -> np.ndarray:
        """The rates of ``steps`` steps from step ``step0`` of the fit (float64)."""
        lr = self.learn.opt.lr
        if self.scale is constant_lr and type(lr) is float and 0.0 <= lr <= F32_MAX:
            return np.full(steps, lr)   # the default schedule: lr at every step
        multipliers = [self.scale(step / self.total_steps) for step in range(step0, step0 + steps)]
        if type(lr) is float and all(type(m) in (float, int) for m in multipliers):
            # Python numbers: the float64 products are Python's own, checked all at once
            rates = lr * np.array(multipliers, np.float64)
            if np.all(np.isfinite(rates) & (rates >= 0.0) & (rates <= F32_MAX)):
                return rates
        rates = []
        for step, multiplier in zip(range(step0, step0 + steps), multipliers):
            rate = lr * multiplier if _is_real(multiplier) else multiplier
            rates.append(checked_lr(rate, f"schedule: step {step}'s learning rate (lr times "
                                          f"the schedule's multiplier)"))
        return np.array(rates, np.float64)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


# ---------------------------------------------------------------- display
class ProgressCallback(Callback):
    """Progress bars (tqdm, on stderr or ``file``): one over the fit's epochs with a
    time estimate, and on the layer path one over each epoch's batches.

    A fused epoch is one compiled call, so there the epoch bar is the finest one.
    ``Learner(progress=True)`` adds one to every fit (the default: only when
    stdout is a terminal).
    """
    order = -10

    def __init__(self, file=None):
        self.file = file
        self.epochs = self.batches = None

    def before_fit(self):
        self.epochs = self._bar(total=self.learn.n_epochs, desc="fit", unit="epoch")
        self.batches = None

    def before_epoch(self):
        self._close_batches()
        learn = self.learn
        if learn.fused is not True:
            self.batches = self._bar(learn.dl, desc=f"epoch {learn.epoch}", unit="batch")
            learn.dl = self.batches

    def _bar(self, iterable=None, **kwargs):
        """A tqdm bar on ``file`` that is cleared when it closes."""
        from tqdm.auto import tqdm
        return tqdm(iterable, leave=False, dynamic_ncols=True, file=self.file, **kwargs)

    def after_epoch(self):
        self._close_batches()
        row = self.learn.last_row
        self.epochs.update(1)
        self.epochs.set_postfix(train_loss=f"{row['train_loss']:.4f}",
                                valid_loss=f"{row['valid_loss']:.4f}", refresh=True)

    def after_fit(self):
        self._close_batches()
        self.epochs = _closed(self.epochs)

    def _close_batches(self):
        self.batches = _closed(self.batches)


def _closed(bar) -> None:
    """Close the progress bar ``bar`` if there is one; None, what its attribute becomes."""
    if bar is not None:
        bar.close()


class EpochTable(Callback):
    """Prints the per-epoch table on stdout: a header, then one row per epoch.

    Columns: epoch, train_loss, valid_loss, one per metric, and time (mm:ss.ss).
    ``Learner(show=True)`` (the default) adds one to every fit.
    """
    order = -5

    def before_fit(self):
        self._print("  ".join(f"{c:<{_width(c)}}" for c in self.columns()).rstrip())

    def after_epoch(self):
        row, columns = self.learn.last_row, self.columns()
        cells = [f"{row['epoch']:<{_width('epoch')}}"]
        cells += [f"{row[c]:<{_width(c)}.6f}" for c in columns[1:-1]]
        minutes, seconds = divmod(row["seconds"], 60)
        cells.append(f"{int(minutes):02d}:{seconds:05.2f}")
        self._print("  ".join(cells))

    def columns(self) -> list[str]:
        """The table's column names."""
        return ["epoch", "train_loss", "valid_loss", *(metric_name(m) for m in self.learn.metrics),
                "time"]

    def _print(self, line):
        _write(line, sys.stdout, self.learn.progress)


def _width(column: str) -> int:
    return max(len(column), 10)


# ------------------------------------------------- early stopping, best model
#: Words of metric names that are better when larger.
_MAX_WORDS = ("acc", "f1", "auc", "precision", "recall")


class _Monitor(Callback):
    """Follows one column of the epoch's row and says when it improves."""

    def __init__(self, monitor="valid_loss", mode=None, min_delta=0.0):
        if mode is None:
            mode = "max" if any(w in monitor.lower() for w in _MAX_WORDS) else "min"
        if mode not in ("min", "max"):
            raise ValueError(f"mode: expected 'min' or 'max', got {mode!r}")
        if not _is_real(min_delta) or not min_delta >= 0 or not math.isfinite(min_delta):
            raise ValueError(f"min_delta: expected a finite number >= 0, got {min_delta!r}")
        self.monitor, self.mode, self.min_delta = monitor, mode, float(min_delta)
        self.best, self.best_epoch = None, None

    def improved(self) -> bool:
        """Whether the epoch just done beats the best so far (then it becomes the best)."""
        row = self.learn.last_row
        if self.monitor not in row:
            raise ValueError(f"{self.name}: monitor {self.monitor!r} is not a column of the "
                             f"history; expected one of {', '.join(k for k in row if k != 'epoch')}")
        value = float(row[self.monitor])
        if not math.isfinite(value):
            return False
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.best_epoch = value, row["epoch"]
        return better


class EarlyStopping(_Monitor):
    """Stops the fit when ``monitor`` has not improved for ``patience`` epochs in a row.

    Improving means lower by more than ``min_delta`` (``mode="min"``) or higher
    (``mode="max"``); the mode defaults to "max" for accuracy-like names, else
    "min".  With ``restore_best``, the model gets the weights of the best epoch
    back at the end of the fit (the optimiser's velocities stay as they are);
    otherwise nothing is restored.  Each fit starts afresh.  After a fit,
    ``best``, ``best_epoch`` and ``stopped_epoch`` (None when it ran to the end)
    say what happened.
    """
    order = 10

    def __init__(self, patience: int = 1, monitor: str = "valid_loss", min_delta: float = 0.0,
                 mode: str | None = None, restore_best: bool = False):
        super().__init__(monitor, mode, min_delta)
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) or patience < 1:
            raise ValueError(f"patience: expected a positive integer, got {patience!r}")
        self.patience, self.restore_best = int(patience), restore_best
        self.stopped_epoch = None

    def before_fit(self):
        self.best = self.best_epoch = self.stopped_epoch = None
        self.wait, self._best_weights = 0, None

    def after_epoch(self):
        if self.improved():
            self.wait = 0
            if self.restore_best:
                self._best_weights = _weights(self.learn)
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = self.learn.epoch
            raise CancelFitException

    def after_fit(self):
        last = self.learn.recorder.history[-1]["epoch"] if self.learn.recorder.history else None
        if self.restore_best and self._best_weights is not None and last != self.best_epoch:
            _set_weights(self.learn, self._best_weights)
        self._best_weights = None


class SaveBest(_Monitor):
    """Saves the model to ``path`` (``learn.save(path)``) whenever ``monitor`` improves,
    so the file holds the best epoch's weights.

    ``mode`` is "min" or "max", by default "max" for accuracy-like names, else
    "min".  The best value is kept over every fit this callback runs in;
    ``best`` and ``best_epoch`` say which epoch the file holds.
    """
    order = 5

    def __init__(self, path, monitor: str = "valid_loss", mode: str | None = None,
                 min_delta: float = 0.0):
        super().__init__(monitor, mode, min_delta)
        self.path = path

    def after_epoch(self):
        if self.improved():
            self.learn.save(self.path)


def _weights(learn) -> list[np.ndarray]:
    """Host copies of the model's parameters."""
    return [learn.backend.to_numpy(p.value).copy() for p in learn.model.parameters()]


def _set_weights(learn, weights):
    """Give the model's parameters the values ``weights`` (host arrays)."""
    for p, w in zip(learn.model.parameters(), weights):
        p.value = learn.backend.asarray(w.copy())


# ---------------------------------------------------------------- lr_find
class LRFindResult:
    """What ``Learner.lr_find`` found: per step ``lrs``, ``losses`` and ``smoothed``
    losses (NumPy arrays), and the ``suggestion``."""

    def __init__(self, lrs, losses, smoothed, suggestion):
        self.lrs, self.losses, self.smoothed = lrs, losses, smoothed
        self.suggestion = suggestion

    def __repr__(self):
        return f"LRFindResult({len(self.lrs)} steps, suggestion={self.suggestion:.3g})"


class LRFinder(Callback):
    """Trains with a learning rate growing exponentially from ``start_lr`` to ``end_lr``
    over ``num_it`` steps, recording each step's rate and loss.

    The loss is smoothed with an exponential moving average (``beta``,
    bias-corrected).  With ``stop_div``, the run stops once the smoothed loss
    exceeds 4 times the best one or is not finite.  Epoch boundaries are crossed
    without validation.  Used by ``Learner.lr_find``, which restores the
    Learner afterwards; ``result()`` gives the ``LRFindResult``.
    """
    order = -20

    def __init__(self, start_lr=1e-7, end_lr=10.0, num_it=100, stop_div=True, beta=0.9):
        self.start_lr, self.end_lr, self.num_it = float(start_lr), float(end_lr), int(num_it)
        self.stop_div, self.beta = stop_div, beta
        self.lrs, self.losses, self.smoothed = [], [], []
        self.bar = None

    def before_fit(self):
        self.lrs, self.losses, self.smoothed = [], [], []
        self._average, self._best = 0.0, math.inf
        if self.learn.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=self.num_it, desc="lr_find", unit="step", leave=False,
                            dynamic_ncols=True)

    def before_epoch(self):
        steps = len(self.lrs) + np.arange(len(self.learn.dls.train))
        grown = self.start_lr * (self.end_lr / self.start_lr) ** (steps / (self.num_it - 1))
        self.learn.lrs = np.where(steps < self.num_it, grown, self.end_lr)

    def after_batch(self):
        learn = self.learn
        self.lrs.append(float(learn.lrs[learn.iter]))
        self.losses.append(learn.loss)
        self._average = self.beta * self._average + (1 - self.beta) * learn.loss
        smooth = self._average / (1 - self.beta ** len(self.losses))
        self.smoothed.append(smooth)
        self._best = min(self._best, smooth)
        if self.bar is not None:
            self.bar.update(1)
        diverged = not math.isfinite(smooth) or smooth > 4 * self._best
        if len(self.lrs) >= self.num_it or (self.stop_div and diverged):
            raise CancelFitException
        if learn.iter == len(learn.dls.train) - 1:
            raise CancelEpochException   # the next epoch starts without validating this one

    def after_fit(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def result(self) -> LRFindResult:
        """The rates, losses, smoothed losses and the suggested rate."""
        lrs, smoothed = np.array(self.lrs), np.array(self.smoothed)
        return LRFindResult(lrs, np.array(self.losses), smoothed, suggest_lr(lrs, smoothed))


def suggest_lr(lrs, smoothed) -> float:
    """The rate of the lowest smoothed loss divided by 10: a rate one order of magnitude
    below the one where the loss bottoms out, so still on the descending part."""
    smoothed = np.asarray(smoothed, np.float64)
    if len(smoothed) == 0:
        raise ValueError("lr_find: no step ran; nothing to suggest")
    lowest = int(np.argmin(np.where(np.isfinite(smoothed), smoothed, np.inf)))
    return float(lrs[lowest]) / 10
