"""``fastsgd train``: fit a digit classifier, or continue one with ``--resume``."""
from __future__ import annotations

import contextlib
import os
import sys
import time

import numpy as np

from .. import backends, files
from .building import describe, headline, prepare
from .options import (
    ACTIVATIONS,
    ADDED_SETTINGS,
    FIXED_BY_CHECKPOINT,
    TRAIN_DEFAULTS,
    UsageError,
    check_output,
    is_digit_list,
    is_int,
    one_line,
    refuse_options_that_do_not_apply,
    write_output,
)


def run_train(args, dist=None) -> int:
    """``fastsgd train``: fit (or resume), print the table, write --save/--json/--plot.

    Their destinations, and the --resume checkpoint, are checked before training.
    When one of them is ``-`` (stdout), the table and the accuracy go to stderr instead.
    With --distributed this runs on every MPI rank (``dist``); rank 0 alone prints and writes.
    """
    if args.sync_every and not args.distributed:
        raise UsageError("--sync-every: needs --distributed")
    if args.valid_pct is not None and args.distributed:
        raise UsageError("--valid-pct: not with --distributed (each rank reads its rows of "
                         "the train and t10k files)")
    if args.distributed and dist is None:
        from ..distributed import run_cli
        return run_cli(args, run_train)
    outputs = _check_outputs(args)
    given, resumed = _resolve_train_options(args)
    refuse_options_that_do_not_apply(args, given)
    if dist is not None:
        dist.check_same({f"--{key.replace('_', '-')}": getattr(args, key)
                         for key in SAME_ON_EVERY_RANK})
    text = sys.stderr if any(map(files.is_stdout, outputs.values())) else sys.stdout
    with contextlib.redirect_stdout(text):
        learn, report = _fit(args, reseed=bool(args.resume) and "seed" in given, dist=dist,
                             resumed=resumed)
    if args.save:
        write_output(args.save, lambda path: learn.save(
            path, settings=_checkpoint_settings(args, learn)), text, args.quiet)
    if args.json:
        write_output(args.json, lambda path: files.write_json(path, report), text, args.quiet)
    if args.plot:
        from ..plots import plot_history
        write_output(args.plot, lambda path: plot_history(learn.recorder.history, path), text,
                     args.quiet)
    return 0


#: The options every rank of ``--distributed`` must be given alike (as resolved): they
#: set the collectives each rank runs, the model, the classes and the rows.
SAME_ON_EVERY_RANK = ("sync_every", "epochs", "schedule", "model", "hidden", "activation",
                      "digits", "bs", "wd", "seed")


# ------------------------------------------------------------------- resume
def _resolve_train_options(args) -> tuple[set[str], dict | None]:
    """Fill in the options of ``TRAIN_DEFAULTS`` not given: from the --resume checkpoint's
    settings, else the defaults.  Returns the names of those given and the checkpoint's
    architecture (None without --resume)."""
    given = {key for key in TRAIN_DEFAULTS if getattr(args, key) is not None}
    saved, resumed = _resume_settings(args.resume) if args.resume else ({}, None)
    for key in FIXED_BY_CHECKPOINT:
        if key in given and saved and getattr(args, key) != saved[key]:
            raise UsageError(f"--{key}: {args.resume} was trained with {key} {saved[key]}, not "
                             f"{getattr(args, key)}; a resumed run keeps its model and digits")
    if saved and "backend" not in given and backends.available().get(saved["backend"]) is not True:
        raise UsageError(f"--resume: {args.resume} was trained on backend {saved['backend']!r}, "
                         f"unavailable here ({backends.available().get(saved['backend'])}); "
                         f"pass --backend")
    for key, default in TRAIN_DEFAULTS.items():
        if key not in given:
            setattr(args, key, saved.get(key, default))
    return given, resumed


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


