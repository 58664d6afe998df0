"""The .npz files fastsgd writes and reads: ``write_npz`` (atomically, through
``files.open_output``, with a checksum of every part) and ``NpzArchive`` (headers
checked against the file before any array data is read; a damaged file is refused).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .files import open_output

__all__ = ["write_npz", "ArrayHeader", "BadArchive", "NpzArchive", "NPY_HEADER_ERRORS",
           "MAX_NPZ_EXPANSION"]

_CHUNK = 1 << 20                 # bytes read or copied at a time
_MAX_DEFLATE_RATIO = 1032        # deflate cannot expand data by more than this
_MAX_NPZ_MEMBERS = 4096
#: The most bytes of arrays an .npz may declare per byte of file (fastsgd writes them
#: uncompressed, 1:1; float weights deflate far less than this), beyond a free 1 MiB.
MAX_NPZ_EXPANSION = 16
_FREE_NPZ_BYTES = 1 << 20
_CHECKSUM = "checksum"                    # the member holding an .npz's checksum ...
_CHECKSUM_COMMENT = b"fastsgd-checksum "  # ... and the start of the archive comment, its copy
_MAX_CHECKSUM_BYTES = 1 << 16


class _Hashed:
    """Write-only: what is written goes to ``out`` and into the hash ``digest``."""

    def __init__(self, out, digest):
        self._out, self._digest, self.n = out, digest, 0

    def write(self, b) -> int:
        self._digest.update(b)
        self.n += len(b)
        return self._out.write(b)


def _digest_member(digest, name: str, chunks) -> None:
    """Hash one member: its name, its bytes, then their count."""
    digest.update(name.encode() + b"\0")
    n = 0
    for chunk in chunks:
        digest.update(chunk)
        n += len(chunk)
    digest.update(n.to_bytes(8, "little"))


def write_npz(path, arrays: dict) -> Path:
    """``arrays`` (name -> array) as an uncompressed .npz at ``path`` (see ``open_output``)
    carrying a checksum of its parts, which ``NpzArchive.verify`` checks.

    The checksum is a SHA-256 over every member's name and bytes, with the list of
    members; it is stored twice, as the member ``checksum`` and as the archive's comment,
    so that no damaged byte can remove it, or a member, unnoticed.
    """
    digest = hashlib.sha256()
    with open_output(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED,
                                                 allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                hashed = _Hashed(member, digest)
                digest.update(name.encode() + b"\0")
                np.lib.format.write_array(hashed, np.asanyarray(array), allow_pickle=False)
                digest.update(hashed.n.to_bytes(8, "little"))
        manifest = json.dumps({"sha256": digest.hexdigest(), "members": list(arrays)}).encode()
        with archive.open(f"{_CHECKSUM}.npy", "w") as member:
            np.lib.format.write_array(member, np.frombuffer(manifest, np.uint8))
        archive.comment = _CHECKSUM_COMMENT + manifest
    return Path(path)


class BadArchive(ValueError):
    """A malformed .npz file; ``path`` is the file and ``reason`` what is wrong with it."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


@dataclass(frozen=True)
class ArrayHeader:
    """What an .npy header declares: shape, dtype and memory order."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of array data."""
        return self.size * self.dtype.itemsize


# What zipfile and numpy raise on malformed archives, members and headers (numpy parses
# an .npy header as a Python literal: a flipped bit there is a SyntaxError or TokenError).
NPY_HEADER_ERRORS = (ValueError, SyntaxError, tokenize.TokenError, EOFError, KeyError,
                     IndexError, TypeError, OverflowError, RecursionError)
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, zlib.error,
                   NotImplementedError, RuntimeError, *NPY_HEADER_ERRORS)


