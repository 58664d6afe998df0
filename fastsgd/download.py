"""Downloads of the MNIST files, checked, and the cache folder they go to.

    >>> from fastsgd.download import download_mnist
    >>> folder = download_mnist()             # full MNIST into cache_dir()/"mnist"

A download is streamed into a temporary file next to its target and verified by
size and SHA-256 before it takes the target's name; a server that stalls (less
than 1 KiB in some ``timeout``-second window, headers included), that is not done
by the file's deadline (``timeout`` + 1 s per 8 KiB expected: 1,240 s for MNIST's
9.9 MB training images), or that sends more bytes than expected is given up on.
Every failure raises ``DownloadError`` and leaves no partial file.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import http.client
import math
import os
import pathlib
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from .files import open_output

__all__ = ["DownloadError", "download_mnist", "download_deadline", "check_timeout", "cache_dir",
           "MNIST_URL", "MNIST_FILES", "MNIST_SIZES", "MIN_RATE"]

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

#: The longest ``timeout`` taken, in seconds: the socket layer cannot hold much more.
MAX_TIMEOUT = 86400.0
_STALL_BYTES = 1024                # a download must bring this much per `timeout` seconds
MIN_RATE = 8 << 10                 # ... and be done within `timeout` + its size / this (B/s)
_MAX_DOWNLOAD_BYTES = 64 << 20     # for files of unknown size

_DOWNLOAD_HINT = "pass a local folder of MNIST IDX files with --data DIR instead"


class DownloadError(RuntimeError):
    """A download failed: network, HTTP status, stalled server, too many bytes, bad
    checksum, or writing the file.  A RuntimeError, not an OSError, so that code
    handling file errors does not mistake it for one; no partial file is left."""


def cache_dir() -> pathlib.Path:
    """``$FASTSGD_CACHE``, else ``$XDG_CACHE_HOME/fastsgd``, else ``~/.cache/fastsgd``."""
    if os.environ.get("FASTSGD_CACHE"):
        return pathlib.Path(os.environ["FASTSGD_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return pathlib.Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "fastsgd"
    return pathlib.Path.home() / ".cache" / "fastsgd"


def _sha256_file(path: pathlib.Path) -> str:
    """Hex SHA-256 of a file's content."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_deadline(size: int | None, timeout: float) -> float:
    """Seconds a download of ``size`` bytes (None: unknown, up to 64 MiB) may take in all:
    ``timeout`` plus one second per ``MIN_RATE`` bytes."""
    return timeout + (size if size is not None else _MAX_DOWNLOAD_BYTES) / MIN_RATE


def check_timeout(timeout) -> float:
    """``timeout`` as float seconds, or ValueError unless it is a number in
    (0, ``MAX_TIMEOUT``]."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not math.isfinite(timeout) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout: expected a positive number of seconds up to "
                         f"{MAX_TIMEOUT:g} (a day), got {timeout!r}")
    return float(timeout)


def _failed(url: str, reason: str) -> DownloadError:
    return DownloadError(f"download of {url} failed ({reason}); {_DOWNLOAD_HINT}")


class _Watchdog:
    """Gives up on a connection that delivers less than ``min_bytes`` in some
    ``timeout``-second window, from the request on (the headers included), or that is
    still going ``deadline`` seconds after the request (``late`` then says so).

    The reading thread reports each chunk with ``feed``; a timer thread checks the
    same rule while that thread is blocked (slow headers, a silent server) and then
    shuts the socket down, so the blocked read returns at once.
    """

    def __init__(self, timeout: float, min_bytes: int, deadline: float = math.inf):
        self.timeout, self.min_bytes, self.deadline = timeout, min_bytes, deadline
        self.connection = None              # the HTTP connection, once one is made
        self.tripped = self.late = False
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
        if now - self._start > self.deadline:
            self.late = True
            return True
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
    watchdog = _Watchdog(timeout, min(_STALL_BYTES, size) if size else _STALL_BYTES,
                         download_deadline(size, timeout))
    too_slow = (_failed(url, f"stalled: less than {watchdog.min_bytes} bytes in {timeout:g} s"),
                _failed(url, f"too slow: not done within its deadline of "
                        f"{watchdog.deadline:.0f} s (the timeout + 1 s per "
                        f"{MIN_RATE // 1024} KiB)"))

    def stalled() -> DownloadError:
        return too_slow[watchdog.late]

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
                        raise stalled()
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
            raise (stalled() if gave_up else _failed(url, str(e.reason))) from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise (stalled() if watchdog.tripped or isinstance(e, TimeoutError) else
                   _failed(url, f"{type(e).__name__}: {e}")) from None
    if watchdog.tripped and not complete:      # a cut connection reads as the end of the data
        raise stalled()
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
    second window (``timeout`` up to ``MAX_TIMEOUT``, a day), that has not sent the
    whole file by its deadline (``download_deadline(size, timeout)``: ``timeout`` + 1 s
    per 8 KiB), or that sends more bytes than the file has, is given up on.  Any
    failure raises ``DownloadError`` and leaves no partial file.  Returns the folder.
    """
    timeout = check_timeout(timeout)
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
