"""Writing and reading the files fastsgd makes: one writer for all of them, checked .npz reads.

    with open_output("model.npz") as f:      # a temp file in the same folder, renamed
        np.savez(f, ...)                      # over model.npz only when the block ends
    write_json("run.json", {...})             # the same for JSON ("-" writes to stdout)
    check_writable("out/run.json")            # before a long job: fail now, not after
    write_npz("model.npz", {"p0": array})    # an .npz carrying a checksum of its parts
    with NpzArchive("model.npz") as npz:      # every member's shape and dtype, no data yet
        npz.headers["p0"].shape, npz.verify(), npz.read("p0")
    with file_errors(missing, unreadable):    # a reader's OSErrors in its own words
        f = open(path, "rb")

Regular files are replaced atomically: readers see the old content or the new,
never half of it, and an exception or Ctrl-C at any point leaves no temp file
behind.  A new file gets mode ``0o666 & ~umask``; a replaced one keeps its mode.
Symlinks are followed (the link stays, its target gets the content).  Device
nodes, FIFOs and ``-`` (standard output) are written directly, never renamed over;
so are the files this process holds open as a descriptor: ``/dev/stdout``,
``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``, and any path naming the same
file as standard output or error (``--json out.txt > out.txt``), which are written
through that descriptor, at its position, so nothing the shell opened is replaced.
Missing folders are created (``missing_folders`` says which, beforehand).  An empty
path is refused.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import secrets
import signal
import stat
import struct
import sys
import threading
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["STDOUT", "open_output", "write_bytes", "write_json", "write_npz", "check_writable",
           "is_stdout", "missing_folders", "ArrayHeader", "BadArchive", "NpzArchive",
           "file_errors"]

#: The path that means standard output.
STDOUT = "-"

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


# --------------------------------------------------------------------------- writing

def _is_stdout(path) -> bool:
    return isinstance(path, (str, os.PathLike)) and os.fspath(path) == STDOUT


_FD_PATH = re.compile(r"/dev/(?:(stdout)|(stderr)|fd/(\d+))|/proc/(?:self|(\d+))/fd/(\d+)")


def _open_descriptor(path) -> int | None:
    """The descriptor of this process that ``path`` names, or None: ``/dev/stdout`` (1),
    ``/dev/stderr`` (2), ``/dev/fd/N`` or ``/proc/self/fd/N`` (N) when N is open, or 1 or 2
    when ``path`` is the very regular file that standard output or error is."""
    text = os.fspath(path)
    match = _FD_PATH.fullmatch(text)
    if match:
        stdout, stderr, dev_fd, pid, proc_fd = match.groups()
        if pid is None or int(pid) == os.getpid():
            fd = 1 if stdout else 2 if stderr else int(dev_fd or proc_fd)
            try:
                os.fstat(fd)
                return fd
            except OSError:
                return None
    try:
        st = os.stat(text)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            std = os.fstat(fd)
            if (std.st_dev, std.st_ino) == (st.st_dev, st.st_ino):
                return fd
    return None


def is_stdout(path) -> bool:
    """Whether output to ``path`` goes to standard output: ``-``, ``/dev/stdout``, or the
    file standard output is redirected to (commands then print their text to stderr)."""
    if path is None:
        return False
    return _is_stdout(path) or _open_descriptor(path) == 1


def _target(path) -> Path:
    """Where the content goes: ``path`` with every symlink resolved."""
    return Path(os.path.realpath(path))


def _is_special(target: Path) -> bool:
    """True for an existing device node, FIFO or socket: written in place."""
    try:
        mode = target.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _destination(path) -> tuple[str, Path | int | None]:
    """Where output to ``path`` goes: ``("stdout", None)``, ``("descriptor", fd)`` for a
    file this process holds open (written through ``fd``), ``("special", target)`` for a
    device node, FIFO or socket (written in place), else ``("file", target)``, a regular
    file, new or replaced.  A folder raises ``IsADirectoryError``, an empty path
    ``FileNotFoundError``."""
    if _is_stdout(path):
        return "stdout", None
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise FileNotFoundError(f"cannot write {path!r}: expected a file name, got an empty path")
    fd = _open_descriptor(path)
    if fd is not None:
        return "descriptor", fd
    target = _target(path)
    if target.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a folder; expected a file name")
    return ("special" if _is_special(target) else "file"), target


@contextlib.contextmanager
def _sigint_deferred():
    """Hold back SIGINT while cleaning up, so a second Ctrl-C cannot cut the cleanup short."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _discard(f, tmp: str) -> None:
    """Close and remove a temp file that will not become the target."""
    with _sigint_deferred():
        if f is not None:
            with contextlib.suppress(Exception):
                f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _kept_mode(target: Path) -> int | None:
    """The permission bits of the regular file ``target`` replaces, None for a new file."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except OSError:
        return None


class _Forward(io.RawIOBase):
    """Write-only and unseekable, into ``out``: zip writers then stream rather than seek,
    which matters on devices like /dev/null whose position is always 0."""

    def __init__(self, out, owned: bool):
        super().__init__()
        self._out, self._owned = out, owned

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        n = self._out.write(b)
        return len(b) if n is None else n

    def close(self) -> None:
        if not self.closed:
            try:
                self._out.close() if self._owned else self._out.flush()
            finally:
                super().close()


def _stream(out, binary: bool, owned: bool):
    """A buffered (binary) or text file object writing through ``_Forward`` into ``out``."""
    buffered = io.BufferedWriter(_Forward(out, owned))
    return buffered if binary else io.TextIOWrapper(buffered, encoding="utf-8")


@contextlib.contextmanager
def _direct(target: Path, binary: bool):
    """Write a device node or FIFO in place."""
    with _stream(open(target, "wb", buffering=0), binary, owned=True) as out:
        yield out


@contextlib.contextmanager
def _through_descriptor(fd: int, binary: bool):
    """Write at the current position of this process's open descriptor ``fd``."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with _stream(os.fdopen(os.dup(fd), "wb", buffering=0), binary, owned=True) as out:
        yield out


