"""What the commands share: defaults, one-line usage errors, checks of values and outputs."""
from __future__ import annotations

from .. import files
from ..backends import program

#: Defaults per loss, measured on MNIST: mnist_loss has small gradients (sigmoid
#: slope / B) and does best with the book's plain SGD at a large rate; the softmax
#: model trains fastest with momentum.
DEFAULT_LR = {"mnist_loss": 1.0, "cross_entropy": 0.1}
DEFAULT_MOMENTUM = {"mnist_loss": 0.0, "cross_entropy": 0.9}
#: ``--activation`` names -> the layer class (imported when training).
ACTIVATIONS = {kind.name: kind.layer for kind in program.activations()}
EXIT_USAGE = 2
#: ``fastsgd train``'s options that a checkpoint records, with their defaults for a new
#: run (lr and momentum: per loss, above; backend: $FASTSGD_BACKEND or the fastest).
#: ``--resume`` takes the checkpoint's value of each one not given.
TRAIN_DEFAULTS = {"data": None, "digits": [3, 7], "model": "mlp", "hidden": [30],
                  "activation": "relu", "bs": 64, "lr": None, "momentum": None, "wd": 0.0,
                  "schedule": "constant", "backend": None, "seed": 0, "valid_pct": None}
#: Settings that checkpoints of earlier versions lack: a missing one reads as its default.
ADDED_SETTINGS = ("valid_pct",)
#: The options that fix the model and its classes: a resumed run cannot change them.
FIXED_BY_CHECKPOINT = ("digits", "model", "hidden", "activation")
#: ``--classes`` of predict and interpret: how to name the label values 0..9.
CLASS_NAMES = ("auto", "labels", "fashion")


class UsageError(Exception):
    """A bad argument or file, reported in one line with exit code 2; ``prog`` is the
    command it is reported for (None: the one being run)."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


def is_int(value) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_digit_list(values) -> bool:
    """Whether every value is an integer label 0..9."""
    return all(is_int(c) and 0 <= c <= 9 for c in values)


def version() -> str:
    """fastsgd's version string."""
    from .. import __version__
    return __version__


def one_line(exc) -> str:
    """The exception's message on one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def refuse_options_that_do_not_apply(args, given: set[str]) -> None:
    """--hidden and --activation describe an mlp: given with --model linear, a UsageError."""
    if args.model == "linear":
        for key in ("hidden", "activation"):
            if key in given:
                raise UsageError(f"--{key}: does not apply to --model linear (one Linear "
                                 f"layer, no hidden layers); drop it or use --model mlp")


def write_output(path, write, out, quiet: bool = False) -> None:
    """``write(path)``, then (unless ``quiet`` or ``path`` is standard output) one line on
    ``out``: ``wrote PATH``, with the folders it created (missing ones are created)."""
    created = files.missing_folders(path)
    write(path)
    if not quiet:
        say_written(path, created, out)


def say_written(path, created, out) -> None:
    """``wrote PATH`` on ``out``, with the last of the folders ``created`` for it; nothing
    for standard output."""
    if not files.is_stdout(path):
        made = f" (created the folder {created[-1]})" if created else ""
        print(f"wrote {path}{made}", file=out, flush=True)


def check_output(option: str, path) -> None:
    """``UsageError("OPTION: why")`` unless ``path`` can be written (see ``files.check_writable``)."""
    try:
        files.check_writable(path)
    except OSError as exc:
        raise UsageError(f"{option}: {exc}") from None


def check_plot(option: str, path) -> None:
    """A PNG to draw at ``path``: matplotlib must import and ``path`` be writable."""
    from ..plots import require_matplotlib
    require_matplotlib()
    check_output(option, path)
