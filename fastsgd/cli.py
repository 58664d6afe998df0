"""The ``fastsgd`` command: ``train`` a digit classifier, ``info`` on the backends.

Bad arguments and bad files end with a one-line error on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import os
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
    train.add_argument("--digits", type=_digits, default=[3, 7], metavar="D,D|all",
                       help="digits to classify (default: 3,7; 'all' = ten classes)")
    train.add_argument("--model", choices=["linear", "mlp"], default="mlp",
                       help="linear: one Linear layer; mlp: Linear layers with an activation "
                       "between each two (default)")
    train.add_argument("--hidden", type=_hidden, default=[30], metavar="N[,N...]",
                       help="hidden units of the mlp, one size per hidden layer "
                       "(default: 30; e.g. 256,128)")
    train.add_argument("--activation", choices=list(ACTIVATIONS), default="relu",
                       help="activation between the mlp's Linear layers (default: relu)")
    train.add_argument("--epochs", type=_positive_int, default=10, metavar="N",
                       help="passes over the training set (default: 10)")
    train.add_argument("--bs", type=_positive_int, default=64, metavar="N",
                       help="batch size (default: 64)")
    train.add_argument("--lr", type=_non_negative_float, default=None,
                       help=f"learning rate (default: {DEFAULT_LR['mnist_loss']} for two digits, "
                       f"{DEFAULT_LR['cross_entropy']} for more)")
    train.add_argument("--momentum", type=_non_negative_float, default=None,
                       help=f"SGD momentum in [0, 1] (default: {DEFAULT_MOMENTUM['mnist_loss']} "
                       f"for two digits, {DEFAULT_MOMENTUM['cross_entropy']} for more)")
    train.add_argument("--wd", type=_non_negative_float, default=0.0,
                       help="weight decay (default: 0)")
    train.add_argument("--schedule", choices=["constant", "cosine"], default="constant",
                       help="learning-rate schedule: constant (default) or cosine "
                       "(steps start large, then get smaller)")
    train.add_argument("--backend", default=None, choices=backends.names(),
                       help="kernel backend (default: $FASTSGD_BACKEND or the fastest available)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    train.add_argument("--json", metavar="PATH", help="write settings, history and accuracy as JSON "
                       "(- for stdout)")
    train.add_argument("--save", metavar="PATH", help="save the trained model (.npz)")
    train.add_argument("--quiet", action="store_true", help="print only the final accuracy")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--plot", metavar="PATH",
                       help="draw train/valid loss and accuracy per epoch as a PNG (needs matplotlib)")
    train.set_defaults(run=run_train)

    info = sub.add_parser("info", help="list backends, versions and CPU features",
                          description="Print each backend (available, or why not), the Numba "
                          "version and threading layer, and the CPU's features.")
    info.set_defaults(run=run_info)

    bench = sub.add_parser("bench", help="time every kernel on every backend against numpy and PyTorch",
                           description="Validate each kernel (and a training epoch) against the "
                           "numpy reference, then time it on every available backend and on "
                           "PyTorch when installed; print one table of medians, rates, % of the "
                           "machine's peak and speed-ups.")
    bench.add_argument("--kernels", metavar="K,K",
                       help="kernel names or patterns, e.g. matmul*,relu_forward,epoch "
                       "(default: every kernel and the epoch)")
    bench.add_argument("--backends", metavar="B,B",
                       help="backends to time, e.g. numba,torch; numpy, the baseline, always runs "
                       "(default: every available one)")
    bench.add_argument("--sizes", metavar="S,S",
                       help="batch sizes of the training shapes (e.g. 64,256) and/or small "
                       "(= 64,256) and large (1024^3 matmuls, 4M-element arrays); default: small,large")
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


def run_train(args) -> int:
    """``fastsgd train``: fit, print the table, write --save/--json/--plot.

    Their destinations are checked before training.  When one of them is ``-``
    (stdout), the table and the accuracy go to stderr instead.
    """
    outputs = _check_outputs(args)
    with contextlib.redirect_stdout(sys.stderr if files.STDOUT in outputs.values() else sys.stdout):
        learn, report = _fit(args)
    if args.save:
        learn.save(args.save)
    if args.json:
        files.write_json(args.json, report)
    if args.plot:
        from .plots import plot_history
        plot_history(learn.recorder.history, args.plot)
    return 0


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


def _fit(args):
    """Load the data, build and train the model; returns (learner, --json report or None)."""
    from . import Learner, DataLoaders, SGD, batch_accuracy, set_seed
    from .losses import cross_entropy, mnist_loss

    backend = backends.get(args.backend)
    name, train_x, train_y, valid_x, valid_y = _load_data(args)
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
    dls = DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=args.bs, seed=args.seed)
    learn = Learner(dls, model, loss, SGD(lr, momentum, args.wd), [batch_accuracy],
                    backend=backend, show=not args.quiet,
                    progress=False if args.no_progress else None)
    fused = learn.fused
    if not args.quiet:
        path = "fused" if fused is True else f"layer by layer: {fused}"
        print(f"{name}: digits {','.join(map(str, args.digits))}, {len(train_x)} train / "
              f"{len(valid_x)} valid, model {_describe(model)}, backend {backend.name} ({path})",
              flush=True)
    t0 = time.perf_counter()
    learn.fit(args.epochs, schedule=args.schedule)
    elapsed = time.perf_counter() - t0
    accuracy = learn.recorder.history[-1]["batch_accuracy"]
    print(f"accuracy {accuracy:.4f} after {args.epochs} epochs ({elapsed:.1f} s)")

    report = None
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("run", "command")}
        settings.update(lr=lr, momentum=momentum, backend=backend.name, data=args.data or "embedded",
                        n_train=len(train_x), n_valid=len(valid_x), fused=fused)
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


# --------------------------------------------------------------------- info
def cpu_summary() -> dict:
    """CPU name, core count and the SIMD features kernels care about."""
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    wanted = ["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "neon"]
    return {"name": binding.get_host_cpu_name(), "cores": os.cpu_count(),
            "features": [f for f in wanted if features.get(f)]}


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
    cpu = cpu_summary()
    print(f"cpu: {cpu['name']}, {cpu['cores']} cores, features: {' '.join(cpu['features']) or 'none'}")
    return 0


# -------------------------------------------------------------------- bench
def run_bench_command(args) -> int:
    """``fastsgd bench``: validate and time, print the table, write --json/--plot.

    Exit code 1 when a backend's result did not match the reference.
    """
    from . import bench
    rows = bench.run_bench(args.kernels, args.backends, args.sizes, json_path=args.json,
                           plot_path=args.plot, progress=not args.no_progress)
    bench.print_table(rows, bench.machine_info())
    return 0 if all(row["status"] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
