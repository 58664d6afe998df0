"""DataLoaders and the Learner: the fastai-style training loop over backend kernels.

    dls = DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=64, seed=0)
    learn = Learner(dls, simple_net(784, 30, 1), mnist_loss, SGD(0.1), [batch_accuracy])
    learn.fit(10)            # prints one row per epoch; history in learn.recorder

One step is the book's loop: predict, loss, backward, step.  The Learner never
names a backend: it holds a handle and every layer, loss and update calls
kernels through it.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import backends
from . import fused as fused_path
from .layers import Module, load_weights, read_model_file, save_model
from .losses import Loss
from .optim import SCHEDULES, SGD
from .random import global_rng

__all__ = ["DataLoader", "DataLoaders", "Recorder", "Learner", "TrainingDiverged",
           "DIVERGED_LOSS_FACTOR"]


class TrainingDiverged(FloatingPointError):
    """Training diverged: a non-finite loss, parameter or validation output, or a loss that
    grew past ``DIVERGED_LOSS_FACTOR`` times the first one (plus 1)."""


#: An epoch whose mean training loss exceeds this many times the first step's loss
#: (plus 1) has diverged, even while every number is still finite.
DIVERGED_LOSS_FACTOR = 10.0

#: The largest learning rate a float32 kernel can hold.
_MAX_LR = float(np.finfo(np.float32).max)


class DataLoader:
    """Batches of ``(x, y)``: x (N, F) float32, y (N,) targets.

    With ``shuffle``, each pass visits the rows in a new order drawn from a
    generator seeded by ``seed`` (same seed, same batches).  Batches are
    gathered into reused buffers; without shuffling they are views.  The last
    batch may be smaller.  ``bs=len(x)`` gives full-batch gradient descent and
    ``bs=1`` pure stochastic descent.
    """

    def __init__(self, x, y, bs: int = 64, shuffle: bool = False, seed: int | None = None):
        x = np.asarray(x)
        y = np.asarray(y)
        if x.ndim != 2:
            raise ValueError(f"x: expected a 2-D array (N, features), got shape {x.shape}")
        if len(x) == 0:
            raise ValueError("x: empty dataset; expected at least one row")
        if len(y) != len(x):
            raise ValueError(f"y: expected {len(x)} targets to match x, got {len(y)}")
        if not isinstance(bs, (int, np.integer)) or isinstance(bs, bool) or bs < 1:
            raise ValueError(f"bs: expected a positive integer batch size, got {bs!r}")
        if not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"x: expected numbers, got dtype {x.dtype}")
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(self.x).all():
            raise ValueError("x: contains NaN or Inf; expected finite values")
        self.y = y
        self.backend = backends.get("numpy")
        self.bs = int(min(bs, len(x)))
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed) if seed is not None else \
            np.random.default_rng(global_rng().integers(2**63))
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def to(self, backend) -> "DataLoader":
        """Keep the data on ``backend`` (moved once) and gather batches there."""
        self.backend = backends.get(backend)
        self.x = self.backend.asarray(self.x)
        self.y = self.backend.asarray(self.y, dtype=self.y.dtype)
        self._buffers.clear()
        return self

    def __len__(self):
        """Number of batches per pass."""
        return math.ceil(len(self.x) / self.bs)

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.x)

    def next_order(self) -> np.ndarray:
        """The row order of the next pass: a fresh permutation when shuffling."""
        return self._rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))

    def __iter__(self):
        n, bs = len(self.x), self.bs
        if not self.shuffle:
            for start in range(0, n, bs):
                yield self.x[start:start + bs], self.y[start:start + bs]
            return
        order = self.backend.asarray(self.next_order(), dtype=np.int64)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            xb, yb = self._batch_buffers(len(idx))
            self.backend.take_rows(self.x, idx, out=xb)
            self.backend.take_rows(self.y, idx, out=yb)
            yield xb, yb

    def _batch_buffers(self, size):
        if size not in self._buffers:
            self._buffers[size] = (self.backend.empty((size, self.x.shape[1]), np.float32),
                                   self.backend.empty((size, *self.y.shape[1:]), self.y.dtype))
        return self._buffers[size]


class DataLoaders:
    """A training and a validation ``DataLoader`` (fastai's ``DataLoaders(train, valid)``)."""

    def __init__(self, train: DataLoader, valid: DataLoader):
        self.train, self.valid = train, valid

    @classmethod
    def from_arrays(cls, train_x, train_y, valid_x, valid_y, bs: int = 64, seed: int | None = None,
                    valid_bs: int | None = None) -> "DataLoaders":
        """Shuffled training batches of ``bs``; validation in order, in batches of ``valid_bs``."""
        train = DataLoader(train_x, train_y, bs, shuffle=True, seed=seed)
        valid = DataLoader(valid_x, valid_y, valid_bs or max(bs, 1024), shuffle=False)
        if valid.x.shape[1] != train.x.shape[1]:
            raise ValueError(f"valid_x: expected {train.x.shape[1]} features to match train_x, "
                             f"got {valid.x.shape[1]}")
        return cls(train, valid)

    def __iter__(self):
        return iter((self.train, self.valid))


class Recorder:
    """Per-epoch history: ``history`` is a list of dicts with keys
    ``epoch``, ``train_loss``, ``valid_loss``, one per metric, and ``seconds``."""

    def __init__(self):
        self.history: list[dict] = []
        self.losses: list[float] = []  # every training batch's loss

    def plot_loss(self, path) -> Path:
        """Train/valid loss and the metrics per epoch, as a PNG at ``path`` (needs matplotlib)."""
        from .plots import plot_history
        return plot_history(self.history, path)


class Learner:
    """Trains ``model`` on ``dls`` with ``loss_func`` and ``opt``, reporting ``metrics``.

    ``backend`` is a name, a Backend or None for ``fastsgd.backends.default_name()``.
    ``show`` prints the per-epoch table; ``progress`` draws a progress bar over
    the batches (default: only when stdout is a terminal).  With ``fused`` (the
    default), a whole epoch runs in one compiled call of the backend's layer
    program (see ``fastsgd.fused``) whenever the model, loss and backend allow it;
    the result is the same as layer by layer.  ``learn.fused`` then reads True, or
    a string saying why fits run layer by layer.

    Threads: different Learners (and any kernels) may run in different threads at
    once — each keeps its own buffers and the NaN-check switch is per thread.  One
    Learner is not to be used from two threads at once: it owns its model's
    buffers, its DataLoaders' shuffling state and its history.
    """

    def __init__(self, dls: DataLoaders, model: Module, loss_func: Loss, opt: SGD | None = None,
                 metrics: Sequence[Callable] = (), backend=None, show: bool = True,
                 progress: bool | None = None, fused: bool = True):
        if not isinstance(model, Module):
            raise TypeError(f"model: expected a fastsgd layer or Sequential, got {type(model).__name__}")
        if not isinstance(loss_func, Loss):
            raise TypeError("loss_func: expected a fastsgd.Loss (fastsgd.mnist_loss, cross_entropy, "
                            f"mse or one built from two kernels), got {loss_func!r}")
        if opt is not None and not isinstance(opt, SGD):
            raise TypeError(f"opt: expected a fastsgd.SGD, got {type(opt).__name__}")
        self.dls, self.model, self.loss_func = dls, model, loss_func
        self.opt = opt or SGD()
        self.metrics = list(metrics)
        self.backend = backends.get(backend)
        self.show = show
        self.fused = fused
        self.progress = sys.stdout.isatty() if progress is None else progress
        self.recorder = Recorder()
        self.epoch = 0
        self._dpreds_buf = None
        self.model.to(self.backend)
        self.opt.bind(self.model.parameters(), self.backend)
        self._check_data()

    def _check_data(self):
        n_in, n_out = self.model.n_in, self.model.n_out
        for part, dl in (("train", self.dls.train), ("valid", self.dls.valid)):
            if dl.x.shape[1] != n_in:
                raise ValueError(f"dls.{part}: x has {dl.x.shape[1]} features but the model "
                                 f"expects {n_in}")
            if self.loss_func.targets == "binary" and n_out != 1:
                raise ValueError(f"loss_func: {self.loss_func!r} needs a model with one output, "
                                 f"this one has {n_out}")
            dl.y = self.loss_func.prepare_targets(self.backend.to_numpy(dl.y), n_out)
            dl.to(self.backend)

    # ------------------------------------------------------------ training
    @property
    def fused(self) -> bool | str:
        """True when this Learner's fits run on the fused path, else the reason they do not."""
        if not self._fused_wanted:
            return "turned off"
        return fused_path.reason(self.model, self.loss_func, self.opt, self.dls.train) or True

    @fused.setter
    def fused(self, wanted: bool):
        self._fused_wanted = bool(wanted)

    def fit(self, n_epochs: int, lr: float | None = None, schedule="constant") -> list[dict]:
        """Train for ``n_epochs``; ``lr`` overrides the optimiser's rate.

        ``schedule`` is "constant", "cosine" (steps start large, then get
        smaller) or a function of training progress in [0, 1) returning a
        multiplier of ``lr``.  Returns the history of these epochs.
        """
        if not isinstance(n_epochs, (int, np.integer)) or isinstance(n_epochs, bool) or n_epochs < 1:
            raise ValueError(f"n_epochs: expected a positive integer, got {n_epochs!r}")
        if lr is not None:
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0 \
                    or not math.isfinite(lr):
                raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
            self.opt.lr = float(lr)
        scale = SCHEDULES.get(schedule) if isinstance(schedule, str) else schedule
        if not callable(scale):
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)} or a function, "
                             f"got {schedule!r}")
        if self.show:
            self._print_header()
        start = len(self.recorder.history)
        total_steps = n_epochs * len(self.dls.train)
        program = fused_path.plan(self.model, self.loss_func, self.opt, self.dls.train) \
            if self.fused is True else None
        for i in range(n_epochs):
            t0 = time.perf_counter()
            lrs = self._learning_rates(i * len(self.dls.train), total_steps, scale)
            if program is not None:
                train_loss = self._train_epoch_fused(program, lrs)
            else:
                train_loss = self._train_epoch(lrs)
            row = {"epoch": self.epoch, "train_loss": train_loss, **self.validate()}
            self._check_diverged(row)
            row["seconds"] = time.perf_counter() - t0
            self.recorder.history.append(row)
            self.epoch += 1
            if self.show:
                self._print_row(row)
        return self.recorder.history[start:]

    def _learning_rates(self, step0, total_steps, scale) -> np.ndarray:
        """The rate of each step of the epoch starting at ``step0``: lr times the schedule.

        Each must be finite, >= 0 and representable in float32, on both paths alike.
        """
        rates = []
        for step in range(step0, step0 + len(self.dls.train)):
            multiplier = scale(step / total_steps)
            rate = self.opt.lr * multiplier if _is_real(multiplier) else multiplier
            if not _is_real(rate) or not 0 <= rate <= _MAX_LR:
                raise ValueError(f"schedule: step {step} gives learning rate {rate!r}; expected "
                                 f"a finite number in [0, {_MAX_LR:.4g}] (lr times the "
                                 f"schedule's multiplier)")
            rates.append(rate)
        return np.array(rates, np.float64)

    def _train_epoch(self, lrs) -> float:
        kernels, model, loss_func = self.backend, self.model, self.loss_func
        dl = self.dls.train
        total, count = 0.0, 0
        batches = _progress(dl, self.progress, f"epoch {self.epoch}")
        with backends.skip_value_checks():  # the data was checked once, the loss is checked below
            for (xb, yb), lr in zip(batches, lrs):
                preds = model.forward(xb)
                loss = loss_func(preds, yb, kernels)
                self._check_loss(loss)
                dpreds = loss_func.backward(preds, yb, kernels, out=self._dpreds(preds))
                model.backward(dpreds)
                self.opt.step(float(lr))
                total += loss * len(xb)
                count += len(xb)
                self.recorder.losses.append(loss)
        return total / count

    def _train_epoch_fused(self, program, lrs) -> float:
        dl = self.dls.train
        losses = program.run(lrs)
        for loss in losses:
            self._check_loss(loss)
        self.recorder.losses.extend(losses.tolist())
        sizes = np.full(len(dl), dl.bs)
        sizes[-1] = dl.n - dl.bs * (len(dl) - 1)
        return float(losses @ sizes) / dl.n

    def _check_loss(self, loss):
        if not math.isfinite(loss):
            self._diverged(f"loss is {loss}")

    def _check_diverged(self, row):
        """After an epoch: parameters and validation results finite, the loss not exploding."""
        for p in self.model.parameters():
            if not np.isfinite(self.backend.to_numpy(p.value)).all():
                self._diverged(f"parameter {p.name} holds NaN or Inf")
        for key, value in row.items():
            if key != "epoch" and not math.isfinite(value):
                self._diverged(f"{key} is {value}")
        first = self.recorder.losses[0] if self.recorder.losses else row["train_loss"]
        bound = DIVERGED_LOSS_FACTOR * first + 1.0
        if row["train_loss"] > bound:
            self._diverged(f"the training loss grew from {first:.4g} to {row['train_loss']:.4g}")

    def _diverged(self, what):
        raise TrainingDiverged(f"training diverged at epoch {self.epoch}: {what}; "
                               f"lower the learning rate (lr={self.opt.lr})")

    def _dpreds(self, preds):
        buf = self._dpreds_buf
        if buf is None or buf.shape != preds.shape:
            buf = self._dpreds_buf = self.backend.empty(preds.shape)
        return buf

    # ---------------------------------------------------------- evaluation
    def validate(self, dl: DataLoader | None = None) -> dict:
        """Mean loss and metrics over ``dl`` (default: the validation set).

        Returns ``{"valid_loss": ..., <metric name>: ...}``, each weighted by batch size.
        """
        dl = dl or self.dls.valid
        sums = {"valid_loss": 0.0, **{_name(m): 0.0 for m in self.metrics}}
        finite = True
        with backends.skip_value_checks():
            for xb, yb in dl:
                preds = self.model.forward(xb)
                finite = finite and bool(np.isfinite(self.backend.to_numpy(preds)).all())
                sums["valid_loss"] += self.loss_func(preds, yb, self.backend) * len(xb)
                for m in self.metrics:
                    sums[_name(m)] += m(preds, yb, self.backend) * len(xb)
        if not finite:  # a bounded loss (mnist_loss) can hide outputs gone to +-inf or NaN
            sums["valid_loss"] = math.nan
        return {k: v / dl.n for k, v in sums.items()}

    def predict(self, x, bs: int = 1024) -> np.ndarray:
        """The model's raw outputs for ``x`` (N, features) as a NumPy array (N, outputs)."""
        x = np.asarray(x)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.model.n_in or len(x) == 0:
            raise ValueError(f"x: expected shape (N, {self.model.n_in}) with N >= 1, got {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = [self.backend.to_numpy(self.model.forward(self.backend.asarray(x[i:i + bs]))).copy()
                for i in range(0, len(x), bs)]
        return np.concatenate(outs)

    # ------------------------------------------------------------ storage
    def save(self, path) -> Path:
        """Write the model (architecture and weights) to ``path`` atomically."""
        return save_model(self.model, path)

    def load(self, path) -> "Learner":
        """Load weights saved by ``save``; the architecture must match this model.

        The whole file is checked first: on any error the weights and the
        optimiser's state are left exactly as they were.  After a load, momentum
        restarts from zero.
        """
        config, weights = read_model_file(path)
        if config != self.model.config():
            raise ValueError(f"model file {path}: architecture {config} does not match "
                             f"this learner's model {self.model.config()}")
        load_weights(self.model, weights, source=f"model file {path}")
        self.opt.bind(self.model.parameters(), self.backend)
        return self

    # ------------------------------------------------------------ display
    def _columns(self):
        return ["epoch", "train_loss", "valid_loss", *(_name(m) for m in self.metrics), "time"]

    def _print_header(self):
        print("  ".join(f"{c:<{_width(c)}}" for c in self._columns()).rstrip(), flush=True)

    def _print_row(self, row):
        columns = self._columns()
        cells = [f"{row['epoch']:<{_width('epoch')}}"]
        cells += [f"{row[c]:<{_width(c)}.6f}" for c in columns[1:-1]]
        minutes, seconds = divmod(row["seconds"], 60)
        cells.append(f"{int(minutes):02d}:{seconds:05.2f}")
        print("  ".join(cells), flush=True)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _width(column: str) -> int:
    return max(len(column), 10)


def _name(metric) -> str:
    return getattr(metric, "__name__", type(metric).__name__)


def _progress(iterable, enabled, desc):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, leave=False, unit="batch", dynamic_ncols=True)