class NpzArchive:
    """An .npz file opened for checked reading: headers first, array data on request.

    Opening reads only the zip directory and each member's .npy header, and checks
    that header against the member's size, so callers can refuse shapes before
    any array is allocated; ``read`` and ``verify`` first check all the arrays' bytes
    against the file's size (at most ``MAX_NPZ_EXPANSION`` to 1, beyond a free 1 MiB).  ``headers`` maps array name -> ``ArrayHeader``;
    ``read(name)`` returns the array.  Malformed files raise ``BadArchive``
    (a ValueError); a missing file raises FileNotFoundError.
    """

    def __init__(self, path):
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            raise
        except OSError as e:
            raise BadArchive(path, f"cannot read ({e.strerror or e})") from None
        except _ARCHIVE_ERRORS as e:
            raise BadArchive(path, f"not an .npz archive ({e})") from None
        try:
            self.headers = self._read_headers()
            self._checksum = self.headers.pop(_CHECKSUM, None) and self._infos.pop(_CHECKSUM)
        except BaseException:
            self._zip.close()
            raise

    def _read_headers(self) -> dict[str, ArrayHeader]:
        infos = self._zip.infolist()
        if len(infos) > _MAX_NPZ_MEMBERS:
            raise BadArchive(self.path, f"{len(infos)} members, more than the "
                             f"{_MAX_NPZ_MEMBERS} an .npz file of fastsgd holds")
        self._infos, headers = {}, {}
        for info in infos:
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name is None or name in headers:
                reason = "duplicate" if name else "non-.npy"
                raise BadArchive(self.path, f"{reason} member {info.filename!r}")
            self._check_sizes(info)
            headers[name] = self._read_header(info)
            self._infos[name] = info
        return headers

    def check_expansion(self) -> None:
        """Raise ``BadArchive`` unless the arrays' bytes are at most ``MAX_NPZ_EXPANSION``
        times the file's size (beyond a free 1 MiB): a small file cannot ask for gigabytes."""
        declared = sum(header.nbytes for header in self.headers.values())
        size = os.fstat(self._zip.fp.fileno()).st_size if hasattr(self._zip.fp, "fileno") else 0
        if declared > MAX_NPZ_EXPANSION * size + _FREE_NPZ_BYTES:
            raise BadArchive(self.path, f"its arrays declare {declared} bytes from a {size}-byte "
                             f"file, over {MAX_NPZ_EXPANSION}:1; refusing it as a likely "
                             f"decompression bomb")

    def _check_sizes(self, info: zipfile.ZipInfo) -> None:
        if info.flag_bits & 0x1:
            raise BadArchive(self.path, f"member {info.filename!r} is encrypted")
        if info.compress_type == zipfile.ZIP_STORED:
            ok = info.file_size == info.compress_size
        elif info.compress_type == zipfile.ZIP_DEFLATED:
            ok = info.file_size <= _MAX_DEFLATE_RATIO * info.compress_size + 64
        else:
            raise BadArchive(self.path, f"member {info.filename!r} uses unsupported compression "
                             f"method {info.compress_type} (stored or deflated expected)")
        if not ok:
            raise BadArchive(self.path, f"member {info.filename!r} claims {info.file_size} bytes "
                             f"from {info.compress_size} stored bytes")

    @contextlib.contextmanager
    def _member(self, info: zipfile.ZipInfo, malformed: str):
        """The member ``info``, open for reading; what goes wrong while it is read becomes
        ``BadArchive``: "MALFORMED (why)" for bad content, "cannot read (why)" for I/O."""
        try:
            with self._zip.open(info) as member:
                yield member
        except _ARCHIVE_ERRORS as e:
            raise BadArchive(self.path, f"member {info.filename!r}: {malformed} ({e})") from None
        except OSError as e:
            raise BadArchive(self.path, f"member {info.filename!r}: cannot read "
                             f"({e.strerror or e})") from None

    def _read_header(self, info: zipfile.ZipInfo) -> ArrayHeader:
        with self._member(info, "bad .npy header") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
            header_bytes = member.tell()
        header = ArrayHeader(tuple(int(n) for n in shape), np.dtype(dtype), bool(fortran))
        if header.dtype.hasobject:
            raise BadArchive(self.path, f"member {info.filename!r} holds Python objects")
        if header_bytes + header.nbytes != info.file_size:
            raise BadArchive(self.path, f"member {info.filename!r}: its header declares shape "
                             f"{header.shape} of {header.dtype} ({header.nbytes} bytes) but it "
                             f"holds {info.file_size - header_bytes} bytes of data")
        return header

    def verify(self) -> bool:
        """Check the checksum ``write_npz`` stores: True when it matches, False for an
        archive without one (written otherwise, or by an earlier fastsgd); a damaged
        archive (a member changed, added or lost, or either copy of the checksum lost)
        raises ``BadArchive``.  Reads every member once."""
        self.check_expansion()
        comment = self._zip.comment
        in_comment = comment.startswith(_CHECKSUM_COMMENT)
        if self._checksum is None and not in_comment:
            return False
        if self._checksum is None or not in_comment:
            lost = "member" if self._checksum is None else "archive comment"
            raise BadArchive(self.path, f"damaged: the copy of its checksum in the {lost} is lost")
        if self._checksum.file_size > _MAX_CHECKSUM_BYTES:
            raise BadArchive(self.path, "damaged: its checksum member is too large")
        with self._member(self._checksum, "bad checksum member") as member:
            stored = member.read()
        manifest = comment[len(_CHECKSUM_COMMENT):]
        if not stored.endswith(manifest):
            raise BadArchive(self.path, "damaged: the two copies of its checksum differ")
        try:
            manifest = json.loads(manifest)
            expected, members = manifest["sha256"], list(manifest["members"])
        except (ValueError, TypeError, KeyError) as e:
            raise BadArchive(self.path, f"damaged: unreadable checksum ({e})") from None
        if sorted(members) != sorted(self.headers):
            lost = sorted(set(members) - set(self.headers))
            extra = sorted(set(self.headers) - set(members))
            raise BadArchive(self.path, "damaged: its checksum lists other members ("
                             + "; ".join(f"{what} {', '.join(names)}" for what, names in
                                         (("lost", lost), ("unexpected", extra)) if names) + ")")
        digest = hashlib.sha256()
        for name in members:
            info = self._infos[name]
            with self._member(info, "corrupt data") as member:
                _digest_member(digest, name, iter(lambda: member.read(_CHUNK), b""))
        if digest.hexdigest() != expected:
            raise BadArchive(self.path, "damaged: its content does not match its checksum")
        return True

    def read(self, name: str) -> np.ndarray:
        """The array stored as ``name`` (a key of ``headers``)."""
        self.check_expansion()
        header, info = self.headers[name], self._infos[name]
        out = np.empty(header.size, dtype=header.dtype)
        view = memoryview(out.reshape(-1).view(np.uint8))
        with self._member(info, "corrupt data") as member:
            member.seek(info.file_size - header.nbytes)
            got = 0
            while got < len(view):
                chunk = member.read(min(_CHUNK, len(view) - got))
                if not chunk:
                    break
                view[got:got + len(chunk)] = chunk
                got += len(chunk)
            member.read(1)                           # reaches the end: the CRC is checked
        if got != len(view):
            raise BadArchive(self.path, f"member {info.filename!r}: truncated data")
        order = "F" if header.fortran_order else "C"
        return out.reshape(header.shape, order=order)

    def close(self) -> None:
        """Close the file."""
        self._zip.close()

    def __enter__(self) -> "NpzArchive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