#: What each saved setting must be, as (check, expected) pairs.
_SETTING_CHECKS = {
    "data": (lambda v: v is None or isinstance(v, str), "a folder name or null"),
    "digits": (lambda v: isinstance(v, list) and 2 <= len(v) == len(set(v)) and is_digit_list(v),
               "two or more distinct digits"),
    "model": (lambda v: v in ("linear", "mlp"), "linear or mlp"),
    "hidden": (lambda v: isinstance(v, list) and v and all(is_int(n) and n >= 1 for n in v),
               "a list of positive sizes"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "bs": (lambda v: is_int(v) and v >= 1, "a positive integer"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "momentum": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "wd": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "schedule": (lambda v: v in ("constant", "cosine"), "constant or cosine"),
    "backend": (lambda v: v in backends.names(), f"one of {', '.join(backends.names())}"),
    "seed": (lambda v: is_int(v), "an integer"),
    "valid_pct": (lambda v: v is None or (_is_number(v) and 0 < v < 1),
                  "null or a fraction in (0, 1)"),
}


def _resume_settings(path) -> tuple[dict, dict]:
    """The ``fastsgd train`` settings saved in the checkpoint ``path``, checked, and its
    architecture."""
    from ..layers import read_checkpoint
    try:
        stored = read_checkpoint(path)
        state = stored.state or {}
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--resume: {one_line(exc)}") from None
    settings = state.get("settings") if "opt" in state else None
    if isinstance(settings, dict):
        settings = {**{key: TRAIN_DEFAULTS[key] for key in ADDED_SETTINGS}, **settings}
    if not isinstance(settings, dict) or not set(TRAIN_DEFAULTS) <= set(settings):
        raise UsageError(f"--resume: {path} is not a checkpoint of fastsgd train (it holds "
                         f"{'no training state' if settings is None else 'other settings'}); "
                         f"write one with train --save")
    history = state.get("history")
    if isinstance(history, list) and any(not isinstance(row, dict) or
                                         not isinstance(row.get("batch_accuracy"), (int, float))
                                         for row in history):
        raise UsageError(f"--resume: {path}: its history lacks the accuracy train records "
                         f"each epoch (batch_accuracy); write one with train --save")
    for key, (check, expected) in _SETTING_CHECKS.items():
        if not check(settings[key]):
            raise UsageError(f"--resume: {path}: saved setting {key} is {settings[key]!r:.60}, "
                             f"expected {expected}")
    return {key: settings[key] for key in TRAIN_DEFAULTS}, stored.config


def _checkpoint_settings(args, learn) -> dict:
    """The options a --resume of this run takes over, as used (the data folder absolute)."""
    settings = {key: getattr(args, key) for key in TRAIN_DEFAULTS}
    settings.update(data=os.path.abspath(args.data) if args.data else None, lr=learn.opt.lr,
                    momentum=learn.opt.momentum, wd=learn.opt.weight_decay,
                    backend=learn.backend.name)
    return settings


# -------------------------------------------------------------------- train
def _check_outputs(args) -> dict[str, str]:
    """{option: path} of --save/--json/--plot, each checked to be writable (UsageError if not)."""
    outputs = {option: path for option, path in
               (("--save", args.save), ("--json", args.json), ("--plot", args.plot)) if path}
    if sum(map(files.is_stdout, outputs.values())) > 1:
        raise UsageError("only one of --save, --json and --plot can be standard output")
    targets = {}                          # real path -> option; devices may be shared
    for option, path in outputs.items():
        target = os.path.realpath(path)
        if files.is_stdout(path):
            continue
        if target in targets and (os.path.isfile(target) or not os.path.exists(target)):
            raise UsageError(f"{targets[target]} and {option} name the same file {path}")
        targets[target] = option
    if args.plot:
        from ..plots import require_matplotlib
        require_matplotlib()
    for option, path in outputs.items():
        check_output(option, path)
    return outputs


def _fit(args, reseed: bool = False, dist=None, resumed=None):
    """Load the data, build the model (or restore the --resume checkpoint) and train it;
    returns (learner, --json report or None).  ``reseed``: shuffle from --seed rather
    than continue the checkpoint's shuffling."""
    from .. import SGD, Learner, batch_accuracy

    run = prepare(args, args.lr, dist, resumed)
    lr, momentum, backend, dls = run.lr, run.momentum, run.backend, run.dls
    learn = Learner(dls, run.model, run.loss, SGD(lr, momentum, args.wd), [batch_accuracy],
                    backend=backend, show=not args.quiet,
                    progress=False if args.no_progress else None, distributed=dist)
    learn.classes = args.digits        # two digits: the first is the target 1.0
    if args.resume:
        learn.load(args.resume)
        learn.opt.lr, learn.opt.momentum, learn.opt.weight_decay = lr, momentum, args.wd
        if reseed:
            learn.dls.train.rng_state = np.random.default_rng(args.seed).bit_generator.state
    fused = learn.fused
    if not args.quiet:
        path = "fused" if fused is True else f"layer by layer: {fused}"
        resumed = f", resumed from {args.resume} at epoch {learn.epoch}" if args.resume else ""
        print(f"{headline(run.name, args)}, {dls.train.n} train / {dls.valid.n} valid, model "
              f"{describe(run.model)}, backend {backend.name} ({path}){resumed}", flush=True)
    t0 = time.perf_counter()
    learn.fit(args.epochs, schedule=args.schedule)
    elapsed = time.perf_counter() - t0
    accuracy = learn.recorder.history[-1]["batch_accuracy"]
    print(f"accuracy {accuracy:.4f} after {args.epochs} epochs ({elapsed:.1f} s)")

    report = None
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
        settings.update(lr=lr, momentum=momentum, backend=backend.name, data=args.data or "embedded",
                        n_train=dls.train.n, n_valid=dls.valid.n, fused=fused,
                        distributed=dist.settings() if dist else None)
        history = [{"epoch": r["epoch"], "train_loss": r["train_loss"],
                    "valid_loss": r["valid_loss"], "accuracy": r["batch_accuracy"],
                    "seconds": r["seconds"]} for r in learn.recorder.history]
        report = {"settings": settings, "history": history, "accuracy": accuracy}
    return learn, report
