"""The argument parser of ``fastsgd``: every command's options, declared in one place.

Bad values end in a one-line ``UsageError`` naming the flag (see ``Parser``); each
command's ``run`` function is its module's (``train``, ``lr_find``, ``predict``, ``info``).
"""
from __future__ import annotations

import argparse

import numpy as np

from .. import backends
from .info import run_bench_command, run_info, run_warmup
from .lr_find import run_lr_find
from .options import (
    ACTIVATIONS,
    CLASS_NAMES,
    DEFAULT_LR,
    DEFAULT_MOMENTUM,
    TRAIN_DEFAULTS,
    UsageError,
    version,
)
from .predict import run_interpret, run_predict
from .train import run_train


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message):
        raise UsageError(message, prog=self.prog)


# ------------------------------------------------------------- value types
def _parsed(text, convert, expected: str):
    """``convert(text)``; ``ArgumentTypeError("EXPECTED, got 'TEXT'")`` when it cannot."""
    try:
        return convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}") from None


def non_empty(text):
    """A file or folder name, or another text value: anything but the empty string."""
    if not text:
        raise argparse.ArgumentTypeError("expected a name, got an empty string")
    return text


def _int_list(text) -> list[int]:
    return [int(n) for n in text.split(",")]


def positive_int(text):
    """``--flag N``: an integer >= 1."""
    value = _parsed(text, int, "expected a positive integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text):
    """``--flag X``: a finite number >= 0."""
    value = _parsed(text, float, "expected a number")
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text}")
    return value


def fraction(text):
    """``--valid-pct 0.2``: a number strictly between 0 and 1."""
    value = _parsed(text, float, "expected a fraction in (0, 1)")
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text}")
    return value


def hidden_sizes(text):
    """``--hidden 256,128``: one positive size per hidden layer."""
    expected = "expected hidden sizes like 30 or 256,128"
    sizes = _parsed(text, _int_list, expected)
    if any(n < 1 for n in sizes):
        raise argparse.ArgumentTypeError(f"{expected}, got {text!r}")
    return sizes


def digit_list(text):
    """``--digits 3,7`` or ``all``: two or more distinct digits 0-9."""
    if text == "all":
        return list(range(10))
    digits = _parsed(text, _int_list, "expected digits like 3,7 or 'all'")
    if len(digits) < 2 or len(set(digits)) != len(digits) or not all(0 <= d <= 9 for d in digits):
        raise argparse.ArgumentTypeError(f"expected two or more distinct digits 0-9, got {text!r}")
    return digits


# ------------------------------------------------------------ shared options
def _add_backend_option(parser) -> None:
    parser.add_argument("--backend", default=None, choices=backends.names(),
                        help="kernel backend (default: $FASTSGD_BACKEND or the fastest available)")


def _add_strings(parser, *rows: tuple[str, str, str]) -> None:
    """Arguments taken as the text given (file and folder names, comma lists): each row is
    (flag, or a positional's name; metavar; help)."""
    for name, metavar, text in rows:
        parser.add_argument(name, type=non_empty, metavar=metavar, help=text)


def _add_switches(parser, helps: dict[str, str]) -> None:
    """On/off flags: ``helps`` maps each flag to its help."""
    for flag, text in helps.items():
        parser.add_argument(flag, action="store_true", help=text)


def _add_counts(parser, rows: dict[str, tuple[int, str]]) -> None:
    """Positive whole numbers N: ``rows`` maps each flag to (default, help)."""
    for flag, (default, text) in rows.items():
        parser.add_argument(flag, type=positive_int, default=default, metavar="N", help=text)


_NO_PROGRESS = {"--no-progress": "no progress bar"}


def _add_model_options(parser, defaults: dict) -> None:
    """The data, model and optimiser options that train and lr-find share.

    ``defaults``: each option's default by name (train passes ``None`` for all, so
    that ``--resume`` can tell which were given).
    """
    parser.add_argument("--data", type=non_empty, metavar="DIR", default=defaults["data"],
                        help="folder of MNIST-format IDX files (train-*/t10k-*); "
                        "default: the embedded 5,000-image MNIST subset")
    _add_valid_pct(parser, defaults["valid_pct"])
    parser.add_argument("--digits", type=digit_list, default=defaults["digits"],
                        metavar="D,D|all",
                        help="digits to classify (default: 3,7; 'all' = ten classes)")
    parser.add_argument("--model", choices=["linear", "mlp"], default=defaults["model"],
                        help="linear: one Linear layer; mlp: Linear layers with an activation "
                        "between each two (default)")
    parser.add_argument("--hidden", type=hidden_sizes, default=defaults["hidden"],
                        metavar="N[,N...]", help="hidden units of the mlp, one size per hidden "
                        "layer (default: 30; e.g. 256,128)")
    parser.add_argument("--activation", choices=list(ACTIVATIONS), default=defaults["activation"],
                        help="activation between the mlp's Linear layers (default: relu)")
    parser.add_argument("--bs", type=positive_int, default=defaults["bs"], metavar="N",
                        help="batch size (default: 64)")
    parser.add_argument("--momentum", type=non_negative_float, default=defaults["momentum"],
                        help=f"SGD momentum in [0, 1] (default: {DEFAULT_MOMENTUM['mnist_loss']} "
                        f"for two digits, {DEFAULT_MOMENTUM['cross_entropy']} for more)")
    parser.add_argument("--wd", type=non_negative_float, default=defaults["wd"],
                        help="weight decay (default: 0)")
    _add_backend_option(parser)


