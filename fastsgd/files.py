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
import io
import json
import os
import re
import secrets
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import Callable

__all__ = ["STDOUT", "open_output", "write_bytes", "write_json", "check_writable",
           "is_stdout", "missing_folders", "file_errors"]

#: The path that means standard output.
STDOUT = "-"

_CHUNK = 1 << 20                 # bytes read or copied at a time


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
