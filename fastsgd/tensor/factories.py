"""The factories: new tensors from data (``tensor``), ranges (``arange``, ``linspace``),
constants (``zeros``, ``ones`` ...) and random samples (``randn``, ``rand``, seeded by
``manual_seed``)."""
from __future__ import annotations

import numpy as np

from ..random import global_rng, set_seed
from .core import Tensor, _array, _shape_args


def manual_seed(seed: int) -> None:
    """Seed ``randn``/``rand`` and, as ``fastsgd.set_seed`` does, layer initialisation and
    shuffling."""
    set_seed(seed)


def tensor(data, requires_grad: bool = False) -> Tensor:
    """A new tensor holding a copy of ``data`` (a number, nested list, array or tensors):
    Python floats become float32, ints int64; an array keeps its dtype."""
    value = _array(data)
    if isinstance(data, (np.ndarray, Tensor)):
        value = value.copy()
    return Tensor(value, requires_grad=requires_grad)


def arange(start, end=None, step=1) -> Tensor:
    """``start, start + step, ...`` below ``end`` (``arange(n)``: 0 .. n-1); int64 for
    integer arguments, else float32."""
    if end is None:
        start, end = 0, start
    ints = all(isinstance(v, (int, np.integer)) for v in (start, end, step))
    return Tensor(np.arange(start, end, step, dtype=np.int64 if ints else np.float32))


def randn(*shape, requires_grad: bool = False) -> Tensor:
    """Standard normal float32 samples of ``shape``, drawn from the generator that
    ``manual_seed`` seeds."""
    values = global_rng().standard_normal(_shape_args(shape), dtype=np.float32)
    return Tensor(values, requires_grad=requires_grad)


def rand(*shape, requires_grad: bool = False) -> Tensor:
    """Uniform float32 samples in [0, 1) of ``shape``, from the generator ``manual_seed`` seeds."""
    values = global_rng().random(_shape_args(shape), dtype=np.float32)
    return Tensor(values, requires_grad=requires_grad)


def zeros(*shape, requires_grad: bool = False) -> Tensor:
    """float32 zeros of ``shape``."""
    return Tensor(np.zeros(_shape_args(shape), np.float32), requires_grad=requires_grad)


def ones(*shape, requires_grad: bool = False) -> Tensor:
    """float32 ones of ``shape``."""
    return Tensor(np.ones(_shape_args(shape), np.float32), requires_grad=requires_grad)


def zeros_like(t: Tensor) -> Tensor:
    """Zeros of ``t``'s shape and dtype."""
    return Tensor(np.zeros_like(_array(t)))


def ones_like(t: Tensor) -> Tensor:
    """Ones of ``t``'s shape and dtype."""
    return Tensor(np.ones_like(_array(t)))


def linspace(start, end, steps: int) -> Tensor:
    """``steps`` float32 values evenly from ``start`` to ``end``."""
    return Tensor(np.linspace(start, end, steps, dtype=np.float32))
