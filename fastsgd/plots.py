"""PNG charts: a training history (fastai's ``plot_loss``), an ``lr_find`` curve, benchmark
speed-ups, and a classifier's confusion matrix and top losses (``fastsgd interpret``).

    plot_history(learn.recorder.history, "loss.png")     # or learn.recorder.plot_loss(...)
    plot_lr_find(learn.recorder.lr_find, "lr.png")       # or learn.recorder.plot_lr_find(...)
    plot_speedups(fastsgd.bench.run_bench(), "speedups.png")
    plot_confusion_matrix(matrix, ["3", "7"], "confusion.png")
    plot_top_losses(images, titles, "top-losses.png")

Needs matplotlib (``pip install 'fastsgd[plot]'``).  Figures are drawn with
matplotlib's object API on the Agg canvas: no window, no global pyplot state.
"""
from __future__ import annotations

import math
from pathlib import Path

from .files import open_output

__all__ = ["require_matplotlib", "plot_history", "plot_lr_find", "plot_speedups",
           "plot_confusion_matrix", "plot_top_losses"]

#: History keys that are not metrics.
_NOT_METRICS = ("epoch", "train_loss", "valid_loss", "seconds")


def require_matplotlib():
    """Import matplotlib, or raise ``RuntimeError`` saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install 'fastsgd[plot]' "
                           "(or pip install matplotlib)") from None
    return matplotlib


def _figure(width, height):
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically (``-``: stdout)."""
    with open_output(path) as f:
        fig.savefig(f, format="png")
    return Path(path)


def plot_history(history: list[dict], path) -> Path:
    """Train and valid loss (left) and each metric (right) per epoch, as a PNG at ``path``.

    ``history`` is ``Recorder.history`` (or the ``history`` of ``fastsgd train
    --json``): dicts with ``epoch``, ``train_loss``, ``valid_loss``, ``seconds``
    and one key per metric.
    """
    if not history:
        raise ValueError("plot_history: the history is empty; train for at least one epoch")
    epochs = [row["epoch"] for row in history]
    metrics = [k for k in history[0] if k not in _NOT_METRICS]
    accuracies = all("accuracy" in k for k in metrics) and bool(metrics)
    fig = _figure(10, 4)
    loss_ax, metric_ax = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("valid_loss", "valid")):
        loss_ax.plot(epochs, [row[key] for row in history], marker="o", label=label)
    loss_ax.set(title="loss", xlabel="epoch", ylabel="loss (mean over the set)")
    for key in metrics:
        scale = 100.0 if accuracies else 1.0
        metric_ax.plot(epochs, [row[key] * scale for row in history], marker="o", color="tab:green",
                       label=f"valid {key.replace('batch_', '')}")
    metric_ax.set(title="accuracy" if accuracies else "metrics", xlabel="epoch",
                  ylabel="valid accuracy (%)" if accuracies else "valid " + ", ".join(metrics))
    for ax in (loss_ax, metric_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend()
    last = history[-1]
    summary = [f"valid loss {last['valid_loss']:.4g}"]
    summary += [f"{k.replace('batch_', '')} {100 * last[k]:.2f}%" if accuracies else f"{k} {last[k]:.4g}"
                for k in metrics]
    fig.suptitle(f"after epoch {last['epoch']}: " + ", ".join(summary))
    if len(epochs) == 1:
        for ax in (loss_ax, metric_ax):
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
    return _save(fig, path)


def plot_lr_find(found, path) -> Path:
    """An ``lr_find``'s loss against the learning rate (log scale), as a PNG at ``path``.

    ``found`` is ``Recorder.lr_find`` (an ``LRFindResult``): each step's loss, the
    smoothed loss and, marked, the suggestion.
    """
    fig = _figure(7, 4.5)
    ax = fig.subplots()
    ax.plot(found.lrs, found.losses, color="0.75", linewidth=1, label="loss of each step")
    ax.plot(found.lrs, found.smoothed, color="tab:blue", label="smoothed loss")
    ax.axvline(found.suggestion, color="tab:red", linestyle="--",
               label=f"suggestion {found.suggestion:.3g}")
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (log scale)", ylabel="training loss",
           title=f"lr_find: {len(found.lrs)} steps")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_speedups(rows: list[dict], path) -> Path:
    """Speed-up over numpy per kernel and shape, one bar per backend, as a PNG at ``path``.

    ``rows`` are ``fastsgd.bench.run_bench`` rows; groups read top to bottom
    in run order, the x axis is logarithmic and the line at 1 is numpy.
    Failed rows and numpy's own are left out.
    """
    bars = [r for r in rows if r.get("status") == "ok" and r["backend"] != "numpy"
            and r.get("speedup_vs_numpy")]
    if not bars:
        raise ValueError("plot_speedups: no row has a speed-up over numpy to plot")
    groups = list(dict.fromkeys(r["group"] for r in bars))
    names = list(dict.fromkeys(r["backend"] for r in bars))
    value = {(r["group"], r["backend"]): r["speedup_vs_numpy"] for r in bars}
    height = 0.8 / len(names)
    fig = _figure(10, 1.4 + 0.11 * len(groups) * max(2, len(names)))
    ax = fig.subplots()
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i in range(0, len(groups), 2):   # shade every other group so its bars read as one
        ax.axhspan(i - 0.5, i + 0.5, color="0.93", zorder=0)
    for j, name in enumerate(names):
        ys = [i - 0.4 + height * (j + 0.5) for i, g in enumerate(groups) if (g, name) in value]
        xs = [value[(g, name)] for g in groups if (g, name) in value]
        ax.barh(ys, xs, height=height * 0.9, label=name, color=colors[j % len(colors)], zorder=2)
        for x, y in zip(xs, ys):
            ax.annotate(f"{x:.2g}x", (x, y), xytext=(2, 0), textcoords="offset points",
                        va="center", fontsize=6, zorder=3)
    ax.axvline(1.0, color="black", linewidth=1, zorder=3)
    ax.set_yticks(range(len(groups)), groups, fontsize=8)
    ax.set_ylim(len(groups) - 0.5, -0.5)
    ax.set_xscale("log")
    low = min(min(value.values()), 1.0)
    high = max(max(value.values()), 1.0)
    ax.set_xlim(2 ** math.floor(math.log2(low) - 0.3), 2 ** math.ceil(math.log2(high) + 1))
    ax.xaxis.set_major_formatter(_times_formatter())
    ax.set_xlabel("speed-up over numpy (log scale; right of the line at 1x is faster than numpy)")
    ax.set_title("fastsgd kernels: speed-up over the numpy reference (median times)", pad=24)
    ax.grid(axis="x", alpha=0.4, zorder=1)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=len(names), frameon=False,
              fontsize=9)
    return _save(fig, path)


