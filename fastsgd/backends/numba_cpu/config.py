"""Where the numba backend caches, its threading layer, its lock, and the compile options.

Imported first by the package (``__init__``), before anything is compiled: the
threading layer and, where needed, the cache folder must be set before the first
``@njit(cache=True)`` decoration.
"""
import ctypes
import os
import sys
import tempfile
import threading
import time
from importlib import metadata

import numba

from .. import numba_math

#: The file of the TBB runtime Numba's tbb layer links to, by platform.
_TBB_LIBRARY = {"linux": "libtbb.so.12", "darwin": "libtbb.12.dylib", "win32": "tbb12.dll"}


def _tbb_layer_loads() -> bool:
    """Whether Numba's tbb threading layer can load here, after loading the ``tbb``
    package's runtime library by its path.

    The ``tbb`` wheel puts the library in the environment's ``lib`` folder, where the
    dynamic loader does not look (outside conda), so Numba finds no tbb layer unless
    the library is already loaded; once it is, Numba's own load by name finds it.
    """
    try:
        files = metadata.files("tbb") or []
    except metadata.PackageNotFoundError:
        return False
    name = _TBB_LIBRARY.get(sys.platform)
    path = next((f.locate() for f in files if f.name == name), None)
    if path is None:
        return False
    try:
        ctypes.CDLL(str(path), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        from numba.np.ufunc import parallel
        check_version = getattr(parallel, "_check_tbb_version_compatible", None)
        if check_version is not None:
            check_version()
        from numba.np.ufunc import tbbpool  # noqa: F401
    except (OSError, ImportError):
        return False
    return True


if not os.environ.get("NUMBA_THREADING_LAYER") and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "tbb" if _tbb_layer_loads() else "workqueue"

#: Products of at least this many multiply-adds (gathers of as many elements) run on
#: Numba's threads.  TBB's workers take chunks of rows as they come free and the
#: calling thread works too, so a busy second core costs a fair share: on a shared
#: 2-core Xeon two threads paid from ~4e6 (64x784x128 at batch 64: 64-75 -> 42-46 us;
#: 256x784x128 250-290 -> 138-160 us; 64x128x128 12 -> 13-26 us did not).  Workqueue
#: splits the rows evenly up front, so a busy second core held the whole product up
#: (256x784x128: one thread 110-125 GFLOP/s, two 96-98, 165 at best); with it,
#: threads pay only from ~1e8 (1024^3: 43 vs 77 GFLOP/s).
PARALLEL_MIN_MACS = 1 << 22 if numba.config.THREADING_LAYER == "tbb" else 1 << 26
#: The fused epoch's products run on the threads from this many multiply-adds.  Its
#: first layer is split by input features (``split``), so each core steps and reads its
#: own half of the weights: at batch 64 (784-128-10, 6.4e6 multiply-adds a product) the
#: Fashion-MNIST epoch went from 153 ms on one thread to 117 on two (split by rows of the
#: batch, two threads had taken 165: the weights moved between the cores every step).
EPOCH_PARALLEL_MIN_MACS = 1 << 22 if numba.config.THREADING_LAYER == "tbb" else 1 << 26
#: The fused epoch gathers a batch of rows of x onto the threads from this many elements:
#: rows picked at random lie far apart in memory, and two cores wait for them in
#: parallel (784 floats a row, the Fashion-MNIST epoch: 28-32 ms of gathers an epoch on
#: one thread, 8-15 on two with TBB, at batch 64 and 256 alike).
PARALLEL_MIN_GATHER = 1 << 15 if numba.config.THREADING_LAYER == "tbb" else 1 << 26



def _writable_dir(path) -> bool:
    """Whether the folder ``path`` exists or can be made, and a file can be written there."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
    except OSError:
        return False
    return True


def fallback_cache_dir(package_dir, user_dir):
    """The folder Numba must be told to cache in, or None when its own choice works.

    Numba caches next to the source (``package_dir/__pycache__``), else under
    ``user_dir``; when neither can be written it would refuse to decorate with
    ``cache=True``: then a per-user folder in the temporary directory.
    """
    if numba.config.CACHE_DIR:
        return None
    if _writable_dir(os.path.join(package_dir, "__pycache__")) or _writable_dir(user_dir):
        return None
    uid = os.getuid() if hasattr(os, "getuid") else os.getpid()
    return os.path.join(tempfile.gettempdir(), f"fastsgd-numba-cache-{uid}")


def _user_cache_dir():
    from numba.misc.appdirs import AppDirs
    return AppDirs(appname="numba", appauthor=False).user_cache_dir


_FALLBACK = fallback_cache_dir(os.path.dirname(os.path.abspath(__file__)), _user_cache_dir())
if _FALLBACK:
    numba.config.CACHE_DIR = _FALLBACK

class Pace:
    """Whether a product called from Python runs on the threads now: not for a while
    after one on the threads ran slower than one thread runs it.

    A worker kept off its core (by NumPy's BLAS workers, which spin for ~0.1 s after
    each call, or by another process) holds the whole product up until the scheduler
    lets it run again: NumPy ``a @ b`` alternating with a threaded 256x784x128 matmul
    took 7-18 ms a pair instead of 0.4.  A threaded product clearly slower than the
    calling thread alone runs its shape (below ALONE_MARGIN of its best rate there; a
    hiccup of a few microseconds is not a held-up worker), or, before that is known,
    below HELD_UP of the best rate its shape ran at on the threads, sends the next ones
    to the calling thread for SOLO_MIN_S, doubled up to SOLO_MAX_S while the threads
    stay held up:
    longer than BLAS workers spin, so that alternating with NumPy costs a stall only
    every SOLO_MAX_S (the pair of ``benchmarks/calm.py alternate``: 1.03x the two alone;
    with at most 0.04 s, 1.5-5.9x).  The first threaded call after more than IDLE_S
    without a product is not judged: its workers wake up first (256x784x128 after a
    0.15 s pause: ~350 us, against 130 warm and 260 on one thread), and judging it sent
    every product of a caller working in bursts to one thread.  The split never
    changes the results.  Updated under ``_PARALLEL``.  The fused epoch, one compiled
    call, does not pace.
    """

    HELD_UP = 0.55
    ALONE_MARGIN = 0.75
    SOLO_MIN_S, SOLO_MAX_S = 0.005, 0.16
    IDLE_S = 0.002
    MAX_SHAPES = 64

    def __init__(self, clock=time.perf_counter):
        self.clock = clock
        self.best: dict = {}          # shape -> best multiply-adds per second on the threads
        self.best_alone: dict = {}    # shape -> best multiply-adds per second on one thread
        self.solo_until = 0.0
        self.solo_s = self.SOLO_MIN_S
        self.last_end = -1.0          # when the last product ended

    def threads_now(self) -> bool:
        """Whether the threads should take the next product."""
        return self.clock() >= self.solo_until

    def _keep_best(self, table: dict, shape, rate: float) -> float:
        """The best rate recorded for ``shape`` before this one; records ``rate`` if better."""
        best = table.get(shape, 0.0)
        if rate > best and (best or len(table) < self.MAX_SHAPES):
            table[shape] = rate
        return best

    def ran_alone(self, shape, macs: int, seconds: float) -> None:
        """Record a product of ``macs`` multiply-adds that took ``seconds`` on one thread."""
        self._keep_best(self.best_alone, shape, macs / max(seconds, 1e-9))
        self.last_end = self.clock()

    def ran(self, shape, macs: int, started: float, seconds: float) -> None:
        """Record a product of ``macs`` multiply-adds that took ``seconds`` on the threads."""
        rate = macs / max(seconds, 1e-9)
        woken = started - self.last_end > self.IDLE_S
        self.last_end = started + seconds
        if woken:
            return
        best = self._keep_best(self.best, shape, rate)
        alone = self.best_alone.get(shape)
        if rate < (self.ALONE_MARGIN * alone if alone else self.HELD_UP * best):
            self.solo_until = started + seconds + self.solo_s
            self.solo_s = min(2 * self.solo_s, self.SOLO_MAX_S)
        else:
            self.solo_s = self.SOLO_MIN_S


PACE = Pace()

#: Held around every parallel kernel (see the package docstring).  Read it as
#: ``config._PARALLEL``: a forked child replaces it.
_PARALLEL = threading.Lock()


def _new_lock_after_fork():
    """A forked child gets a free lock: the parent's may have been held by a thread
    inside a kernel at the fork, and that thread does not exist in the child."""
    global _PARALLEL
    _PARALLEL = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)

#: Elementwise kernels use fastmath without the no-NaN / no-Inf assumptions, so NaN in
#: gives NaN out (as in NumPy); the matmuls, which only multiply and add, keep full
#: fastmath (it vectorises their inner loops much better).  The numpy error model: no
#: Python-style ZeroDivisionError checks in compiled loops.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_MATMUL = dict(cache=True, parallel=True, fastmath=True, error_model="numpy")
_ELEMENTWISE = dict(cache=True, fastmath=_FASTMATH, error_model="numpy")
#: Loops over ``numba_math``'s sigmoid and tanh: their exp must not be reassociated.
_TRANSCENDENTAL = dict(cache=True, fastmath=numba_math.FASTMATH, error_model="numpy")
_PLAIN = dict(cache=True, error_model="numpy")