def _add_valid_pct(parser, default) -> None:
    parser.add_argument("--valid-pct", type=fraction, default=default, metavar="P",
                        help="with --data: validate on the last P of its training images (in "
                        "file order) instead of its t10k files, train on the rest; a folder "
                        "with only the t10k files is split so (0.2: 8,000 train / 2,000 "
                        "valid of MNIST's test set)")


def _add_naming_options(parser) -> None:
    """--classes and --backend: how predict and interpret name and run a model's classes."""
    parser.add_argument("--classes", choices=CLASS_NAMES, default="auto",
                        help="how to name the labels 0..9: as they are, or Fashion-MNIST's names "
                        "(default auto: Fashion-MNIST's when the data folder's name or its "
                        "parent's contains 'fashion')")
    _add_backend_option(parser)


#: The MODEL argument of predict and interpret.
_MODEL = ("model", "MODEL", "model file written by train --save")


# --------------------------------------------------------------- commands
#: name -> (one-line help, description) of each command, in the order ``--help`` lists them.
_COMMANDS = {
    "train": (
        "train a digit classifier and report accuracy",
        "Train the book's binary model (two digits, one output, mnist_loss) or a softmax model "
        "(more digits, cross-entropy)."),
    "lr-find": (
        "suggest a learning rate (fastai's lr_find)",
        "Train a few steps with a learning rate growing exponentially from 1e-7 to 10, stop "
        "when the loss diverges, and print the suggested rate: the one at the lowest smoothed "
        "loss, divided by 10.  Nothing is saved; the model starts as train's does."),
    "predict": (
        "classify images with a saved model",
        "Print the predicted class of each image, one per line (with --proba, each class's "
        "probability too)."),
    "interpret": (
        "confusion matrix and top losses of a saved model",
        "Classify the validation images (t10k) of a data folder with a saved model; print the "
        "accuracy, the confusion matrix and the images with the highest loss; --plot draws "
        "both as PNGs."),
    "info": (
        "list backends, versions and CPU features",
        "Print each backend (available, or why not), the Numba version and threading layer, "
        "and the CPU's features."),
    "warmup": (
        "compile the numba kernels once, into numba's disk cache",
        "Compile every numba kernel and the fused epoch, or load them from numba's disk cache, "
        "so that later runs start without compiling; print where the cache lives."),
    "bench": (
        "time every kernel and a training epoch against numpy, PyTorch and JAX",
        "Validate each kernel against the numpy reference, then time it on every available "
        "backend (and PyTorch when installed); then train one epoch on fastsgd's fused path "
        "and on each installed peer (PyTorch eager, torch.compile, jax.jit, jax.lax.scan), "
        "each in its own process, their timed epochs taken in turn, validated against "
        "numpy.  Prints medians with their "
        "spread, rates, % of the machine's measured peak and speed-ups."),
}


def _command(sub, name: str, run):
    """The subparser of command ``name`` (help and description from ``_COMMANDS``), which
    runs ``run(args)``."""
    summary, description = _COMMANDS[name]
    parser = sub.add_parser(name, help=summary, description=description)
    parser.set_defaults(run=run)
    return parser


def _add_train(sub) -> None:
    train = _command(sub, "train", run_train)
    _add_model_options(train, dict.fromkeys(TRAIN_DEFAULTS))
    _add_counts(train, {"--epochs": (10, "passes over the training set (default: 10)")})
    train.add_argument("--lr", type=non_negative_float, default=None,
                       help=f"learning rate (default: {DEFAULT_LR['mnist_loss']} for two digits, "
                       f"{DEFAULT_LR['cross_entropy']} for more)")
    train.add_argument("--schedule", choices=["constant", "cosine"], default=None,
                       help="learning-rate schedule: constant (default) or cosine "
                       "(steps start large, then get smaller; a resumed run starts a new "
                       "curve over its --epochs)")
    train.add_argument("--seed", type=int, default=None,
                       help="random seed (default: 0; with --resume, a new shuffling sequence "
                       "instead of the saved one)")
    _add_strings(train,
                 ("--json", "PATH", "write settings, history and accuracy as JSON (- for stdout)"),
                 ("--save", "PATH", "save the trained model as a checkpoint (.npz: weights, "
                                    "classes, optimiser and shuffling state, history)"),
                 ("--resume", "PATH", "continue training a checkpoint written by --save for "
                                      "--epochs more epochs, with its settings unless given (its "
                                      "model and digits are fixed)"),
                 ("--plot", "PATH", "draw train/valid loss and accuracy per epoch as a PNG "
                                    "(needs matplotlib)"))
    _add_switches(train, {
        "--quiet": "print only the final accuracy",
        **_NO_PROGRESS,
        "--distributed": "data-parallel training over MPI ranks: run under mpiexec -n K (needs "
                         "the mpi extra); --bs is the global batch size",
    })
    train.add_argument("--sync-every", type=positive_int, default=None, metavar="K",
                       help="with --distributed: local SGD, averaging weights every K steps "
                       "(default: exact synchronous SGD)")


