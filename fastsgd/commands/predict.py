"""``fastsgd predict`` and ``fastsgd interpret``: use a model file written by train --save."""
from __future__ import annotations

import os
import pathlib
import sys

import numpy as np

from .. import backends, files
from .options import (
    UsageError,
    check_output,
    check_plot,
    is_digit_list,
    write_output,
)


def _load_classifier(path, backend_name):
    """(model on the backend, kind of targets, classes, whether the file names them, the
    settings it was trained with) of the model file ``path``."""
    from .. import inference
    from ..layers import read_checkpoint
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
    from .. import data
    if how == "labels" or (how == "auto" and not data.looks_like_fashion_mnist(folder)):
        return list(classes)
    if not is_digit_list(classes):
        if how == "fashion":
            raise UsageError(f"--classes fashion: the model's classes {classes} are not labels 0..9")
        return list(classes)
    return [data.FASHION_MNIST_CLASSES[c] for c in classes]


def run_predict(args) -> int:
    """``fastsgd predict``: the class of each image, one per line; --proba, --json."""
    from .. import data, inference
    if args.json:
        check_output("--json", args.json)
    model, kind, classes, known, settings = _load_classifier(args.model, args.backend)
    names = _class_names(classes, args.classes, settings.get("data")) \
        if known or kind == "labels" else list(classes)
    x = inference.as_inputs(data.load_images(args.images), model.n_in, name=str(args.images))
    raw = inference.raw_outputs(model, x)
    predicted = [names[i] for i in inference.class_indices(raw, kind)]
    proba = inference.probabilities(raw, kind)
    out = sys.stderr if files.is_stdout(args.json) else sys.stdout
    if args.proba:
        print("\t".join(["label", *map(str, names)]), file=out)
        for label, row in zip(predicted, proba):
            print("\t".join([str(label), *(f"{p:.4f}" for p in row)]), file=out)
    else:
        print("\n".join(map(str, predicted)), file=out)
    if args.json:                # its labels are predict's output: the note goes to stderr
        report = {"model": str(args.model), "images": str(args.images), "classes": names,
                  "labels": predicted, "probabilities": proba.tolist()}
        write_output(args.json, lambda path: files.write_json(path, report), sys.stderr)
    return 0


def _interpret_plot_paths(path) -> list:
    """[confusion matrix PNG, top losses PNG] for --plot PATH (none without it).

    The second name is derived (PATH's name + ``-top-losses``) only for a regular file
    or a new name; a device such as /dev/null gets both drawings in place.
    """
    if not path:
        return []
    if files.is_stdout(path):
        raise UsageError(f"--plot: expected a file name (interpret draws two PNGs), got {path}")
    first = pathlib.Path(path)
    if first.exists() and not first.is_file():
        return [first, first]
    return [first, first.with_name(f"{first.stem}-top-losses{first.suffix or '.png'}")]


def _interpret_digits(args, classes, known, kind, n_out) -> list[int]:
    """The digit each class of the model is: --digits, else the model's classes."""
    n_classes = 2 if kind == "binary" else n_out
    if args.digits is not None:
        if len(args.digits) != n_classes:
            raise UsageError(f"--digits: {args.model} has {n_classes} classes, got "
                             f"{len(args.digits)} digits")
        return list(args.digits)
    if known and is_digit_list(classes):
        return list(classes)
    if not known and kind == "labels" and n_out <= 10:
        return list(range(n_out))
    raise UsageError(f"--digits: {args.model} does not say which digit each of its {n_classes} "
                     f"classes is; pass --digits, e.g. --digits 3,7")


def run_interpret(args) -> int:
    """``fastsgd interpret``: accuracy, confusion matrix and top losses on the validation set."""
    from .. import data, inference
    plots = _interpret_plot_paths(args.plot)
    for path in dict.fromkeys(plots):
        check_plot("--plot", path)
    model, kind, classes, known, settings = _load_classifier(args.model, args.backend)
    digits = _interpret_digits(args, classes, known, kind, model.n_out)
    folder = args.data or settings.get("data")
    valid_pct = args.valid_pct if args.valid_pct is not None else \
        settings.get("valid_pct") if folder and os.path.abspath(folder) == settings.get("data") \
        else None
    if valid_pct is not None and not folder:
        raise UsageError("--valid-pct: needs --data DIR (the embedded set has its own split)")
    dataset = data.load_mnist(folder, valid_pct) if folder else data.load_embedded()
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
        from ..plots import plot_confusion_matrix, plot_top_losses
        write_output(plots[0], lambda path: plot_confusion_matrix(
            matrix, names, path, title=f"{dataset.name}: confusion matrix"), sys.stdout)
        titles = [f"{names[predicted[i]]} / {names[actual[i]]}\n{losses[i]:.2f} / "
                  f"{proba[i, actual[i]]:.2f}" for i in top]
        write_output(plots[1], lambda path: plot_top_losses(
            _as_images(x[top]), titles, path,
            title="prediction / actual, loss / probability of actual"), sys.stdout,
            quiet=plots[1] == plots[0])                 # a device: said once
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
