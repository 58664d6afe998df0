"""The Learner: the fastai-style training loop over backend kernels.

    dls = DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=64, seed=0)
    learn = Learner(dls, simple_net(784, 30, 1), mnist_loss, SGD(0.1), [batch_accuracy])
    learn.fit(10)            # prints one row per epoch; history in learn.recorder

    # fastai's call shapes, the book's functions on tensors:
    learn = Learner(dls, nn.Sequential(nn.Linear(784, 30), nn.ReLU(), nn.Linear(30, 1)),
                    opt_func=SGD, loss_func=mnist_loss, metrics=batch_accuracy)
    learn.fit(40, 0.1)       # learn.recorder.values: [train_loss, valid_loss, *metrics]

One step is the book's loop: predict, loss, backward, step.  Around the steps,
callbacks (``fastsgd.callbacks``) record the history, set the step rates, print
the table, draw progress bars and may stop the fit.  The Learner never names a
backend: it holds a handle and every layer, loss and update calls kernels
through it.  The DataLoaders live in ``fastsgd.loaders``, the fused epoch in
``fastsgd.fused`` and checkpoints in ``fastsgd.checkpoint``; ``DataLoader``,
``DataLoaders``, ``generator_from_state`` and ``CHECKPOINT_FORMAT`` are importable
from here too.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from . import backends, checkpoint, inference
from . import fused as fused_path
from .callbacks import (Callback, CancelEpochException, CancelFitException, EpochTable, LRFinder,
                        LRSchedule, ProgressCallback, Recorder, metric_name)
from .checkpoint import CHECKPOINT_FORMAT
from .learner_checks import (autograd_reason, check_for_autograd, checked_callbacks,
                             checked_metrics, takes_backend)
from .layers import Linear, Sequential
from .loaders import DataLoader, DataLoaders, generator_from_state
from .optim import SGD, checked_lr
from .tensor import Tensor, no_grad, use_backend

__all__ = ["DataLoader", "DataLoaders", "Recorder", "Learner", "TrainingDiverged",
           "DIVERGED_LOSS_FACTOR", "CHECKPOINT_FORMAT", "generator_from_state"]


def divergence_advice(opt) -> str:
    """What to change after a divergence under SGD ``opt``: the weight decay when it alone
    makes the steps grow the weights, else the learning rate.

    The decay's part of a step scales the weights by ``1 - lr * wd`` (with momentum m,
    the velocity's recurrence is stable only for ``lr * wd < 2 * (1 + m)``); beyond that
    the weights grow whatever the data.
    """
    lr, wd, momentum = opt.lr, opt.weight_decay, opt.momentum
    if wd and lr * wd >= 2 * (1 + momentum):
        return (f"lower the weight decay (wd={wd:g}: with lr={lr:g} and momentum={momentum:g} "
                f"it alone grows the weights; lr * wd must stay below 2 * (1 + momentum))")
    return f"lower the learning rate (lr={lr})"


class TrainingDiverged(FloatingPointError):
    """Training diverged: a non-finite loss, parameter or validation output, or a loss that
    grew past ``DIVERGED_LOSS_FACTOR`` times the first one (plus 1)."""


#: An epoch whose mean training loss exceeds this many times the first step's loss
#: (plus 1) has diverged, even while every number is still finite.
DIVERGED_LOSS_FACTOR = 10.0


class Learner:
    """Trains ``model`` on ``dls`` with ``loss_func`` and ``opt``, reporting ``metrics``.

    ``backend`` is a name, a Backend or None for ``fastsgd.backends.default_name()``.
    ``show`` prints the per-epoch table; ``progress`` draws progress bars: over a
    fit's epochs, and on the layer path over each epoch's batches (default: only
    when stdout is a terminal).  ``cbs`` are callbacks (``fastsgd.callbacks``) run
    in every fit.  With ``fused`` (the default), a whole epoch runs in one
    compiled call of the backend's layer program (see ``fastsgd.fused``) whenever
    the model, loss, backend and callbacks allow it; the result is the same as
    layer by layer.  ``learn.fused`` then reads True, or a string saying why fits
    run layer by layer.  ``distributed`` (a ``fastsgd.MPI``) trains data-parallel
    over MPI ranks (see ``fastsgd.distributed``).

    fastai's call shapes: ``opt_func(params, lr)`` makes the optimiser (``SGD``, or
    one of your own with ``step()`` and ``zero_grad()``) at rate ``lr``; ``metrics``
    is one function or several, each ``metric(preds, targets)`` on tensors (the
    targets as the DataLoader holds them) or ``metric(preds, targets, backend)`` on
    arrays (fastsgd's own).  A model of fastsgd's layers, one of its losses and
    ``SGD`` train on the kernels (fused when they can); anything else — the book's
    own ``mnist_loss``, a ``Module`` of your own, ``BasicOptim`` — trains through
    autograd on tensors, and ``learn.fused`` says why.  The Learner works on its own
    copies of what it must convert: the caller's DataLoaders and arrays are never
    changed.

    Threads: different Learners (and any kernels) may run in different threads at
    once — each keeps its own buffers and the NaN-check switch is per thread.  One
    Learner is not to be used from two threads at once: it owns its model's
    buffers, its DataLoaders' shuffling state and its history.
    """

    def __init__(self, dls: DataLoaders, model, loss_func=None, opt=None,
                 metrics=(), backend=None, show: bool = True,
                 progress: bool | None = None, fused: bool = True, cbs: Sequence[Callback] = (),
                 distributed=None, *, opt_func=None, lr: float = 1e-3):
        if opt is SGD or (opt_func is not None and opt is not None):
            if opt is not SGD:
                raise TypeError("opt, opt_func: give an optimiser or a function making one, "
                                "not both")
            opt, opt_func = None, SGD
        if loss_func is None or not callable(loss_func):
            raise TypeError(f"loss_func: expected a fastsgd.Loss (mnist_loss, cross_entropy, mse) "
                            f"or a function loss(preds, targets) on tensors, got {loss_func!r}")
        self.metrics = checked_metrics(metrics)
        if opt_func is not None:
            if not callable(opt_func):
                raise TypeError(f"opt_func: expected a function opt_func(params, lr), such as "
                                f"fastsgd.SGD, got {opt_func!r}")
            if not callable(getattr(model, "parameters", None)):
                raise TypeError(f"model: opt_func needs a model with .parameters(), got "
                                f"{type(model).__name__}")
            opt = opt_func(list(model.parameters()), lr)
        elif opt is None:
            opt = SGD()
        self.backend = backends.get(backend)
        self._autograd = autograd_reason(model, loss_func, opt)
        if self._autograd is None and isinstance(model, Linear):
            model = Sequential(model)         # a lone layer, nn.Linear(28*28, 1)
        elif self._autograd is not None:
            check_for_autograd(model, loss_func, opt)
        self.dls, self.model, self.loss_func, self.opt = dls, model, loss_func, opt
        self.show = show
        self.fused = fused
        self.progress = sys.stdout.isatty() if progress is None else progress
        self.cbs = checked_callbacks(cbs, "cbs")
        self.recorder = Recorder()
        self.epoch, self.n_epochs, self.last_row = 0, 0, None
        self._running: list[Callback] | None = None   # the callbacks of the fit in progress
        self._dpreds_buf = None
        if self._autograd is None:
            self.model.to(self.backend)
            self.opt.bind(self.model.parameters(), self.backend)
        self._check_data()
        self.distributed = distributed
        if distributed is not None:
            if self._autograd is not None:
                raise ValueError(f"distributed: runs on the kernel path, and this Learner trains "
                                 f"through autograd: {self._autograd}")
            distributed.bind(self)

    def _check_data(self):
        """Give the Learner its own DataLoaders over the data as the steps need them; the
        caller's DataLoaders and arrays are left as they were."""
        if not isinstance(self.dls, DataLoaders):
            raise TypeError(f"dls: expected fastsgd.DataLoaders(train_dl, valid_dl), got "
                            f"{type(self.dls).__name__}")
        own = []
        for part, dl in (("train", self.dls.train), ("valid", self.dls.valid)):
            if getattr(dl, "y", None) is None:
                raise ValueError(f"dls.{part}: expected a DataLoader of (x, y) pairs")
            y_raw = self.backend.to_numpy(dl.y) if self._autograd is None else np.asarray(dl.y)
            if self._autograd is not None:
                x = np.asarray(self.backend.to_numpy(dl.x))
                clone = dl.with_arrays(x, y_raw)
            else:
                clone = dl.with_arrays(*self._kernel_arrays(part, dl, y_raw))
                clone.to(self.backend)
            clone.y_raw = y_raw
            own.append(clone)
        self.dls = DataLoaders(*own)

    def _kernel_arrays(self, part, dl, y_raw):
        """x (N, F) float32 and the loss's targets for the kernel path, checked."""
        n_in, n_out = self.model.n_in, self.model.n_out
        x = dl.x
        if dl.tensors or x.dtype != np.float32 or x.ndim != 2:
            x = np.asarray(x)
            if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
                raise ValueError(f"dls.{part}: x must be numbers of shape (N, {n_in}), "
                                 f"got {x.dtype} of shape {x.shape}")
            x = np.ascontiguousarray(x, dtype=np.float32)
            if not np.isfinite(x).all():
                raise ValueError(f"dls.{part}: x contains NaN or Inf; expected finite values")
        if x.shape[1] != n_in:
            raise ValueError(f"dls.{part}: x has {x.shape[1]} features but the model "
                             f"expects {n_in}")
        if self.loss_func.targets == "binary" and n_out != 1:
            raise ValueError(f"loss_func: {self.loss_func!r} needs a model with one output, "
                             f"this one has {n_out}")
        return x, self.loss_func.prepare_targets(y_raw, n_out)

    # ------------------------------------------------------------ training
    @property
    def fused(self) -> bool | str:
        """True when this Learner's fits run on the fused path, else the reason they do not.

        During a fit, the callbacks of that fit count too.
        """
        if self._autograd is not None:
            return f"{self._autograd}: it trains through autograd"
        if not self._fused_wanted:
            return "turned off"
        for cb in (self._running if self._running is not None else self.cbs):
            if callable(getattr(cb, "after_batch", None)):
                return f"callback {cb.name} needs after_batch"
        return fused_path.reason(self.model, self.loss_func, self.opt, self.dls.train) or True

    @fused.setter
    def fused(self, wanted: bool):
        self._fused_wanted = bool(wanted)

    def fit(self, n_epochs: int, lr: float | None = None, schedule="constant",
            cbs: Sequence[Callback] = ()) -> list[dict]:
        """Train for ``n_epochs``; ``lr`` overrides the optimiser's rate.

        ``schedule`` is "constant", "cosine" (steps start large, then get
        smaller) or a function of training progress in [0, 1) returning a
        multiplier of ``lr``.  ``cbs`` are callbacks for this fit only, run with
        the Learner's own.  Returns the history of these epochs (fewer rows when
        a callback ends the fit early).
        """
        if not isinstance(n_epochs, (int, np.integer)) or isinstance(n_epochs, bool) or n_epochs < 1:
            raise ValueError(f"n_epochs: expected a positive integer, got {n_epochs!r}")
        if lr is not None:
            lr = checked_lr(lr, positive=True)
        schedule = LRSchedule(schedule)
        cbs = checked_callbacks(cbs, "cbs")
        if lr is not None:
            self.opt.lr = lr
        display = ([EpochTable()] if self.show else []) + ([ProgressCallback()] if self.progress else [])
        start = len(self.recorder.history)
        self._fit(n_epochs, [self.recorder, schedule, *display, *self.cbs, *cbs])
        return self.recorder.history[start:]

    def _fit(self, n_epochs, cbs):
        """Run ``n_epochs`` epochs with callbacks ``cbs``."""
        self.n_epochs = n_epochs
        self._running = sorted(cbs, key=lambda cb: cb.order)
        for cb in self._running:
            cb.learn = self
        try:
            program = fused_path.plan(self.model, self.loss_func, self.opt, self.dls.train) \
                if self.fused is True else None
            if self.distributed is not None:
                program = self.distributed.program(self, program)
        except BaseException:
            self._running = None
            raise
        try:
            self.callback("before_fit")
            for _ in range(n_epochs):
                self._do_epoch(program)
        except CancelFitException:
            pass
        finally:
            try:
                self.callback("after_fit")
            finally:
                self._running = None

    def _do_epoch(self, program):
        """One epoch: train, validate, check, with the callbacks around."""
        self.dl, self.lrs, self.last_row, self.step_losses = self.dls.train, None, None, []
        try:
            self.callback("before_epoch")
            if program is not None:
                train_loss = self._train_epoch_fused(program)
            elif self._autograd is not None:
                train_loss = self._train_epoch_autograd()
            else:
                train_loss = self._train_epoch()
            self.last_row = {"epoch": self.epoch, "train_loss": train_loss, **self.validate()}
            self._check_diverged(self.last_row)
            self.callback("after_epoch")
        except CancelEpochException:
            pass
        except CancelFitException:
            self.epoch += 1
            raise
        self.epoch += 1       # an epoch that ends in an error does not count

    def callback(self, event: str):
        """Run ``event`` (e.g. "after_epoch") on the fit's callbacks that define it, in order."""
        for cb in self._running or ():
            method = getattr(cb, event, None)
            if method is not None:
                method()

    def _train_epoch(self) -> float:
        """One epoch layer by layer: predict, loss, backward, step; after_batch after each."""
        total, count = 0.0, 0
        for self.iter, ((self.xb, self.yb), lr) in enumerate(zip(self.dl, self._rates())):
            with backends.skip_value_checks():  # the data was checked once, the loss is checked here
                self.preds = self.model.forward(self.xb)
                self.loss = self.loss_func(self.preds, self.yb, self.backend)
                self._check_loss(self.loss)
                dpreds = self.loss_func.backward(self.preds, self.yb, self.backend,
                                                 out=self._dpreds(self.preds))
                self.model.backward(dpreds)
                self.opt.step(float(lr))
            total += self.loss * len(self.xb)
            count += len(self.xb)
            self.step_losses.append(self.loss)
            self.callback("after_batch")
        return total / count

    def _train_epoch_autograd(self) -> float:
        """One epoch through autograd: the book's ``calc_grad``, ``opt.step()`` and
        ``opt.zero_grad()`` on tensors; after_batch after each step."""
        total, count = 0.0, 0
        sgd = isinstance(self.opt, SGD)
        with use_backend(self.backend):
            for self.iter, ((xb, yb), lr) in enumerate(zip(self.dl, self._rates())):
                self.xb, self.yb = Tensor(xb), Tensor(yb)
                self.preds = self.model(self.xb)
                loss = self.loss_func(self.preds, self.yb)
                if not isinstance(loss, Tensor) or loss.value.size != 1:
                    raise TypeError(f"loss_func: expected one value as a Tensor, got {loss!r:.80}")
                self.loss = float(loss.item())
                self._check_loss(self.loss)
                loss.backward()
                if sgd:
                    self.opt.step(float(lr))
                else:
                    self.opt.lr = float(lr)
                    self.opt.step()
                self.opt.zero_grad()
                total += self.loss * len(xb)
                count += len(xb)
                self.step_losses.append(self.loss)
                self.callback("after_batch")
        return total / count

    def _train_epoch_fused(self, program) -> float:
        """One epoch in one compiled call; the steps' losses are checked afterwards."""
        dl = self.dls.train
        losses = program.run(self._rates())
        self.step_losses = losses.tolist()
        if not np.isfinite(losses).all():   # the first one that is not, as the loop says it
            self._check_loss(losses[~np.isfinite(losses)][0])
        sizes = np.full(len(dl), dl.bs)
        sizes[-1] = dl.n - dl.bs * (len(dl) - 1)
        return float(losses @ sizes) / dl.n

    def _rates(self) -> np.ndarray:
        """This epoch's step rates: ``lrs`` as a callback set it, else ``opt.lr`` throughout."""
        if self.lrs is None and not isinstance(getattr(self.opt, "lr", None), (int, float)):
            raise TypeError(f"opt: {type(self.opt).__name__} has no number lr; give fit an lr")
        if self.lrs is None:
            self.lrs = np.full(len(self.dls.train), self.opt.lr)
        return self.lrs

    def _check_loss(self, loss):
        if not math.isfinite(loss):
            self._diverged(f"loss is {loss}")

    def _check_diverged(self, row):
        """After an epoch: parameters and validation results finite, the loss not exploding."""
        for i, p in enumerate(self.model.parameters()):
            finite = np.isfinite(p.value).all() if self._autograd is not None else \
                self.backend.arrays.all_finite(p.value)
            if not finite:
                self._diverged(f"parameter {getattr(p, 'name', i)} holds NaN or Inf")
        for key, value in row.items():
            if key != "epoch" and not math.isfinite(value):
                self._diverged(f"{key} is {value}")
        losses = self.recorder.losses or self.step_losses
        first = losses[0] if losses else row["train_loss"]
        bound = DIVERGED_LOSS_FACTOR * first + 1.0
        if row["train_loss"] > bound:
            self._diverged(f"the training loss grew from {first:.4g} to {row['train_loss']:.4g}")

    def _diverged(self, what):
        raise TrainingDiverged(f"training diverged at epoch {self.epoch}: {what}; "
                               f"{divergence_advice(self.opt)}")

    def _dpreds(self, preds):
        buf = self._dpreds_buf
        if buf is None or buf.shape != preds.shape:
            buf = self._dpreds_buf = self.backend.empty(preds.shape)
        return buf

    # ------------------------------------------------------------ lr_find
    def lr_find(self, start_lr: float = 1e-7, end_lr: float = 10.0, num_it: int = 100,
                stop_div: bool = True) -> float:
        """Try learning rates growing exponentially from ``start_lr`` to ``end_lr`` over
        ``num_it`` training steps; returns the suggested rate.

        The steps run layer by layer (``fastsgd.callbacks.LRFinder``), across epoch
        boundaries without validating, and stop early once the smoothed loss
        exceeds 4 times its best (with ``stop_div``) or a loss is not finite.
        The suggestion is the rate of the lowest smoothed loss divided by 10
        (``fastsgd.callbacks.suggest_lr``).  Afterwards
        the weights, gradients, optimiser velocities and rate, the training
        DataLoader's shuffling state, the epoch counter and the recorder's history
        and losses are exactly as before; the rates and losses tried are in
        ``learn.recorder.lr_find`` (plot them with ``recorder.plot_lr_find(path)``).
        """
        start_lr = checked_lr(start_lr, "start_lr", positive=True)
        end_lr = checked_lr(end_lr, "end_lr", positive=True)
        if not end_lr > start_lr:
            raise ValueError(f"end_lr: expected a rate above start_lr={start_lr}, got {end_lr}")
        if isinstance(num_it, bool) or not isinstance(num_it, (int, np.integer)) or num_it < 2:
            raise ValueError(f"num_it: expected an integer >= 2, got {num_it!r}")
        self._needs_kernel_path("lr_find")
        finder = LRFinder(start_lr, end_lr, int(num_it), stop_div)
        saved = checkpoint.snapshot(self)
        try:
            self._fit(math.ceil(num_it / len(self.dls.train)), [self.recorder, finder])
        except TrainingDiverged:
            pass                           # a loss went non-finite: the steps before it count
        finally:
            checkpoint.restore_snapshot(self, saved)
        self.recorder.lr_find = finder.result()
        return self.recorder.lr_find.suggestion

    # ---------------------------------------------------------- evaluation
    def validate(self, dl: DataLoader | None = None) -> dict:
        """Mean loss and metrics over ``dl`` (default: the validation set).

        Returns ``{"valid_loss": ..., <metric name>: ...}``, each weighted by batch size.
        """
        if dl is None and self.distributed is not None:
            return self.distributed.validate(self)
        if dl is None:
            dl = self.dls.valid
        elif isinstance(dl, DataLoader) and not hasattr(dl, "y_raw"):
            dl = self._own_valid(dl)
        y_raw = getattr(dl, "y_raw", None)
        if y_raw is None:              # rows this Learner prepared (a rank's share of them)
            y_raw = self.backend.to_numpy(dl.y)
        sums = {"valid_loss": 0.0, **{metric_name(m): 0.0 for m in self.metrics}}
        on_arrays = [self._autograd is None and takes_backend(m) for m in self.metrics]
        finite = True
        with backends.skip_value_checks(), no_grad(), use_backend(self.backend):
            for start in range(0, dl.n, dl.bs):
                rows = slice(start, start + dl.bs)
                xb, yb, n = dl.x[rows], dl.y[rows], len(dl.x[rows])
                if self._autograd is not None:
                    preds = self.model(Tensor(xb))
                    yb = Tensor(yb)
                    finite = finite and bool(np.isfinite(preds.value).all())
                    sums["valid_loss"] += float(self.loss_func(preds, yb)) * n
                else:
                    preds = self.model.forward(xb)
                    finite = finite and self.backend.arrays.all_finite(preds)
                    sums["valid_loss"] += self.loss_func(preds, yb, self.backend) * n
                for m, arrays in zip(self.metrics, on_arrays):
                    if arrays:
                        value = m(preds, yb, self.backend)
                    else:
                        if not isinstance(preds, Tensor):
                            preds = Tensor(self.backend.to_numpy(preds))
                        value = m(preds, Tensor(y_raw[rows]))
                    sums[metric_name(m)] += float(value) * n
        if not finite:  # a bounded loss (mnist_loss) can hide outputs gone to +-inf or NaN
            sums["valid_loss"] = math.nan
        return {k: v / dl.n for k, v in sums.items()}

    def _own_valid(self, dl):
        """The Learner's own copy of a DataLoader given to ``validate``."""
        y_raw = np.asarray(self.backend.to_numpy(dl.y))
        if self._autograd is not None:
            clone = dl.with_arrays(np.asarray(dl.x), y_raw)
        else:
            clone = dl.with_arrays(*self._kernel_arrays("valid", dl, y_raw)).to(self.backend)
        clone.y_raw = y_raw
        return clone

    # ---------------------------------------------------------- predictions
    @property
    def classes(self) -> list | None:
        """What each class is, in class order (ints or strings): the labels ``predict``
        returns and the columns of ``predict_proba``.

        For one binary output (``mnist_loss``), ``classes[0]`` is the class of target
        1.0 (the output's sigmoid is its probability) and ``classes[1]`` that of 0.0:
        ``fastsgd train --digits 3,7`` sets ``[3, 7]``.  Default: ``[1, 0]`` (the
        targets) for a binary model, ``0 .. outputs-1`` for class scores, None for
        regression.  Saved and restored by ``save``/``load``.
        """
        self._needs_kernel_path("classes")
        classes = self.__dict__.get("_classes")
        if classes is None:
            return inference.default_classes(self.loss_func.targets, self.model.n_out)
        return list(classes)

    @classes.setter
    def classes(self, names):
        self._classes = None if names is None else inference.check_classes(
            names, self.loss_func.targets, self.model.n_out)

    def predict_raw(self, x, bs: int = 1024) -> np.ndarray:
        """The model's raw outputs (N, outputs) for ``x``, as a NumPy float32 array.

        ``x`` is (N, features), one sample (features,), or images (N, H, W) / one
        image (H, W) with H * W = features.  A model trained on inputs in [0, 1] (MNIST
        pixels) takes uint8 pixels 0..255 (divided by 255) or floats in [0, 1], as
        ``fastsgd predict`` does; others take floats on the training data's scale.
        One sample or image gives N = 1.
        """
        self._needs_kernel_path("predict")
        pixels = getattr(self.dls.train, "unit_range", False)
        return inference.raw_outputs(self.model, inference.as_inputs(x, self.model.n_in,
                                                                     pixels=pixels), bs)

    def predict_proba(self, x, bs: int = 1024) -> np.ndarray:
        """Probabilities (N, classes) as float64, columns in the order of ``classes``:
        softmax of the scores, or ``[sigmoid(z), 1 - sigmoid(z)]`` for one binary output.

        Takes ``x`` as ``predict_raw`` does; a regression model raises ValueError.
        """
        return inference.probabilities(self.predict_raw(x, bs), self.loss_func.targets)

    def predict(self, x, bs: int = 1024) -> np.ndarray:
        """The predicted class of each sample (N,), named by ``classes``.

        The class the accuracy metric counts: the first highest score, or for one
        binary output ``classes[0]`` when the output is > 0 (probability > 0.5).
        A regression model returns its raw outputs.  Takes ``x`` as ``predict_raw``.
        """
        return inference.decode(self.predict_raw(x, bs), self.loss_func.targets, self.classes)

    # ------------------------------------------------------------ storage
    def save(self, path, with_opt: bool = True, settings: dict | None = None) -> Path:
        """Write the model to ``path`` (.npz) atomically; returns the path.

        The file always holds the architecture, the weights, ``classes`` and the
        kind of targets.  With ``with_opt`` (the default) it is a checkpoint that
        ``load`` resumes from exactly: the optimiser's settings and velocities, the
        epoch counter, the training DataLoader's shuffling state, the recorder's
        history and per-step losses, and ``settings`` (JSON-ready data of the
        caller's, such as the command line's options and schedule name).
        ``fastsgd.load_model`` reads either kind as a model.
        """
        self._needs_kernel_path("save")
        return checkpoint.save(self, path, with_opt, settings)

    def load(self, path) -> "Learner":
        """Load a file written by ``save`` (or ``fastsgd.save_model``) into this Learner.

        The architecture must match this model.  A checkpoint restores everything
        ``save`` stored, so that training continues exactly where it stopped; a
        file of weights alone restores the weights (and classes when stored), and
        momentum restarts from zero.  The whole file is checked first: on any
        error nothing changes — weights, optimiser, history, shuffling or classes.
        """
        self._needs_kernel_path("load")
        checkpoint.load(self, path)
        return self

    def _needs_kernel_path(self, what):
        """``what`` is done by the kernel path's model, loss and SGD: refused otherwise."""
        if self._autograd is not None:
            raise ValueError(f"{what}: needs a Learner of fastsgd's layers, one of its losses "
                             f"and fastsgd.SGD; this one trains through autograd because "
                             f"{self._autograd}")
