"""Checkpoints of a Learner: the state ``Learner.save`` writes, and ``Learner.load`` checks
before it restores anything; and the in-memory snapshot that ``Learner.lr_find`` puts back.

A checkpoint is a model file (``fastsgd.layers.save_model``) whose JSON state holds
``CHECKPOINT_FORMAT``, the kind of targets, the classes and, saved with the
optimiser, its settings, the epoch counter, the shuffling state, the history and
the caller's settings; its arrays add the velocities and the per-step losses.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from . import inference
from .layers import load_weights, read_checkpoint, save_model
from .loaders import _json_ready, generator_from_state
from .optim import SGD

__all__ = ["CHECKPOINT_FORMAT", "save", "load", "snapshot", "restore_snapshot"]

#: The layout of ``Learner.save``'s state; ``load`` refuses others.
CHECKPOINT_FORMAT = 1


def save(learn, path, with_opt: bool = True, settings: dict | None = None) -> Path:
    """``Learner.save``: write ``learn``'s model to ``path`` (.npz) atomically, as a checkpoint
    with ``with_opt`` (its optimiser, epoch, shuffling, history, losses and ``settings``);
    returns the path."""
    state = {"format": CHECKPOINT_FORMAT, "targets": learn.loss_func.targets,
             "loss": getattr(learn.loss_func, "__name__", None), "classes": learn.classes}
    if not with_opt:
        return save_model(learn.model, path, state=state)
    velocities = learn.opt.velocities()
    state.update(
        epoch=learn.epoch,
        opt={"lr": learn.opt.lr, "momentum": learn.opt.momentum,
             "weight_decay": learn.opt.weight_decay},
        rng=learn.dls.train.rng_state,
        history=_json_ready(learn.recorder.history),
        settings=_json_ready(settings) if settings is not None else {})
    if all(v is None for v in velocities):
        velocities = None
    else:                            # a velocity not made yet is zero
        velocities = [np.zeros(p.value.shape, np.float32) if v is None else v
                      for p, v in zip(learn.model.parameters(), velocities)]
    return save_model(learn.model, path, state=state, velocities=velocities,
                      losses=np.asarray(learn.recorder.losses, np.float64))


def load(learn, path) -> None:
    """``Learner.load``: restore ``learn`` from a file written by ``save`` or ``save_model``,
    all checked before anything changes; the architecture must match ``learn``'s model."""
    stored = read_checkpoint(path)
    source = f"model file {path}"
    if stored.config != learn.model.config():
        raise ValueError(f"{source}: architecture {stored.config} does not match "
                         f"this learner's model {learn.model.config()}")
    restore = _state_restorer(learn, stored, source)
    load_weights(learn.model, stored.weights, source=source)
    learn.opt.bind(learn.model.parameters(), learn.backend)
    restore()


def _state_restorer(learn, stored, source) -> Callable[[], None]:
    """Check a file's state against ``learn``; returns the function that applies it.

    Nothing is assigned until that function runs, so a bad state changes nothing.
    """
    state = stored.state
    if state is None:                          # a file of weights alone
        return lambda: None
    where = f"{source}: state"
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{where}: unknown format {state.get('format')!r} "
                         f"(this fastsgd reads format {CHECKPOINT_FORMAT})")
    targets = state.get("targets")
    if targets != learn.loss_func.targets:
        raise ValueError(f"{where}: saved from a model with {targets!r} targets, this "
                         f"learner's loss {learn.loss_func!r} has {learn.loss_func.targets!r}")
    classes = inference.check_classes(state.get("classes"), targets, learn.model.n_out,
                                      f"{where}.classes")
    if "opt" not in state:                     # saved without the optimiser
        return lambda: setattr(learn, "_classes", classes)
    opt = _checked_opt(state.get("opt"), f"{where}.opt")
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"{where}.epoch: expected an integer >= 0, got {epoch!r:.40}")
    history = _checked_history(state.get("history"), f"{where}.history")
    rng = generator_from_state(state.get("rng"), f"{where}.rng")
    settings = state.get("settings")
    if not isinstance(settings, dict):
        raise ValueError(f"{where}.settings: expected an object, got {settings!r:.40}")
    losses = [] if stored.losses is None else stored.losses.tolist()
    velocities = None if stored.velocities is None else \
        [learn.backend.asarray(v) for v in stored.velocities]

    def restore():
        learn._classes = classes
        learn.opt.lr, learn.opt.momentum, learn.opt.weight_decay = opt
        if velocities is not None:
            learn.opt.set_velocities(velocities)
        learn.epoch = epoch
        learn.recorder.history = history
        learn.recorder.losses = losses
        learn.dls.train._rng = rng
    return restore


