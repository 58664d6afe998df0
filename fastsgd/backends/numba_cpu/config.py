"""Where the numba backend caches, its threading layer, its lock, and the compile options.

Imported first by the package (``__init__``), before anything is compiled: the
threading layer and, where needed, the cache folder must be set before the first
``@njit(cache=True)`` decoration.
"""
import os
import tempfile
import threading

import numba

from .. import numba_math

if not os.environ.get("NUMBA_THREADING_LAYER") and numba.config.THREADING_LAYER == "default":
    numba.config.THREADING_LAYER = "workqueue"



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

