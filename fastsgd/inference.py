"""From a trained model's raw outputs to what people use: labels, probabilities, losses.

    x = as_inputs(images, model.n_in)            # (N, 784), (N, 28, 28) or (28, 28) -> (N, 784)
    x = as_inputs(images, 784, pixels=True)      # uint8 0..255 or floats in [0, 1] -> [0, 1]
    raw = raw_outputs(model, x)                   # (N, outputs)
    probabilities(raw, "labels")                  # softmax; sigmoid for one output
    decode(raw, "binary", [3, 7])                 # class names

The kind of targets (``Loss.targets``) says what the outputs mean: ``"binary"``,
one output whose sigmoid is the probability of ``classes[0]`` (the target 1.0, as
the book's 3 in 3-vs-7); ``"labels"``, one score per class; ``"real"``, regression
outputs, which have no classes.  Columns of probabilities follow the class order,
so for a binary model they are ``[P(classes[0]), P(classes[1])] = [p, 1 - p]``.
"""
from __future__ import annotations

import numpy as np

from .backends.arrays import host_all_finite

__all__ = ["as_inputs", "scale_pixels", "raw_outputs", "probabilities", "class_indices", "decode",
           "default_classes", "check_classes", "sample_losses", "confusion_matrix"]

_TARGET_KINDS = ("binary", "labels", "real")


