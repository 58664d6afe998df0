"""Synthetic MNIST-style data for tests: IDX writer, learnable fake digits, folders.

    from tests.mnist_fixtures import make_mnist_folder, synthetic_digits, write_idx

``synthetic_digits`` draws each class from its own fixed prototype (a few bright
strokes, the same for every seed), adds a small random shift, a random brightness
and pixel noise.  Classes are easy to separate: a linear model reaches well over
97% on 3 vs 7 and a small MLP over 90% on all ten, so trainer tests can assert
that learning happens without needing real MNIST.
"""
from __future__ import annotations

import functools
import gzip
import pathlib
import struct

import numpy as np

__all__ = ["write_idx", "synthetic_digits", "make_mnist_folder", "embedded_data_missing",
           "MNIST_NAMES"]

#: The four file names of an MNIST folder (train images/labels, t10k images/labels).
MNIST_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

_MAX_SHIFT = 2          # pixels, each direction
_NOISE = 25.0           # std of the additive pixel noise, in 0..255 units
_STROKES = 3


def write_idx(path, array, gz=None) -> pathlib.Path:
    """Write a uint8 array as an IDX file; gzipped when ``gz`` or the path ends in .gz."""
    path = pathlib.Path(path)
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx writes uint8 arrays, got {array.dtype}")
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.tobytes()
    if gz is None:
        gz = path.name.endswith(".gz")
    if gz:
        payload = gzip.compress(payload, compresslevel=1, mtime=0)
    path.write_bytes(payload)
    return path


def _segment_distance(yy, xx, p, q):
    """Distance from each pixel centre (yy, xx) to the segment p-q."""
    d = q - p
    t = ((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(yy - (p[0] + t * d[0]), xx - (p[1] + t * d[1]))


@functools.lru_cache(maxsize=None)
def _prototype(label: int, size: int) -> np.ndarray:
    """Class ``label``'s fixed pattern: a few soft strokes, float32 (size, size) in 0..255."""
    rng = np.random.default_rng(1000 + label)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    lo, hi = 0.2 * size, 0.8 * size
    image = np.zeros((size, size))
    for _ in range(_STROKES):
        p, q = rng.uniform(lo, hi, size=2), rng.uniform(lo, hi, size=2)
        width = size / 28 * 1.3
        image = np.maximum(image, np.exp(-(_segment_distance(yy, xx, p, q) / width) ** 2))
    return (255.0 * image).astype(np.float32)


def synthetic_digits(n, seed=0, size=28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` learnable fake digits: (images uint8 (n, size, size), labels uint8 (n,)), balanced."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    pad = _MAX_SHIFT
    padded = np.stack([np.pad(_prototype(c, size), pad) for c in range(10)])
    shifts = rng.integers(-pad, pad + 1, size=(n, 2))
    images = np.empty((n, size, size), dtype=np.float32)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
        images[i] = padded[label, pad + dy:pad + dy + size, pad + dx:pad + dx + size]
    images *= rng.uniform(0.7, 1.0, size=(n, 1, 1)).astype(np.float32)
    images += rng.normal(0.0, _NOISE, size=images.shape).astype(np.float32)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def make_mnist_folder(path, n_train=600, n_valid=200, seed=0, gz=True) -> pathlib.Path:
    """Write the four MNIST-named IDX files of synthetic digits into ``path``; returns it."""
    folder = pathlib.Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    train = synthetic_digits(n_train, seed=seed)
    valid = synthetic_digits(n_valid, seed=seed + 1)
    for name, array in zip(MNIST_NAMES, (*train, *valid)):
        write_idx(folder / f"{name}{suffix}", array, gz=gz)
    return folder


def embedded_data_missing() -> str | None:
    """Why the embedded MNIST subset cannot load (its file is not in the package), or None."""
    from fastsgd import data
    try:
        data._locate_embedded_csv()
    except data.DataError as e:
        return str(e)
    return None