@contextlib.contextmanager
def _stdout(binary: bool):
    sys.stdout.flush()
    if not binary:
        yield sys.stdout
        sys.stdout.flush()
        return
    with _stream(sys.stdout.buffer, binary=True, owned=False) as out:
        yield out


@contextlib.contextmanager
def open_output(path, binary: bool = True):
    """A file object whose content becomes ``path`` when the ``with`` block ends.

    Regular files (new or replaced) are written to a temp file in the same folder,
    then renamed over ``path``; if the block raises, ``path`` is left as it was.
    Missing folders are created.  ``-`` is standard output; device nodes, FIFOs and
    files this process holds open (``/dev/stdout``, the file stdout is redirected
    to) are written in place, never renamed over.
    """
    kind, target = _destination(path)
    if kind == "stdout":
        with _stdout(binary) as out:
            yield out
        return
    if kind == "descriptor":
        with _through_descriptor(target, binary) as out:
            yield out
        return
    if kind == "special":
        with _direct(target, binary) as out:
            yield out
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    mode = _kept_mode(target)
    tmp = str(target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp")
    f = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        f = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, target)
    except BaseException:
        _discard(f, tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    """``data`` as the content of ``path`` (see ``open_output``)."""
    with open_output(path) as f:
        f.write(data)
    return Path(path)


def write_json(path, obj) -> Path:
    """``obj`` as indented JSON at ``path``; readers never see a half-written file."""
    text = json.dumps(obj, indent=2) + "\n"
    with open_output(path, binary=False) as f:
        f.write(text)
    return Path(path)


def missing_folders(path) -> list[Path]:
    """The folders that writing ``path`` with ``open_output`` would create, outermost first."""
    kind, target = _destination(path)
    return _missing_folders(target.parent) if kind == "file" else []


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


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing[::-1]


@contextlib.contextmanager
def _cannot_write(path, step: str):
    """An ``OSError`` in the block becomes ``OSError("cannot write PATH: STEP (why)")``."""
    try:
        yield
    except OSError as e:
        raise OSError(f"cannot write {path}: {step} ({e.strerror or e})") from None


def check_writable(path) -> None:
    """Raise ``OSError`` saying why, unless ``open_output(path)`` can be expected to work.

    Leaves nothing behind: folders it had to create to try are removed again.
    """
    kind, target = _destination(path)
    if kind == "stdout":
        return
    if kind == "descriptor":
        import fcntl
        with _cannot_write(path, f"descriptor {target}"):
            flags = fcntl.fcntl(target, fcntl.F_GETFL)
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise OSError(f"cannot write {path}: it is open for reading only")
        return
    if kind == "special":
        if not os.access(target, os.W_OK):
            raise OSError(f"cannot write {path}: permission denied")
        return
    created = []
    try:
        for folder in _missing_folders(target.parent):
            with _cannot_write(path, f"cannot create folder {folder}"):
                folder.mkdir()
            created.append(folder)
        if not target.parent.is_dir():
            raise OSError(f"cannot write {path}: {target.parent} is not a folder")
        probe = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        with _cannot_write(path, f"cannot create files in {target.parent}"):
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                folder.rmdir()


# --------------------------------------------------------------------------- reading .npz

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


@contextlib.contextmanager
def file_errors(missing: Callable[[], BaseException],
                unreadable: Callable[[OSError], BaseException]):
    """Raise ``missing()`` for a FileNotFoundError in the block and ``unreadable(e)`` for any
    other OSError ``e``, each without the original as its context."""
    try:
        yield
    except FileNotFoundError:
        raise missing() from None
    except OSError as e:
        raise unreadable(e) from None
