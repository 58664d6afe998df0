"""The ``fastsgd`` command: ``train`` a digit classifier (or ``--resume`` one), ``predict``
with a saved model, ``interpret`` its mistakes, ``info`` on the backends, ``bench``.

Bad arguments and bad files end with a one-line error on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pathlib
import platform
import sys
import time

import numpy as np

from . import backends, files

#: Defaults per loss, measured on MNIST: mnist_loss has small gradients (sigmoid
#: slope / B) and does best with the book's plain SGD at a large rate; the softmax
#: model trains fastest with momentum.
DEFAULT_LR = {"mnist_loss": 1.0, "cross_entropy": 0.1}
DEFAULT_MOMENTUM = {"mnist_loss": 0.0, "cross_entropy": 0.9}
#: ``--activation`` names -> the layer class (imported when training).
ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}
EXIT_USAGE = 2
#: ``fastsgd train``'s options that a checkpoint records, with their defaults for a new
#: run (lr and momentum: per loss, above; backend: $FASTSGD_BACKEND or the fastest).
#: ``--resume`` takes the checkpoint's value of each one not given.
TRAIN_DEFAULTS = {"data": None, "digits": [3, 7], "model": "mlp", "hidden": [30],
                  "activation": "relu", "bs": 64, "lr": None, "momentum": None, "wd": 0.0,
                  "schedule": "constant", "backend": None, "seed": 0}
#: The options that fix the model and its classes: a resumed run cannot change them.
FIXED_BY_CHECKPOINT = ("digits", "model", "hidden", "activation")
#: ``--classes`` of predict and interpret: how to name the label values 0..9.
CLASS_NAMES = ("auto", "labels", "fashion")


class UsageError(Exception):
    """A bad argument or file, reported in one line with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def _hidden(text):
    try:
        sizes = [int(n) for n in text.split(",")]
    except ValueError:
        sizes = []
    if not sizes or any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"expected hidden sizes like 30 or 256,128, got {text!r}")
    return sizes


