"""The backend registry.

    >>> from fastsgd import backends
    >>> backends.available()            # {name: True | "reason it is unavailable"}
    >>> nb = backends.get("numba")      # kernels under the contract's names
    >>> nb.matmul(a, b)                 # a @ b for 2-D float32 arrays

A backend is imported on first use; when its import fails (no compiler, no GPU)
the failure is kept as the reason it is unavailable, and ``import fastsgd`` is
never affected.  ``default_name()`` is ``$FASTSGD_BACKEND`` when set, else the
first available backend in ``PREFERENCE`` (fastest first).  ``runtime_info()``
says how the available CPU backends run (kernel ISA, threads, threading layer);
``warm_up()`` fills Numba's disk cache for the numba backend.
"""
from __future__ import annotations

import importlib
import os

import numpy as np

from . import arrays
from .contract import KERNELS, Backend, skip_value_checks

__all__ = ["KERNELS", "Backend", "available", "get", "default_name", "names",
           "skip_value_checks", "BackendUnavailable", "PREFERENCE", "runtime_info", "warm_up"]

#: name -> (module, float dtypes it computes in); the order is the default preference,
#: fastest first for the book's models: the compiled CPU backends train a whole epoch
#: per call on host arrays, while ``cuda`` copies data to the device and pays a launch
#: (and, with value checks on, a read-back) per call, so on the book's small layers it
#: is used when asked for by name.
_REGISTRY: dict[str, tuple[str, tuple[str, ...]]] = {
    "c": ("fastsgd.backends.c_ext", ("float32",)),
    "numba": ("fastsgd.backends.numba_cpu", ("float32",)),
    "cuda": ("fastsgd.backends.cuda", ("float32",)),
    "numpy": ("fastsgd.backends.numpy_ref", ("float32", "float64")),
}
PREFERENCE = tuple(_REGISTRY)

_loaded: dict[str, Backend] = {}
_reasons: dict[str, str] = {}


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


def names() -> list[str]:
    """Every backend fastsgd knows, available or not, fastest first."""
    return list(PREFERENCE)


def _load(name: str) -> Backend | None:
    if name in _loaded:
        return _loaded[name]
    if name in _reasons:
        return None
    module_name, dtypes = _REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
        backend = getattr(module, "make_backend", None)
        _loaded[name] = backend() if backend else Backend(name, module, dtypes)
    except Exception as exc:  # any import failure means "unavailable", with the reason
        _reasons[name] = str(exc) or type(exc).__name__
        return None
    return _loaded[name]


def available() -> dict[str, bool | str]:
    """``{name: True}`` for each usable backend, ``{name: "reason"}`` for the others."""
    return {name: True if _load(name) else _reasons[name] for name in PREFERENCE}


def default_name() -> str:
    """``$FASTSGD_BACKEND`` if set, else the fastest available backend."""
    chosen = os.environ.get("FASTSGD_BACKEND")
    if chosen:
        return chosen
    return next(name for name in PREFERENCE if _load(name))


def get(name: str | None = None) -> Backend:
    """The backend called ``name`` (default: ``default_name()``).

    Raises ``ValueError`` for an unknown name and ``BackendUnavailable`` (with the
    reason) for a known one that cannot run here.
    """
    if isinstance(name, Backend):
        return name
    name = name or default_name()
    if name not in _REGISTRY:
        raise ValueError(f"backend: unknown name {name!r}; expected one of {', '.join(PREFERENCE)}")
    backend = _load(name)
    if backend is None:
        raise BackendUnavailable(f"backend {name!r} is unavailable: {_reasons[name]}")
    return backend


def _module(name: str):
    """The module of the available backend ``name``, None where it is unavailable."""
    return importlib.import_module(_REGISTRY[name][0]) if _load(name) else None


def _c_finite_check():
    """The C extension's ``all_finite``, or None where the C backend is unavailable."""
    module = _module("c")
    return None if module is None else module.all_finite


arrays.register_finite_check(_c_finite_check)


def runtime_info() -> dict[str, dict]:
    """How the available compiled CPU backends run; an unavailable one is left out.

    ``{"c": {"isa": matmul micro-kernel, "threads": n},
    "numba": {"threading_layer": name, "threads": n}}``.  Numba picks its threading
    layer when its thread pool starts, so this runs one small numba kernel first.
    """
    info = {}
    c = _module("c")
    if c is not None:
        info["c"] = {"isa": c.isa(), "threads": c.threads()}
    nb = _module("numba")
    if nb is not None:
        import numba
        ones = np.ones((4, 4), np.float32)
        get("numba").matmul(ones, ones)                  # starts the thread pool
        info["numba"] = {"threading_layer": nb.threading_layer(),
                         "threads": numba.get_num_threads()}
    return info


def warm_up() -> dict:
    """Compile, or load from Numba's disk cache, every function of the numba backend.

    Returns ``{"compiled": [names], "seconds": s, "cache_dir": folder}``
    (``numba_warmup.warm_up``); raises ``BackendUnavailable`` without numba.
    """
    get("numba")
    from .numba_warmup import warm_up as numba_warm_up
    return numba_warm_up()
