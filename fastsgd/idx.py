"""The IDX file format (MNIST's): reading whole files or a range of rows, with size caps.

    >>> from fastsgd.idx import read_idx, read_idx_rows
    >>> images = read_idx("train-images-idx3-ubyte.gz")        # uint8 (60000, 28, 28)
    >>> rows, n = read_idx_rows("train-images-idx3-ubyte", 0, 100)

Only unsigned-byte data (type code 0x08) of 1 to 4 dimensions is read, raw or
gzipped.  Sizes are checked before memory is spent: a header's dims against the
file, against a 4 GiB bound, and, for gzip, against what deflate can expand to and
a ratio (12:1 beyond the first 8 MiB) beyond which the file is refused as a likely
decompression bomb; so what a file costs in memory is proportional to its size.  Bad or
missing files raise ``DataError`` whose message names the file and what is wrong.
"""
from __future__ import annotations

import gzip
import math
import os
import pathlib
import stat
import struct
import zlib

import numpy as np

from .files import file_errors

__all__ = ["DataError", "read_idx", "read_idx_rows"]

_GZIP_MAGIC = b"\x1f\x8b"
_IDX_UBYTE = 0x08
_READ_CHUNK = 1 << 20
_MAX_IDX_BYTES = 1 << 32           # the most data an IDX file may declare
_MAX_DEFLATE_RATIO = 1032          # deflate cannot expand data by more than this
_FREE_RATIO_BYTES = 8 << 20        # above this size, IDX data must compress at most ...
_MAX_GZIP_RATIO = 12               # ... this well (MNIST's images: 4.8:1, Fashion's 2:1)


class DataError(ValueError):
    """Bad or missing data file; the message names the file and what is wrong."""


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


def _read_idx_file(path, read_data):
    """Open the IDX file ``path``, read and check its header, and return
    ``read_data(stream, path, dims, mappable)``.

    ``stream`` is positioned at the data (decompressed for a gzipped file);
    ``mappable`` is the open raw file when it is a regular file (its size was
    checked against the dims), else None.  Read errors become ``DataError``.
    """
    path = pathlib.Path(path)
    with _open_idx(path) as f:
        gz = False
        try:
            st = os.fstat(f.fileno())
            regular = stat.S_ISREG(st.st_mode)
            gz = f.peek(2)[:2] == _GZIP_MAGIC
            if not gz:
                dims = _idx_dims(f, path)
                if regular:
                    _check_raw_size(path, dims, st.st_size)
                return read_data(f, path, dims, f if regular else None)
            with gzip.GzipFile(fileobj=f, mode="rb") as stream:
                dims = _idx_dims(stream, path)
                if regular:
                    _check_gzip_size(path, dims, st.st_size)
                return read_data(stream, path, dims, None)
        except (EOFError, zlib.error, OSError) as e:
            if gz:
                raise DataError(f"{path}: corrupt or truncated gzip data ({e})") from None
            raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def read_idx(path) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or gzipped) as a uint8 array with its dims.

    The header's dims say exactly how many bytes follow; gzipped data is
    decompressed as a stream and refused at the first byte past that size, so
    neither trailing data nor a decompression bomb is ever held in memory.
    """
    return _read_idx_file(path, lambda stream, path, dims, _: _read_idx_data(stream, path, dims))


def _open_idx(path: pathlib.Path):
    """``path`` opened for reading bytes; a missing or unreadable file is a ``DataError``."""
    with file_errors(lambda: DataError(f"{path}: file not found"),
                     lambda e: DataError(f"{path}: cannot read ({e.strerror or e})")):
        return open(path, "rb")


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

    def read_rows(stream, path, dims, mappable):
        if mappable is None:
            return _read_idx_rows_data(stream, path, dims, start, stop), dims[0]
        lo, hi, row = _row_range(dims, start, stop)
        if hi == lo:
            return np.empty((0, *dims[1:]), np.uint8), dims[0]
        mapped = np.memmap(mappable, np.uint8, "r", offset=4 + 4 * len(dims) + lo * row,
                           shape=((hi - lo) * row,))
        rows = np.array(mapped).reshape(hi - lo, *dims[1:])
        del mapped
        return rows, dims[0]
    return _read_idx_file(path, read_rows)


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