def _digits(text):
    if text == "all":
        return list(range(10))
    try:
        digits = [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected digits like 3,7 or 'all', got {text!r}") from None
    if len(digits) < 2 or len(set(digits)) != len(digits) or not all(0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"expected two or more distinct digits 0-9, got {text!r}")
    return digits


def _version() -> str:
    from . import __version__
    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastsgd`` command."""
    parser = _Parser(prog="fastsgd", description="Train MNIST digit classifiers with "
                     "hand-written SGD kernels, and inspect the kernel backends.")
    parser.add_argument("--version", action="version", version=f"fastsgd {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    train = sub.add_parser("train", help="train a digit classifier and report accuracy",
                           description="Train the book's binary model (two digits, one output, "
                           "mnist_loss) or a softmax model (more digits, cross-entropy).")
    train.add_argument("--data", metavar="DIR",
                       help="folder of MNIST-format IDX files (train-*/t10k-*); "
                       "default: the embedded 5,000-image MNIST subset")
    train.add_argument("--digits", type=_digits, default=None, metavar="D,D|all",
                       help="digits to classify (default: 3,7; 'all' = ten classes)")
    train.add_argument("--model", choices=["linear", "mlp"], default=None,
                       help="linear: one Linear layer; mlp: Linear layers with an activation "
                       "between each two (default)")
    train.add_argument("--hidden", type=_hidden, default=None, metavar="N[,N...]",
                       help="hidden units of the mlp, one size per hidden layer "
                       "(default: 30; e.g. 256,128)")
    train.add_argument("--activation", choices=list(ACTIVATIONS), default=None,
                       help="activation between the mlp's Linear layers (default: relu)")
    train.add_argument("--epochs", type=_positive_int, default=10, metavar="N",
                       help="passes over the training set (default: 10)")
    train.add_argument("--bs", type=_positive_int, default=None, metavar="N",
                       help="batch size (default: 64)")
    train.add_argument("--lr", type=_non_negative_float, default=None,
                       help=f"learning rate (default: {DEFAULT_LR['mnist_loss']} for two digits, "
                       f"{DEFAULT_LR['cross_entropy']} for more)")
    train.add_argument("--momentum", type=_non_negative_float, default=None,
                       help=f"SGD momentum in [0, 1] (default: {DEFAULT_MOMENTUM['mnist_loss']} "
                       f"for two digits, {DEFAULT_MOMENTUM['cross_entropy']} for more)")
    train.add_argument("--wd", type=_non_negative_float, default=None,
                       help="weight decay (default: 0)")
    train.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                       help="learning-rate schedule: constant (default) or cosine "
                       "(steps start large, then get smaller; a resumed run starts a new "
                       "curve over its --epochs)")
    train.add_argument("--backend", default=None, choices=backends.names(),
                       help="kernel backend (default: $FASTSGD_BACKEND or the fastest available)")
    train.add_argument("--seed", type=int, default=None,
                       help="random seed (default: 0; with --resume, a new shuffling sequence "
                       "instead of the saved one)")
    train.add_argument("--json", metavar="PATH", help="write settings, history and accuracy as JSON "
                       "(- for stdout)")
    train.add_argument("--save", metavar="PATH", help="save the trained model as a checkpoint "
                       "(.npz: weights, classes, optimiser and shuffling state, history)")
    train.add_argument("--resume", metavar="PATH",
                       help="continue training a checkpoint written by --save for --epochs more "
                       "epochs, with its settings unless given (its model and digits are fixed)")
    train.add_argument("--quiet", action="store_true", help="print only the final accuracy")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--plot", metavar="PATH",
                       help="draw train/valid loss and accuracy per epoch as a PNG (needs matplotlib)")
    train.add_argument("--distributed", action="store_true",
                       help="data-parallel training over MPI ranks: run under mpiexec -n K "
                       "(needs the mpi extra); --bs is the global batch size")
    train.add_argument("--sync-every", type=_positive_int, default=None, metavar="K",
                       help="with --distributed: local SGD, averaging weights every K steps "
                       "(default: exact synchronous SGD)")
    train.set_defaults(run=run_train)

    lr_find = sub.add_parser("lr-find", help="suggest a learning rate (fastai's lr_find)",
                             description="Train a few steps with a learning rate growing "
                             "exponentially from 1e-7 to 10, stop when the loss diverges, and "
                             "print the suggested rate: the one at the lowest smoothed loss, "
                             "divided by 10.  Nothing is saved; the model starts as train's does.")
    lr_find.add_argument("--data", metavar="DIR",
                         help="folder of MNIST-format IDX files; default: the embedded subset")
    lr_find.add_argument("--digits", type=_digits, default=[3, 7], metavar="D,D|all",
                         help="digits to classify (default: 3,7; 'all' = ten classes)")
    lr_find.add_argument("--model", choices=["linear", "mlp"], default="mlp",
                         help="linear or mlp (default: mlp)")
    lr_find.add_argument("--hidden", type=_hidden, default=[30], metavar="N[,N...]",
                         help="hidden units of the mlp, one size per hidden layer (default: 30)")
    lr_find.add_argument("--activation", choices=list(ACTIVATIONS), default="relu",
                         help="activation between the mlp's Linear layers (default: relu)")
    lr_find.add_argument("--bs", type=_positive_int, default=64, metavar="N",
                         help="batch size (default: 64)")
    lr_find.add_argument("--momentum", type=_non_negative_float, default=None,
                         help="SGD momentum in [0, 1] (default: as for train)")
    lr_find.add_argument("--wd", type=_non_negative_float, default=0.0,
                         help="weight decay (default: 0)")
    lr_find.add_argument("--num-it", type=_positive_int, default=100, metavar="N",
                         help="training steps to try (default: 100; at least 2)")
    lr_find.add_argument("--backend", default=None, choices=backends.names(),
                         help="kernel backend (default: $FASTSGD_BACKEND or the fastest available)")
    lr_find.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    lr_find.add_argument("--plot", metavar="PATH",
                         help="draw the loss against the learning rate as a PNG (needs matplotlib)")
    lr_find.add_argument("--no-progress", action="store_true", help="no progress bar")
    lr_find.set_defaults(run=run_lr_find)

    predict = sub.add_parser("predict", help="classify images with a saved model",
                             description="Print the predicted class of each image, one per "
                             "line (with --proba, each class's probability too).")
    predict.add_argument("model", metavar="MODEL", help="model file written by train --save")
    predict.add_argument("images", metavar="IMAGES",
                         help="images: an IDX file (.gz or not; uint8 pixels, divided by 255) "
                         "or a .npy array (uint8 0..255, or floats in [0, 1]), shaped (N, 28, 28), "
                         "(N, 784) or (28, 28)")
    predict.add_argument("--proba", action="store_true",
                         help="print a header of class names, then each image's label and its "
                         "probability of each class")
    predict.add_argument("--json", metavar="PATH",
                         help="write classes, labels and probabilities as JSON (- for stdout)")
    _add_class_names_option(predict)
    predict.add_argument("--backend", default=None, choices=backends.names(),
                         help="kernel backend (default: $FASTSGD_BACKEND or the fastest available)")
    predict.set_defaults(run=run_predict)

    interpret = sub.add_parser("interpret", help="confusion matrix and top losses of a saved model",
                               description="Classify the validation images (t10k) of a data folder "
                               "with a saved model; print the accuracy, the confusion matrix and "
                               "the images with the highest loss; --plot draws both as PNGs.")
    interpret.add_argument("model", metavar="MODEL", help="model file written by train --save")
    interpret.add_argument("--data", metavar="DIR",
                           help="folder of MNIST-format IDX files (default: the folder the model "
                           "was trained on, else the embedded MNIST subset)")
    interpret.add_argument("--digits", type=_digits, default=None, metavar="D,D|all",
                           help="the digits the model's outputs are, in order (default: the "
                           "model's classes; needed for two-digit files of weights alone)")
    interpret.add_argument("--plot", metavar="PATH",
                           help="draw the confusion matrix as a PNG at PATH and the top losses at "
                           "PATH's name + '-top-losses' (needs matplotlib)")
    interpret.add_argument("--top", type=_positive_int, default=9, metavar="N",
                           help="how many of the highest-loss images to list and draw (default: 9)")
    _add_class_names_option(interpret)
    interpret.add_argument("--backend", default=None, choices=backends.names(),
                           help="kernel backend (default: $FASTSGD_BACKEND or the fastest available)")
    interpret.set_defaults(run=run_interpret)

    info = sub.add_parser("info", help="list backends, versions and CPU features",
                          description="Print each backend (available, or why not), the Numba "
                          "version and threading layer, and the CPU's features.")
    info.set_defaults(run=run_info)

    bench = sub.add_parser("bench", help="time every kernel and a training epoch against numpy, "
                           "PyTorch and JAX",
                           description="Validate each kernel against the numpy reference, then "
                           "time it on every available backend (and PyTorch when installed); then "
                           "train one epoch on fastsgd's fused path and on each installed peer "
                           "(PyTorch eager, torch.compile, jax.jit, jax.lax.scan), each in its own "
                           "process, validated against numpy.  Prints medians with their spread, "
                           "rates, % of the machine's measured peak and speed-ups.")
    bench.add_argument("--kernels", metavar="K,K",
                       help="kernel names or patterns, e.g. matmul*,relu_forward,epoch "
                       "(default: every kernel and the epoch)")
    bench.add_argument("--backends", metavar="B,B",
                       help="runners, e.g. numba,c,torch,jax.scan; numpy, the baseline, always runs "
                       "(default: every available one)")
    bench.add_argument("--sizes", metavar="S,S",
                       help="batch sizes of the training shapes (e.g. 64,256) and/or small "
                       "(= 64,256) and large (1024^3 matmuls, 4M-element arrays); default: small,large")
    bench.add_argument("--epochs", type=_positive_int, default=5, metavar="N",
                       help="timed epochs per epoch row, after a warm-up epoch (default: 5)")
    bench.add_argument("--samples", type=_positive_int, default=60_000, metavar="N",
                       help="training samples of an epoch (default: 60000)")
    bench.add_argument("--data", default="random", metavar="DIR",
                       help="the epoch's samples: 'random' (default) or a folder of MNIST-format "
                       "IDX files, e.g. /usr/share/datasets/fashion-mnist")
    bench.add_argument("--budget", type=_non_negative_float, default=0.05, metavar="S",
                       help="seconds of timing per kernel row (default: 0.05)")
    bench.add_argument("--json", metavar="PATH", help="write machine info and one row per "
                       "kernel x shape x backend as JSON")
    bench.add_argument("--plot", metavar="PATH",
                       help="draw the speed-ups over numpy as a PNG bar chart (needs matplotlib)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench.set_defaults(run=run_bench_command)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``fastsgd`` command; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
        return args.run(args) or 0
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except (ValueError, TypeError, OSError, RuntimeError, ArithmeticError) as exc:
        # ArithmeticError: TrainingDiverged, a FloatingPointError
        print(f"fastsgd: error: {_one_line(exc)}", file=sys.stderr)
    except MemoryError as exc:
        print(f"fastsgd: error: out of memory{f' ({_one_line(exc)})' if str(exc) else ''}",
              file=sys.stderr)
    except KeyboardInterrupt:
        print("fastsgd: interrupted", file=sys.stderr)
        return 130
    return EXIT_USAGE


def _one_line(exc) -> str:
    """The exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


# -------------------------------------------------------------------- train
def _load_data(args):
    from . import data
    dataset = data.load_mnist(args.data) if args.data else data.load_embedded()
    train_x, train_y = data.select_digits(dataset.train_x, dataset.train_y, args.digits)
    valid_x, valid_y = data.select_digits(dataset.valid_x, dataset.valid_y, args.digits)
    for part, x in (("training", train_x), ("validation", valid_x)):
        if len(x) == 0:
            raise UsageError(f"--digits: the {part} set of {dataset.name} holds none of "
                             f"{','.join(map(str, args.digits))}")
    return dataset.name, train_x, train_y, valid_x, valid_y


def run_train(args, dist=None) -> int:
    """``fastsgd train``: fit (or resume), print the table, write --save/--json/--plot.

    Their destinations, and the --resume checkpoint, are checked before training.
    When one of them is ``-`` (stdout), the table and the accuracy go to stderr instead.
    With --distributed this runs on every MPI rank (``dist``); rank 0 alone prints and writes.
    """
    if args.sync_every and not args.distributed:
        raise UsageError("--sync-every: needs --distributed")
    if args.distributed and dist is None:
        from .distributed import run_cli
        return run_cli(args, run_train)
    outputs = _check_outputs(args)
    given = _resolve_train_options(args)
    with contextlib.redirect_stdout(sys.stderr if files.STDOUT in outputs.values() else sys.stdout):
        learn, report = _fit(args, reseed=bool(args.resume) and "seed" in given, dist=dist)
    if args.save:
        learn.save(args.save, settings=_checkpoint_settings(args, learn))
    if args.json:
        files.write_json(args.json, report)
    if args.plot:
        from .plots import plot_history
        plot_history(learn.recorder.history, args.plot)
    return 0


def _resolve_train_options(args) -> set[str]:
    """Fill in the options of ``TRAIN_DEFAULTS`` not given: from the --resume checkpoint's
    settings, else the defaults.  Returns the names of those given."""
    given = {key for key in TRAIN_DEFAULTS if getattr(args, key) is not None}
    saved = _resume_settings(args.resume) if args.resume else {}
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
    return given


#: What each saved setting must be, as (check, expected) pairs.
_SETTING_CHECKS = {
    "data": (lambda v: v is None or isinstance(v, str), "a folder name or null"),
    "digits": (lambda v: isinstance(v, list) and 2 <= len(v) == len(set(v))
               and all(_is_int(d) and 0 <= d <= 9 for d in v), "two or more distinct digits"),
    "model": (lambda v: v in ("linear", "mlp"), "linear or mlp"),
    "hidden": (lambda v: isinstance(v, list) and v and all(_is_int(n) and n >= 1 for n in v),
               "a list of positive sizes"),
    "activation": (lambda v: v in ACTIVATIONS, f"one of {', '.join(ACTIVATIONS)}"),
    "bs": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "lr": (lambda v: _is_number(v) and v > 0, "a positive number"),
    "momentum": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "wd": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "schedule": (lambda v: v in ("constant", "cosine"), "constant or cosine"),
    "backend": (lambda v: v in backends.names(), f"one of {', '.join(backends.names())}"),
    "seed": (lambda v: _is_int(v), "an integer"),
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _resume_settings(path) -> dict:
    """The ``fastsgd train`` settings saved in the checkpoint ``path``, checked."""
    from .layers import read_checkpoint
    try:
        state = read_checkpoint(path).state or {}
    except (ValueError, FileNotFoundError) as exc:
        raise UsageError(f"--resume: {_one_line(exc)}") from None
    settings = state.get("settings") if "opt" in state else None
    if not isinstance(settings, dict) or not set(TRAIN_DEFAULTS) <= set(settings):
        raise UsageError(f"--resume: {path} is not a checkpoint of fastsgd train (it holds "
                         f"{'no training state' if settings is None else 'other settings'}); "
                         f"write one with train --save")
    for key, (check, expected) in _SETTING_CHECKS.items():
        if not check(settings[key]):
            raise UsageError(f"--resume: {path}: saved setting {key} is {settings[key]!r:.60}, "
                             f"expected {expected}")
    return {key: settings[key] for key in TRAIN_DEFAULTS}


def _checkpoint_settings(args, learn) -> dict:
    """The options a --resume of this run takes over, as used (the data folder absolute)."""
    settings = {key: getattr(args, key) for key in TRAIN_DEFAULTS}
    settings.update(data=os.path.abspath(args.data) if args.data else None, lr=learn.opt.lr,
                    momentum=learn.opt.momentum, wd=learn.opt.weight_decay,
                    backend=learn.backend.name)
    return settings


def _check_outputs(args) -> dict[str, str]:
    """{option: path} of --save/--json/--plot, each checked to be writable (UsageError if not)."""
    outputs = {option: path for option, path in
               (("--save", args.save), ("--json", args.json), ("--plot", args.plot)) if path}
    if list(outputs.values()).count(files.STDOUT) > 1:
        raise UsageError("only one of --save, --json and --plot can be - (stdout)")
    targets = {}                          # real path -> option; devices may be shared
    for option, path in outputs.items():
        target = os.path.realpath(path)
        if path == files.STDOUT:
            continue
        if target in targets and (os.path.isfile(target) or not os.path.exists(target)):
            raise UsageError(f"{targets[target]} and {option} name the same file {path}")
        targets[target] = option
    if args.plot:
        from .plots import require_matplotlib
        require_matplotlib()
    for option, path in outputs.items():
        try:
            files.check_writable(path)
        except OSError as exc:
            raise UsageError(f"{option}: {exc}") from None
    return outputs


def _fit(args, reseed: bool = False, dist=None):
    """Load the data, build the model (or restore the --resume checkpoint) and train it;
    returns (learner, --json report or None).  ``reseed``: shuffle from --seed rather
    than continue the checkpoint's shuffling."""
    from . import Learner, DataLoaders, SGD, batch_accuracy, set_seed
    from .losses import cross_entropy, mnist_loss

    backend = backends.get(args.backend)
    name, train_x, train_y, valid_x, valid_y = dist.load_data(args) if dist else _load_data(args)
    binary = len(args.digits) == 2
    loss = mnist_loss if binary else cross_entropy
    n_out = 1 if binary else len(args.digits)
    lr = args.lr if args.lr is not None else DEFAULT_LR[loss.__name__]
    if lr <= 0:
        raise UsageError(f"--lr: expected a positive learning rate, got {lr}")
    momentum = args.momentum if args.momentum is not None else DEFAULT_MOMENTUM[loss.__name__]
    if momentum > 1:
        raise UsageError(f"--momentum: expected a value in [0, 1], got {momentum}")

    set_seed(args.seed)
    model = _build_model(args, train_x.shape[1], n_out)
    make_dls = dist.dataloaders if dist else DataLoaders.from_arrays
    dls = make_dls(train_x, train_y, valid_x, valid_y, bs=args.bs, seed=args.seed)
    learn = Learner(dls, model, loss, SGD(lr, momentum, args.wd), [batch_accuracy],
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
        print(f"{name}: digits {','.join(map(str, args.digits))}, {dls.train.n} train / "
              f"{dls.valid.n} valid, model {_describe(model)}, backend {backend.name} ({path})"
              f"{resumed}", flush=True)
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


def _build_model(args, n_in, n_out):
    """The Sequential that --model, --hidden and --activation describe."""
    from . import layers
    if args.model == "linear":
        return layers.Sequential(layers.Linear(n_in, n_out))
    activation = getattr(layers, ACTIVATIONS[args.activation])
    sizes = [n_in, *args.hidden, n_out]
    stack = []
    for i in range(len(sizes) - 1):
        stack.append(layers.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            stack.append(activation())
    return layers.Sequential(*stack)


def _describe(model) -> str:
    """E.g. ``784-256-128-10 (relu)`` or ``784-1 (linear)``."""
    from .layers import Linear
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    sizes = "-".join(str(n) for n in [linears[0].n_in, *(layer.n_out for layer in linears)])
    kinds = {type(layer).__name__.lower() for layer in model.layers} - {"linear"}
    return f"{sizes} ({', '.join(sorted(kinds)) or 'linear'})"


# ------------------------------------------------------- predict, interpret
def _add_class_names_option(parser) -> None:
    parser.add_argument("--classes", choices=CLASS_NAMES, default="auto",
                        help="how to name the labels 0..9: as they are, or Fashion-MNIST's names "
                        "(default auto: Fashion-MNIST's when the data folder's name or its "
                        "parent's contains 'fashion')")


def _load_classifier(path, backend_name):
    """(model on the backend, kind of targets, classes, whether the file names them, the
    settings it was trained with) of the model file ``path``."""
    from . import inference
    from .layers import read_checkpoint
    stored = read_checkpoint(path)
    model = stored.build(backends.get(backend_name))
    state = stored.state or {}
    kind = state.get("targets") or ("binary" if model.n_out == 1 else "labels")
    if kind == "real":
        raise UsageError(f"{path}: a regression model; predict and interpret need a classifier")
    known = state.get("classes") is not None
    classes = inference.check_classes(state["classes"], kind, model.n_out,
                                      f"model file {path}: classes") if known \
        else inference.default_classes(kind, model.n_out)
    settings = state.get("settings")
    return model, kind, classes, known, settings if isinstance(settings, dict) else {}


def _class_names(classes, how: str, folder) -> list:
    """The names to show for ``classes``: as they are, or (``how`` fashion, or auto with a
    Fashion-MNIST folder) Fashion-MNIST's names of the labels 0..9."""
    from . import data
    if how == "labels" or (how == "auto" and not data.looks_like_fashion_mnist(folder)):
        return list(classes)
    if not all(_is_int(c) and 0 <= c <= 9 for c in classes):
        if how == "fashion":
            raise UsageError(f"--classes fashion: the model's classes {classes} are not labels 0..9")
        return list(classes)
    return [data.FASHION_MNIST_CLASSES[c] for c in classes]


def run_predict(args) -> int:
    """``fastsgd predict``: the class of each image, one per line; --proba, --json."""
    from . import data, inference
    if args.json:
        try:
            files.check_writable(args.json)
        except OSError as exc:
            raise UsageError(f"--json: {exc}") from None
    model, kind, classes, known, settings = _load_classifier(args.model, args.backend)
    names = _class_names(classes, args.classes, settings.get("data")) \
        if known or kind == "labels" else list(classes)
    x = inference.as_inputs(data.load_images(args.images), model.n_in, name=str(args.images))
    raw = inference.raw_outputs(model, x)
    predicted = [names[i] for i in inference.class_indices(raw, kind)]
    proba = inference.probabilities(raw, kind)
    out = sys.stderr if args.json == files.STDOUT else sys.stdout
    if args.proba:
        print("\t".join(["label", *map(str, names)]), file=out)
        for label, row in zip(predicted, proba):
            print("\t".join([str(label), *(f"{p:.4f}" for p in row)]), file=out)
    else:
        print("\n".join(map(str, predicted)), file=out)
    if args.json:
        files.write_json(args.json, {"model": str(args.model), "images": str(args.images),
                                     "classes": names, "labels": predicted,
                                     "probabilities": proba.tolist()})
    return 0


def _interpret_plot_paths(path) -> list:
    """[confusion matrix PNG, top losses PNG] for --plot PATH (none without it)."""
    if not path:
        return []
    if path == files.STDOUT:
        raise UsageError("--plot: expected a file name (interpret draws two PNGs), got -")
    first = pathlib.Path(path)
    return [first, first.with_name(f"{first.stem}-top-losses{first.suffix or '.png'}")]


def _interpret_digits(args, classes, known, kind, n_out) -> list[int]:
    """The digit each class of the model is: --digits, else the model's classes."""
    n_classes = 2 if kind == "binary" else n_out
    if args.digits is not None:
        if len(args.digits) != n_classes:
            raise UsageError(f"--digits: {args.model} has {n_classes} classes, got "
                             f"{len(args.digits)} digits")
        return list(args.digits)
    if known and all(_is_int(c) and 0 <= c <= 9 for c in classes):
        return list(classes)
    if not known and kind == "labels" and n_out <= 10:
        return list(range(n_out))
    raise UsageError(f"--digits: {args.model} does not say which digit each of its {n_classes} "
                     f"classes is; pass --digits, e.g. --digits 3,7")


def run_interpret(args) -> int:
    """``fastsgd interpret``: accuracy, confusion matrix and top losses on the validation set."""
    from . import data, inference
    plots = _interpret_plot_paths(args.plot)
    if plots:
        from .plots import require_matplotlib
        require_matplotlib()
    for path in plots:
        try:
            files.check_writable(path)
        except OSError as exc:
            raise UsageError(f"--plot: {exc}") from None
    model, kind, classes, known, settings = _load_classifier(args.model, args.backend)
    digits = _interpret_digits(args, classes, known, kind, model.n_out)
    folder = args.data or settings.get("data")
    dataset = data.load_mnist(folder) if folder else data.load_embedded()
    rows = np.flatnonzero(np.isin(dataset.valid_y, digits))
    if len(rows) == 0:
        raise UsageError(f"--digits: the validation set of {dataset.name} holds none of "
                         f"{','.join(map(str, digits))}")
    x, y = data.select_digits(dataset.valid_x, dataset.valid_y, digits)
    actual = np.where(y == 1, 0, 1) if kind == "binary" else y
    raw = inference.raw_outputs(model, inference.as_inputs(x, model.n_in, name="--data"))
    predicted = inference.class_indices(raw, kind)
    proba = inference.probabilities(raw, kind)
    losses = inference.sample_losses(raw, kind, actual)
    matrix = inference.confusion_matrix(actual, predicted, len(digits))
    names = [str(n) for n in _class_names(classes if known else digits, args.classes, folder)]
    top = np.argsort(-losses, kind="stable")[:args.top]
    print(f"{dataset.name}: {len(x)} validation images, accuracy "
          f"{float((actual == predicted).mean()):.4f}")
    print(_matrix_text(matrix, names))
    print(f"top {len(top)} losses (validation image: predicted / actual, loss, probability "
          f"of actual):")
    for i in top:
        print(f"  #{rows[i]}: {names[predicted[i]]} / {names[actual[i]]}, loss {losses[i]:.4f}, "
              f"p {proba[i, actual[i]]:.4f}")
    if plots:
        from .plots import plot_confusion_matrix, plot_top_losses
        plot_confusion_matrix(matrix, names, plots[0], title=f"{dataset.name}: confusion matrix")
        titles = [f"{names[predicted[i]]} / {names[actual[i]]}\n{losses[i]:.2f} / "
                  f"{proba[i, actual[i]]:.2f}" for i in top]
        plot_top_losses(_as_images(x[top]), titles, plots[1],
                        title="prediction / actual, loss / probability of actual")
        print(f"wrote {plots[0]} and {plots[1]}")
    return 0


def _matrix_text(matrix, names) -> str:
    """The confusion matrix as aligned text: rows actual, columns predicted."""
    width = max(6, *(len(n) + 1 for n in names), len(str(int(matrix.max()))) + 1)
    lines = ["confusion matrix (rows: actual, columns: predicted):",
             " " * width + "".join(f"{n:>{width}}" for n in names)]
    lines += [f"{n:>{width}}" + "".join(f"{int(c):>{width}}" for c in row)
              for n, row in zip(names, matrix)]
    return "\n".join(lines)


def _as_images(x) -> np.ndarray:
    """Rows of features as square images (N, S, S) when they are, else strips (N, 1, F)."""
    side = int(round(np.sqrt(x.shape[1])))
    return x.reshape(len(x), side, side) if side * side == x.shape[1] else x[:, None, :]


# ------------------------------------------------------------------ lr-find
def run_lr_find(args) -> int:
    """``fastsgd lr-find``: print the suggested learning rate; --plot draws the curve.

    The model, data and optimiser are built as ``train`` builds them.  When
    --plot is ``-`` (stdout), the text goes to stderr.
    """
    from . import DataLoaders, Learner, SGD, set_seed
    from .losses import cross_entropy, mnist_loss

    if args.num_it < 2:
        raise UsageError(f"--num-it: expected at least 2 steps, got {args.num_it}")
    if args.plot:
        from .plots import require_matplotlib
        require_matplotlib()
        try:
            files.check_writable(args.plot)
        except OSError as exc:
            raise UsageError(f"--plot: {exc}") from None
    out = sys.stderr if args.plot == files.STDOUT else sys.stdout
    backend = backends.get(args.backend)
    name, train_x, train_y, valid_x, valid_y = _load_data(args)
    binary = len(args.digits) == 2
    loss = mnist_loss if binary else cross_entropy
    momentum = args.momentum if args.momentum is not None else DEFAULT_MOMENTUM[loss.__name__]
    if momentum > 1:
        raise UsageError(f"--momentum: expected a value in [0, 1], got {momentum}")
    set_seed(args.seed)
    model = _build_model(args, train_x.shape[1], 1 if binary else len(args.digits))
    dls = DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=args.bs, seed=args.seed)
    learn = Learner(dls, model, loss, SGD(DEFAULT_LR[loss.__name__], momentum, args.wd),
                    backend=backend, show=False, progress=False if args.no_progress else None)
    print(f"{name}: digits {','.join(map(str, args.digits))}, {len(train_x)} train, model "
          f"{_describe(model)}, backend {backend.name}, momentum {momentum}", file=out, flush=True)
    suggestion = learn.lr_find(num_it=args.num_it)
    found = learn.recorder.lr_find
    print(f"suggested lr {suggestion:.3g} (lowest smoothed loss {found.smoothed.min():.4g} at lr "
          f"{10 * suggestion:.3g}, {len(found.lrs)} steps)", file=out, flush=True)
    if args.plot:
        learn.recorder.plot_lr_find(args.plot)
    return 0


# --------------------------------------------------------------------- info
def run_info(args) -> int:
    """``fastsgd info``: backends, versions, threading layer, CPU features."""
    import numba
    print("backends:")
    default = None
    for name, status in backends.available().items():
        if status is True and default is None:
            default = name
        print(f"  {name:<8} {'available' if status is True else f'unavailable ({status})'}")
    print(f"default backend: {os.environ.get('FASTSGD_BACKEND') or default}"
          f"{' (from FASTSGD_BACKEND)' if os.environ.get('FASTSGD_BACKEND') else ''}")
    print(f"fastsgd {_version()}, python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}")
    if backends.available().get("c") is True:
        from .backends import c_ext
        print(f"c backend: matmul kernel {c_ext.isa()}, threads: {c_ext.threads()}")
    if backends.available().get("numba") is True:
        nb = backends.get("numba")
        nb.matmul(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))  # starts the thread pool
        from .backends.numba_cpu import threading_layer
        print(f"numba threading layer: {threading_layer()}, threads: {numba.get_num_threads()}")
    from .bench.machine import cpu_summary
    cpu = cpu_summary()
    print(f"cpu: {cpu['name']}, {cpu['cores']} cores, features: {' '.join(cpu['features']) or 'none'}")
    return 0


# -------------------------------------------------------------------- bench
#: run_bench's options that are flags of the same name.
_BENCH_OPTIONS = ("kernels", "backends", "sizes", "epochs", "samples", "data", "budget")


def _flag_error(exc: ValueError) -> Exception:
    """``"sizes: ..."`` from the library becomes ``UsageError("--sizes: ...")``."""
    name, sep, rest = str(exc).partition(": ")
    return UsageError(f"--{name}: {rest}") if sep and name in _BENCH_OPTIONS else exc


def run_bench_command(args) -> int:
    """``fastsgd bench``: validate and time, print the table, write --json/--plot.

    Exit code 1 when a runner's result did not match the reference.
    """
    from . import bench
    options = {name: getattr(args, name) for name in _BENCH_OPTIONS}
    try:
        bench.parse_options(**options)
    except ValueError as exc:
        raise _flag_error(exc) from None
    rows = bench.run_bench(**options, json_path=args.json, plot_path=args.plot,
                           progress=not args.no_progress)
    bench.print_table(rows, bench.machine_info())
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