def snapshot(learn) -> dict:
    """Copies of everything a few training steps change in ``learn`` (see ``Learner.lr_find``)."""
    to_host = learn.backend.to_numpy
    params = learn.model.parameters()
    return {"values": [to_host(p.value).copy() for p in params],
            "grads": [None if p.grad_value is None else to_host(p.grad_value).copy() for p in params],
            "velocities": [None if v is None else to_host(v).copy()
                           for v in learn.opt.velocities()],
            "lr": learn.opt.lr, "rng": learn.dls.train.rng_state, "epoch": learn.epoch,
            "n_epochs": learn.n_epochs, "last_row": learn.last_row,
            "history": len(learn.recorder.history), "losses": len(learn.recorder.losses)}


def restore_snapshot(learn, saved) -> None:
    """Put back into ``learn`` what ``snapshot`` copied."""
    params = learn.model.parameters()
    for p, value, grad in zip(params, saved["values"], saved["grads"]):
        p.value = learn.backend.asarray(value)
        if grad is not None:
            p.grad_value = learn.backend.asarray(grad)
    velocities = saved["velocities"]
    if any(v is not None for v in [*velocities, *learn.opt.velocities()]):
        # a velocity not made yet is zero
        learn.opt.set_velocities([learn.backend.zeros(p.value.shape) if v is None
                                 else learn.backend.asarray(v)
                                 for p, v in zip(params, velocities)])
    learn.opt.lr = saved["lr"]
    learn.dls.train.rng_state = saved["rng"]
    learn.epoch, learn.n_epochs, learn.last_row = saved["epoch"], saved["n_epochs"], saved["last_row"]
    del learn.recorder.history[saved["history"]:]
    del learn.recorder.losses[saved["losses"]:]


def _checked_opt(opt, where) -> tuple[float, float, float]:
    """(lr, momentum, weight_decay) from a saved optimiser state, checked as SGD checks them."""
    if not isinstance(opt, dict) or set(opt) != {"lr", "momentum", "weight_decay"}:
        raise ValueError(f"{where}: expected lr, momentum and weight_decay, got {opt!r:.80}")
    try:
        checked = SGD(opt["lr"], opt["momentum"], opt["weight_decay"])
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    return checked.lr, checked.momentum, checked.weight_decay


#: What every row of ``Recorder.history`` holds, besides one number per metric.
HISTORY_NUMBERS = ("train_loss", "valid_loss", "seconds")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _checked_history(history, where) -> list[dict]:
    """A saved ``Recorder.history``: a list of objects, each with an integer epoch and
    numbers for ``HISTORY_NUMBERS``, all with the same keys."""
    if not isinstance(history, list):
        raise ValueError(f"{where}: expected a list of epochs, got {history!r:.40}")
    for i, row in enumerate(history):
        epoch = row.get("epoch") if isinstance(row, dict) else None
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise ValueError(f"{where}[{i}]: expected an object with an integer epoch, "
                             f"got {row!r:.80}")
        missing = [key for key in HISTORY_NUMBERS if not _is_number(row.get(key))]
        if missing:
            raise ValueError(f"{where}[{i}]: expected numbers for {', '.join(missing)}, "
                             f"got {row!r:.80}")
        if set(row) != set(history[0]):
            raise ValueError(f"{where}[{i}]: holds {', '.join(sorted(row))}, the first epoch "
                             f"{', '.join(sorted(history[0]))}")
    return [dict(row) for row in history]