def scale_pixels(x, name: str = "x") -> np.ndarray:
    """Pixels as float32 in [0, 1], the shape kept: uint8 0..255 divided by 255, floats
    checked to lie in [0, 1]; anything else a ValueError naming ``name``.  The one rule
    of ``fastsgd predict`` and of ``Learner.predict`` for a model trained on [0, 1]."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out *= np.float32(1.0 / 255.0)
        return out
    if x.dtype.kind != "f":
        raise ValueError(f"{name}: expected uint8 pixels 0..255 or floats in [0, 1], got {x.dtype}")
    out = np.asarray(x, dtype=np.float32)
    if not host_all_finite(np.ascontiguousarray(out)):
        raise ValueError(f"{name}: contains NaN or Inf; expected pixels in [0, 1]")
    if out.size and (out.min() < 0 or out.max() > 1):
        raise ValueError(f"{name}: float pixels must lie in [0, 1], found values from "
                         f"{out.min():g} to {out.max():g}; divide 0..255 pixels by 255")
    return out


def as_inputs(x, n_in: int, name: str = "x", pixels: bool = False) -> np.ndarray:
    """``x`` as C-contiguous float32 (N, n_in): rows of features or images.

    Takes (N, n_in), one sample (n_in,), images (N, H, W) or one image (H, W)
    with H * W = n_in.  With ``pixels`` (a model trained on inputs in [0, 1], such
    as MNIST's pixels) values are scaled as ``scale_pixels`` scales them: uint8
    0..255 divided by 255, floats in [0, 1].  Without, values must be floats on the
    scale the model was trained on; integer arrays are refused.  Errors name the
    array as ``name``.
    """
    x = scale_pixels(x, name) if pixels else np.asarray(x)
    if x.dtype.kind in "biu":
        raise ValueError(f"{name}: expected floats (pixels scaled to [0, 1] as in training), got "
                         f"{x.dtype}; divide 0..255 pixels by 255, e.g. x / 255")
    if x.dtype.kind != "f":
        raise TypeError(f"{name}: expected a float array, got dtype {x.dtype}")
    if x.ndim == 1 and x.shape[0] == n_in:
        x = x[None, :]
    elif x.ndim == 2 and x.shape[1] != n_in and x.size == n_in:
        x = x.reshape(1, n_in)                       # one image (H, W)
    elif x.ndim == 3 and x.shape[1] * x.shape[2] == n_in:
        x = x.reshape(len(x), n_in)
    if x.ndim != 2 or x.shape[1] != n_in or len(x) == 0:
        raise ValueError(f"{name}: expected shape (N, {n_in}), ({n_in},) or images (N, H, W) or "
                         f"(H, W) with H * W = {n_in}, with N >= 1, got {np.shape(x)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not host_all_finite(x):
        raise ValueError(f"{name}: contains NaN or Inf; expected finite values")
    return x


def raw_outputs(model, x: np.ndarray, bs: int = 1024) -> np.ndarray:
    """The model's outputs for float32 ``x`` (N, n_in), in batches of ``bs``, as NumPy (N, outputs)."""
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
        raise ValueError(f"bs: expected a positive integer batch size, got {bs!r}")
    backend = model.backend
    outs = [backend.to_numpy(model.forward(backend.asarray(x[i:i + bs]))).copy()
            for i in range(0, len(x), bs)]
    out = np.concatenate(outs)
    return out.reshape(len(x), -1)


def _check_kind(targets: str) -> None:
    if targets not in _TARGET_KINDS:
        raise ValueError(f"targets: expected one of {', '.join(_TARGET_KINDS)}, got {targets!r}")


def probabilities(raw: np.ndarray, targets: str) -> np.ndarray:
    """Class probabilities (N, classes) as float64, each row summing to 1.

    ``"binary"``: ``[sigmoid(z), 1 - sigmoid(z)]``; ``"labels"``: softmax of the
    scores.  Regression outputs (``"real"``) have no probabilities: ValueError.
    """
    _check_kind(targets)
    z = np.asarray(raw, np.float64)
    if targets == "real":
        raise ValueError("targets: a regression model (real targets) has no class probabilities")
    if targets == "binary":
        z = z.reshape(len(z), -1)[:, 0]
        # log(1 + exp(-z)) without overflow: P(class 0) = sigmoid(z), P(class 1) = sigmoid(-z)
        return np.stack([np.exp(-np.logaddexp(0.0, -z)), np.exp(-np.logaddexp(0.0, z))], axis=1)
    shifted = np.exp(z - z.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def class_indices(raw: np.ndarray, targets: str) -> np.ndarray:
    """The predicted class index of each row (int64), as the accuracy metric counts it:
    ``z > 0`` is class 0 for one output, the first highest score for several."""
    _check_kind(targets)
    if targets == "real":
        raise ValueError("targets: a regression model (real targets) predicts no classes")
    raw = np.asarray(raw)
    if targets == "binary":
        return np.where(raw.reshape(len(raw), -1)[:, 0] > 0, 0, 1).astype(np.int64)
    return raw.argmax(axis=1).astype(np.int64)


def decode(raw: np.ndarray, targets: str, classes) -> np.ndarray:
    """The predicted class of each row, as ``classes`` names it (an array of N);
    regression outputs are returned as they are."""
    if targets == "real":
        return np.asarray(raw)
    return np.asarray(list(classes))[class_indices(raw, targets)]


def default_classes(targets: str, n_out: int) -> list | None:
    """The classes of a model that was given none: ``[1, 0]`` (the targets) for one
    binary output, ``0 .. n_out-1`` for class scores, None for regression."""
    _check_kind(targets)
    if targets == "binary":
        return [1, 0]
    return list(range(n_out)) if targets == "labels" else None


def check_classes(classes, targets: str, n_out: int, where: str = "classes") -> list | None:
    """``classes`` as a list of distinct ints or strings, one per class, or ValueError.

    A binary model (one output) has two classes, a model of class scores one per
    output, a regression model none (``classes`` must be None).
    """
    _check_kind(targets)
    if targets == "real":
        if classes is not None:
            raise ValueError(f"{where}: a regression model has no classes, got {classes!r:.80}")
        return None
    expected = 2 if targets == "binary" else n_out
    if isinstance(classes, (str, bytes)) or not hasattr(classes, "__iter__"):
        raise ValueError(f"{where}: expected a list of {expected} class names, got {classes!r:.80}")
    out = []
    for c in classes:
        if isinstance(c, (np.integer, int)) and not isinstance(c, (bool, np.bool_)):
            out.append(int(c))
        elif isinstance(c, (str, np.str_)):
            out.append(str(c))
        else:
            raise ValueError(f"{where}: class names must be ints or strings, got {c!r:.40}")
    if len(out) != expected:
        raise ValueError(f"{where}: the model has {expected} classes, got {len(out)} names")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: class names must be distinct, got {out!r:.80}")
    return out


def sample_losses(raw: np.ndarray, targets: str, actual: np.ndarray) -> np.ndarray:
    """Each row's loss (float64) against its true class index ``actual``: the book's
    ``mnist_loss`` (1 - probability of the true class) for one output, cross-entropy
    (-log probability of the true class) for several."""
    actual = np.asarray(actual, np.int64)
    z = np.asarray(raw, np.float64)
    if targets == "binary":
        return 1.0 - probabilities(z, "binary")[np.arange(len(z)), actual]
    if targets != "labels":
        raise ValueError(f"targets: expected binary or labels for class losses, got {targets!r}")
    top = z.max(axis=1)
    log_sum = top + np.log(np.exp(z - top[:, None]).sum(axis=1))
    return log_sum - z[np.arange(len(z)), actual]


def confusion_matrix(actual: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (n_classes, n_classes) int64: row = true class index, column = predicted."""
    matrix = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(matrix, (np.asarray(actual, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix
