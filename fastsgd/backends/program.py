"""The layer program: how a model reaches a backend's fused ``train_epoch`` kernel.

A program is a table with one row per layer and one code for the loss; the
parameters of every layer live in one flat block (as llm.c points its tensors
into one allocation), and so do their gradients and velocities.

    row = (KIND, N_IN, N_OUT, PARAM)      int64, one per layer, in forward order

    KIND   LINEAR, RELU, SIGMOID or TANH
    N_IN   features in;  N_OUT features out (equal for an activation)
    PARAM  LINEAR: offset of w (N_IN, N_OUT) in the block, b (N_OUT,) follows it;
           an activation: -1

Each step of an epoch, for the rows ``order[s*bs : s*bs + B]`` of the data:
    a[0] = x[rows];  a[l+1] = layer_l(a[l])                       forward
    loss, d[L] = loss and its gradient w.r.t. a[L]                LOSS_*
    for l = L-1 .. 0:                                             backward
        LINEAR: grad w = a[l].T @ d[l+1];  grad b = sum_rows d[l+1]
                d[l] = d[l+1] @ w.T              (when l is past the first LINEAR)
        RELU:   d[l] = d[l+1] * (a[l] > 0)       (input of the layer)
        SIGMOID d[l] = d[l+1] * a[l+1] * (1 - a[l+1])   (output of the layer)
        TANH:   d[l] = d[l+1] * (1 - a[l+1]^2)
    sgd_update(params, grads, lrs[s], momentum, weight_decay, velocities)   the whole block

``check_layer_table`` is the one statement of what a valid table is; the
contract and the C module both call it before any compiled code runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["KIND", "N_IN", "N_OUT", "PARAM", "LINEAR", "RELU", "SIGMOID", "TANH",
           "LAYER_KINDS", "MNIST_LOSS", "CROSS_ENTROPY", "MSE", "LOSS_KINDS", "LayerKind",
           "LossKind", "LAYERS", "LOSSES", "register_layer", "register_loss", "unregister",
           "layer_kind", "loss_kind", "activations", "BUILT_IN_LAYERS", "BUILT_IN_LOSSES",
           "check_compiled_kinds", "check_layer_table", "layer_table",
           "widths", "scratch_floats"]

#: Columns of the layer table.
KIND, N_IN, N_OUT, PARAM = 0, 1, 2, 3


# ------------------------------------------------------------------ registry
@dataclass(frozen=True)
class LayerKind:
    """One kind of layer a program row can hold; every table of kinds is derived from these.

    ``code`` is the row's KIND (C: ``FS_<NAME>`` in ``csrc/kernels.h``); ``layer`` the
    name of its ``fastsgd.layers`` class; ``forward`` / ``backward`` its contract
    kernels, ``forward(x, out)`` and ``backward(saved, dy, dx)``; ``saves`` what the
    backward reads: "x" the layer's input, "y" its output, "params" (LINEAR) its weights.
    """

    name: str
    code: int
    layer: str
    forward: str
    backward: str
    saves: str


@dataclass(frozen=True)
class LossKind:
    """One kind of fused loss: ``forward(preds, targets) -> mean`` and
    ``backward(preds, targets, dpreds)`` its contract kernels; ``targets`` what it is
    trained against: "binary" (0/1 floats, one output), "labels" (int64 class labels in
    [0, O)) or "real" (floats shaped like the output).  Losses other than "labels" take
    the output and targets flattened."""

    name: str
    code: int
    forward: str
    backward: str
    targets: str


#: Layer kinds, by code.
LINEAR, RELU, SIGMOID, TANH = 0, 1, 2, 3
#: Loss kinds, by code: mnist_loss (one output, 0/1 float targets), cross_entropy (int64
#: labels in [0, O)), mse (float targets shaped like the output).
MNIST_LOSS, CROSS_ENTROPY, MSE = 0, 1, 2

#: Every layer kind by code: the one record of each (``register_layer`` adds one).
LAYERS: dict[int, LayerKind] = {}
#: Every loss kind by code (``register_loss`` adds one).
LOSSES: dict[int, LossKind] = {}
#: Names -> codes, derived from ``LAYERS`` and ``LOSSES``.
LAYER_KINDS: dict[str, int] = {}
LOSS_KINDS: dict[str, int] = {}


def register_layer(kind: LayerKind) -> LayerKind:
    """Add a layer kind to the registry (its name and code must be new); returns it."""
    if kind.saves not in ("x", "y", "params"):
        raise ValueError(f"saves: expected 'x', 'y' or 'params', got {kind.saves!r}")
    _register(kind, LAYERS, LAYER_KINDS)
    return kind


def register_loss(kind: LossKind) -> LossKind:
    """Add a loss kind to the registry (its name and code must be new); returns it."""
    if kind.targets not in TARGETS:
        raise ValueError(f"targets: expected one of {TARGETS}, got {kind.targets!r}")
    _register(kind, LOSSES, LOSS_KINDS)
    return kind


def unregister(kind) -> None:
    """Remove a kind ``register_layer`` or ``register_loss`` added."""
    by_code, by_name = (LAYERS, LAYER_KINDS) if isinstance(kind, LayerKind) else (LOSSES, LOSS_KINDS)
    if by_code.get(kind.code) is kind:
        del by_code[kind.code], by_name[kind.name]


def _register(kind, by_code, by_name):
    if kind.code in by_code or kind.name in by_name:
        raise ValueError(f"kind {kind.name!r} (code {kind.code}): that name or code is "
                         f"taken, by {by_code.get(kind.code) or by_name[kind.name]}")
    if not isinstance(kind.code, int) or kind.code < 0:
        raise ValueError(f"code: expected an integer >= 0, got {kind.code!r}")
    by_code[kind.code] = kind
    by_name[kind.name] = kind.code


#: What a loss may be trained against (``LossKind.targets``).
TARGETS = ("binary", "labels", "real")

for _kind in (LayerKind("linear", LINEAR, "Linear", "linear_forward", "linear_backward", "params"),
              LayerKind("relu", RELU, "ReLU", "relu_forward", "relu_backward", "x"),
              LayerKind("sigmoid", SIGMOID, "Sigmoid", "sigmoid_forward", "sigmoid_backward", "y"),
              LayerKind("tanh", TANH, "Tanh", "tanh_forward", "tanh_backward", "y")):
    register_layer(_kind)
for _kind in (LossKind("mnist_loss", MNIST_LOSS, "mnist_loss_forward", "mnist_loss_backward",
                       "binary"),
              LossKind("cross_entropy", CROSS_ENTROPY, "cross_entropy_forward",
                       "cross_entropy_backward", "labels"),
              LossKind("mse", MSE, "mse_forward", "mse_backward", "real")):
    register_loss(_kind)
del _kind

#: The kinds above, which every backend's compiled fused loop implements; a kind
#: registered later runs fused on the NumPy reference until a backend compiles it.
BUILT_IN_LAYERS, BUILT_IN_LOSSES = frozenset(LAYERS), frozenset(LOSSES)


def check_compiled_kinds(layers, loss_kind, backend, layer_codes=BUILT_IN_LAYERS,
                         loss_codes=BUILT_IN_LOSSES) -> None:
    """Refuse (``ValueError``) a table row or loss of a kind ``backend``'s compiled loop
    lacks: its codes are ``layer_codes`` and ``loss_codes``."""
    rows = np.flatnonzero(~np.isin(layers[:, KIND], sorted(layer_codes)))
    if rows.size:
        raise ValueError(f"layers[{rows[0]}]: kind {layers[rows[0], KIND]} is not compiled into "
                         f"the {backend} backend, which runs {sorted(layer_codes)}")
    if loss_kind not in loss_codes:
        raise ValueError(f"loss_kind: expected one of {sorted(loss_codes)}, the kinds compiled "
                         f"into the {backend} backend; got {loss_kind!r}")


def layer_kind(name: str) -> LayerKind:
    """The record of the layer kind called ``name`` (``KeyError`` naming the known ones)."""
    try:
        return LAYERS[LAYER_KINDS[name]]
    except KeyError:
        raise KeyError(f"unknown layer kind {name!r}; expected one of {list(LAYER_KINDS)}") from None


def loss_kind(name: str) -> LossKind:
    """The record of the loss kind called ``name`` (``KeyError`` naming the known ones)."""
    try:
        return LOSSES[LOSS_KINDS[name]]
    except KeyError:
        raise KeyError(f"unknown loss kind {name!r}; expected one of {list(LOSS_KINDS)}") from None


def activations() -> list[LayerKind]:
    """The parameter-free kinds (every one but LINEAR), in code order."""
    return [kind for code, kind in sorted(LAYERS.items()) if kind.saves != "params"]


def layer_table(layers) -> tuple[np.ndarray, int]:
    """The table for ``layers``, a list of ``(kind name, n_in, n_out)``, and the block size.

    Parameters are laid out in layer order: each LINEAR's w then b.
    """
    rows, offset = [], 0
    for name, n_in, n_out in layers:
        kind = layer_kind(name).code
        if kind == LINEAR:
            rows.append((kind, n_in, n_out, offset))
            offset += n_in * n_out + n_out
        else:
            rows.append((kind, n_in, n_out, -1))
    return np.array(rows, np.int64).reshape(len(rows), 4), offset


def check_layer_table(layers, n_params: int) -> tuple[int, int]:
    """Check that ``layers`` is a valid program for a block of ``n_params`` floats.

    Valid: an int64 C-contiguous (L, 4) ndarray, L >= 1, known kinds, sizes >= 1
    chaining from layer to layer, activations keeping their width, at least one
    LINEAR, and every LINEAR's w and b inside ``[0, n_params)``.  Returns
    ``(n_in, n_out)`` of the whole program; raises ``TypeError`` / ``ValueError``
    naming the row and column otherwise.
    """
    if not isinstance(layers, np.ndarray) or layers.dtype != np.int64:
        raise TypeError(f"layers: expected an int64 numpy.ndarray, got "
                        f"{getattr(layers, 'dtype', type(layers).__name__)}")
    if layers.ndim != 2 or layers.shape[1] != 4 or layers.shape[0] < 1:
        raise ValueError(f"layers: expected shape (L, 4) with L >= 1, got {layers.shape}")
    if not layers.flags.c_contiguous:
        raise ValueError("layers: expected a C-contiguous array")
    kinds = layers[:, KIND]
    known = sorted(LAYERS)
    unknown = ~np.isin(kinds, known)
    if unknown.any():
        row = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"layers[{row}]: unknown kind {kinds[row]}; expected one of {known}")
    if (layers[:, N_IN] < 1).any() or (layers[:, N_OUT] < 1).any():
        row = int(np.flatnonzero((layers[:, N_IN] < 1) | (layers[:, N_OUT] < 1))[0])
        raise ValueError(f"layers[{row}]: sizes must be >= 1, got {tuple(layers[row, 1:3])}")
    if not (kinds == LINEAR).any():
        raise ValueError("layers: expected at least one LINEAR layer (nothing to train)")
    n_params = int(n_params)
    for row, (kind, n_in, n_out, param) in enumerate(layers.tolist()):
        if row and n_in != layers[row - 1, N_OUT]:
            raise ValueError(f"layers[{row}]: n_in is {n_in} but the layer before gives "
                             f"{layers[row - 1, N_OUT]}; expected them equal")
        if kind == LINEAR:
            end = param + n_in * n_out + n_out
            if param < 0 or end > n_params:
                raise ValueError(f"layers[{row}]: w and b span [{param}, {end}) but the "
                                 f"parameter block holds {n_params} floats")
        elif n_in != n_out:
            raise ValueError(f"layers[{row}]: an activation keeps its width; got n_in "
                             f"{n_in}, n_out {n_out}")
    return int(layers[0, N_IN]), int(layers[-1, N_OUT])


def widths(layers) -> list[int]:
    """Widths of the activations a[0] .. a[L] of a (checked) table."""
    return [int(layers[0, N_IN]), *(int(n) for n in layers[:, N_OUT])]


def scratch_floats(layers, bs: int) -> int:
    """Floats a fused epoch needs for a[0..L] and d[0..L] at batch size ``bs``."""
    return 2 * bs * sum(widths(layers))


def check_epoch_apart(layers, x, targets, order, lrs, params, grads, velocities, losses):
    """Refuse a ``train_epoch`` whose written blocks (params, grads, velocities, losses)
    share memory with what it reads (the table, x, targets, order, lrs) or
    with each other, of whatever dtype: the epoch would index memory with what it wrote.
    Host arrays; ``ValueError`` naming both."""
    from .spec import check_host_apart  # spec's signatures are derived from this module
    check_host_apart([("params", params), ("grads", grads), ("velocities", velocities),
                      ("losses", losses)],
                     [("layers", layers), ("x", x), ("targets", targets), ("order", order),
                      ("lrs", lrs)])
