"""What train and lr-find build alike: the data, the model, the loss and the SGD rates."""
from __future__ import annotations

from typing import NamedTuple

from .. import backends
from .options import ACTIVATIONS, DEFAULT_LR, DEFAULT_MOMENTUM, UsageError


class Setup(NamedTuple):
    """A run as the options describe it, ready for a ``Learner``."""

    name: str
    backend: backends.Backend
    dls: object
    model: object
    loss: object
    lr: float
    momentum: float


def load_data(args):
    """(dataset name, train_x, train_y, valid_x, valid_y) of --data's --digits."""
    from .. import data
    if args.valid_pct is not None and not args.data:
        raise UsageError("--valid-pct: needs --data DIR (the embedded set has its own split)")
    dataset = data.load_mnist(args.data, args.valid_pct) if args.data else data.load_embedded()
    train_x, train_y = data.select_digits(dataset.train_x, dataset.train_y, args.digits)
    valid_x, valid_y = data.select_digits(dataset.valid_x, dataset.valid_y, args.digits)
    for part, x in (("training", train_x), ("validation", valid_x)):
        if len(x) == 0:
            raise UsageError(f"--digits: the {part} set of {dataset.name} holds none of "
                             f"{','.join(map(str, args.digits))}")
    return dataset.name, train_x, train_y, valid_x, valid_y


def prepare(args, lr=None, dist=None, resumed=None) -> Setup:
    """Load the data, seed, build the model and the data loaders (``dist``'s with
    --distributed); ``lr`` and --momentum default per loss and are checked.
    ``resumed``: the architecture of the --resume checkpoint, which the options' model
    must match (checked before the model is built)."""
    from .. import DataLoaders, set_seed
    from ..losses import cross_entropy, mnist_loss

    backend = backends.get(args.backend)
    name, train_x, train_y, valid_x, valid_y = dist.load_data(args) if dist else load_data(args)
    binary = len(args.digits) == 2
    loss = mnist_loss if binary else cross_entropy
    lr = lr if lr is not None else DEFAULT_LR[loss.__name__]
    if lr <= 0:
        raise UsageError(f"--lr: expected a positive learning rate, got {lr}")
    momentum = args.momentum if args.momentum is not None else DEFAULT_MOMENTUM[loss.__name__]
    if momentum > 1:
        raise UsageError(f"--momentum: expected a value in [0, 1], got {momentum}")
    set_seed(args.seed)
    n_in, n_out = train_x.shape[1], 1 if binary else len(args.digits)
    if resumed is not None and resumed != model_config(args, n_in, n_out):
        raise UsageError(f"--resume: {args.resume} holds the model "
                         f"{_describe_config(resumed)}, but its settings on this data "
                         f"describe {_describe_config(model_config(args, n_in, n_out))}")
    model = build_model(args, n_in, n_out)
    make_dls = dist.dataloaders if dist else DataLoaders.from_arrays
    dls = make_dls(train_x, train_y, valid_x, valid_y, bs=args.bs, seed=args.seed)
    return Setup(name, backend, dls, model, loss, lr, momentum)


def _sizes(args, n_in, n_out) -> list[int]:
    return [n_in, n_out] if args.model == "linear" else [n_in, *args.hidden, n_out]


def model_config(args, n_in, n_out) -> dict:
    """The architecture (``Sequential.config()``) that --model, --hidden and --activation
    describe, without building it."""
    sizes = _sizes(args, n_in, n_out)
    stack = []
    for i in range(len(sizes) - 1):
        stack.append({"type": "Linear", "n_in": sizes[i], "n_out": sizes[i + 1]})
        if i < len(sizes) - 2:
            stack.append({"type": ACTIVATIONS[args.activation]})
    return {"type": "Sequential", "layers": stack}


def _describe_config(config) -> str:
    linears = [c for c in config.get("layers", []) if c.get("type") == "Linear"]
    return "-".join(str(n) for n in [linears[0]["n_in"], *(c["n_out"] for c in linears)]) \
        if linears else str(config)[:80]


def build_model(args, n_in, n_out):
    """The Sequential that --model, --hidden and --activation describe; its size is
    checked against ``layers.max_parameters()`` before anything is allocated."""
    from .. import layers
    sizes = _sizes(args, n_in, n_out)
    try:
        layers.check_parameter_count(layers.count_parameters(sizes), "the model "
                                     + "-".join(map(str, sizes)))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return layers.model_from_config(model_config(args, n_in, n_out))


def describe(model) -> str:
    """E.g. ``784-256-128-10 (relu)`` or ``784-1 (linear)``."""
    from ..layers import Linear
    linears = [layer for layer in model.layers if isinstance(layer, Linear)]
    sizes = "-".join(str(n) for n in [linears[0].n_in, *(layer.n_out for layer in linears)])
    kinds = {type(layer).__name__.lower() for layer in model.layers} - {"linear"}
    return f"{sizes} ({', '.join(sorted(kinds)) or 'linear'})"


def headline(name: str, args) -> str:
    """``"<dataset>: digits 3,7"``, the start of the line train and lr-find print first."""
    return f"{name}: digits {','.join(map(str, args.digits))}"