def plot_confusion_matrix(matrix, names, path, title: str = "confusion matrix") -> Path:
    """Counts (C, C) — rows the actual class, columns the predicted — as a PNG at ``path``,
    each cell labelled with its count and the axes with ``names`` (C strings)."""
    import numpy as np
    matrix = np.asarray(matrix)
    names = [str(n) for n in names]
    if matrix.ndim != 2 or matrix.shape != (len(names), len(names)):
        raise ValueError(f"matrix: expected shape ({len(names)}, {len(names)}) to match names, "
                         f"got {matrix.shape}")
    size = 2.5 + 0.55 * len(names)
    fig = _figure(size + 1.0, size)
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(names))
    ax.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right"
                  if max(map(len, names)) > 2 else "center")
    ax.set_yticks(ticks, names)
    ax.set(xlabel="predicted", ylabel="actual", title=title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(int(count)), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    return _save(fig, path)


def plot_top_losses(images, titles, path, title: str = "top losses") -> Path:
    """Images (K, H, W) in [0, 1] in a grid, each above its line of ``titles``, as a PNG at
    ``path`` (fastai's ``plot_top_losses``: prediction / actual, loss / probability)."""
    import numpy as np
    images = np.asarray(images)
    if images.ndim != 3 or len(images) == 0 or len(titles) != len(images):
        raise ValueError(f"images: expected (K, H, W) with K >= 1 and one title each, got shape "
                         f"{images.shape} and {len(titles)} titles")
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    fig = _figure(2.0 * cols, 2.2 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for ax, image, text in zip(axes, images, titles):
        ax.imshow(image, cmap="gray_r", vmin=0.0, vmax=1.0)
        ax.set_title(text, fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _times_formatter():
    from matplotlib.ticker import FuncFormatter
    return FuncFormatter(lambda x, _: f"{x:g}x")