def _add_lr_find(sub) -> None:
    lr_find = _command(sub, "lr-find", run_lr_find)
    _add_model_options(lr_find, dict.fromkeys(TRAIN_DEFAULTS))   # filled in by run_lr_find
    _add_counts(lr_find, {"--num-it": (100, "training steps to try (default: 100; at least 2)")})
    lr_find.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_strings(lr_find, ("--plot", "PATH", "draw the loss against the learning rate as a PNG "
                                             "(needs matplotlib)"))
    _add_switches(lr_find, _NO_PROGRESS)


def _add_predict_and_interpret(sub) -> None:
    predict = _command(sub, "predict", run_predict)
    _add_strings(predict, _MODEL,
                 ("images", "IMAGES", "images: an IDX file (.gz or not; uint8 pixels, divided by "
                                      "255) or a .npy array (uint8 0..255, or floats in [0, 1]), "
                                      "shaped (N, 28, 28), (N, 784) or (28, 28)"))
    _add_switches(predict, {"--proba": "print a header of class names, then each image's label "
                                       "and its probability of each class"})
    _add_strings(predict, ("--json", "PATH", "write classes, labels and probabilities as JSON "
                                             "(- for stdout)"))
    _add_naming_options(predict)

    interpret = _command(sub, "interpret", run_interpret)
    _add_strings(interpret, _MODEL,
                 ("--data", "DIR", "folder of MNIST-format IDX files (default: the folder the "
                                   "model was trained on, else the embedded MNIST subset)"))
    _add_valid_pct(interpret, None)
    interpret.add_argument("--digits", type=digit_list, default=None, metavar="D,D|all",
                           help="the digits the model's outputs are, in order (default: the "
                           "model's classes; needed for two-digit files of weights alone)")
    _add_strings(interpret, ("--plot", "PATH", "draw the confusion matrix as a PNG at PATH and "
                                               "the top losses at PATH's name + '-top-losses' "
                                               "(needs matplotlib)"))
    _add_counts(interpret, {"--top": (9, "how many of the highest-loss images to list and draw "
                                         "(default: 9)")})
    _add_naming_options(interpret)


def _add_info_and_bench(sub) -> None:
    _command(sub, "info", run_info)
    _command(sub, "warmup", run_warmup)

    bench = _command(sub, "bench", run_bench_command)
    _add_strings(bench,
                 ("--kernels", "K,K", "kernel names or patterns, e.g. matmul*,relu_forward,epoch "
                                      "(default: every kernel and the epoch)"),
                 ("--backends", "B,B", "runners, e.g. numba,c,torch,jax.scan; numpy, the "
                                       "baseline, always runs (default: every available one "
                                       "but the compiled peers torch.compile, jax.jit and "
                                       "jax.scan, which --full adds)"),
                 ("--sizes", "S,S", "batch sizes of the training shapes (e.g. 64,256) and/or "
                                    "small (= 64,256) and large (1024^3 matmuls, 4M-element "
                                    "arrays); default: 64 (--full: small,large)"))
    _add_counts(bench, {
        "--epochs": (None, "timed epochs per epoch row, after a warm-up epoch (default: 3; "
                           "--full: 5)"),
        "--samples": (None, "training samples of an epoch (default: 10000; --full: 60000)"),
    })
    _add_switches(bench, {"--full": "the whole coverage, about 4 minutes on 2 cores: both "
                                    "batch sizes, the large shapes, 5 epochs of 60,000 samples, "
                                    "the compiled peers (the default, under a minute: batch 64, "
                                    "3 epochs of 10,000)"})
    bench.add_argument("--data", type=non_empty, default="random", metavar="DIR",
                       help="the epoch's samples: 'random' (default) or a folder of MNIST-format "
                       "IDX files, e.g. /usr/share/datasets/fashion-mnist")
    bench.add_argument("--budget", type=non_negative_float, default=0.05, metavar="S",
                       help="seconds of timing per kernel row (default: 0.05)")
    _add_strings(bench,
                 ("--json", "PATH", "write machine info and one row per kernel x shape x backend "
                                    "as JSON"),
                 ("--plot", "PATH", "draw the speed-ups over numpy as a PNG bar chart (needs "
                                    "matplotlib)"))
    _add_switches(bench, _NO_PROGRESS)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastsgd`` command."""
    parser = Parser(prog="fastsgd", description="Train MNIST digit classifiers with "
                    "hand-written SGD kernels, and inspect the kernel backends.")
    parser.add_argument("--version", action="version", version=f"fastsgd {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for add in (_add_train, _add_lr_find, _add_predict_and_interpret, _add_info_and_bench):
        add(sub)
    return parser
