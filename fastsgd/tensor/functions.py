"""The functions of the package that combine tensors: joins (``stack``, ``cat``,
``where``), the elementwise functions (``exp``, ``sigmoid`` ...) and the linear layer."""
from __future__ import annotations

import numpy as np

from .. import backends
from .core import (
    Tensor,
    _array,
    _default_float,
    _operand,
    _operand_tensor,
    _unbroadcast,
    _values,
    recorded,
)
from .operators import _c
from .switches import _kernels


def linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``x @ w + b`` for x (B, I), w (I, O), b (O,), on the ``linear_forward`` and
    ``linear_backward`` kernels when they take the dtype (else as two operations)."""
    xv, wv, bv = _c(_array(x)), _c(w.value), _c(b.value)
    k = _kernels(xv, wv, bv) if xv.ndim == 2 and xv.dtype.kind == "f" else None
    if k is None:
        return _operand_tensor(x, w) @ w + b
    x = x if isinstance(x, Tensor) else Tensor(xv)
    with backends.skip_value_checks():
        out = k.linear_forward(xv, wv, bv)

    def backward(g):
        with backends.skip_value_checks():
            dx, dw, db = k.linear_backward(xv, wv, _c(g.astype(xv.dtype, copy=False)),
                                           need_dx=x.requires_grad)
        return dx, dw, db
    return recorded(out, (x, w, b), backward, "linear")


def stack(tensors, dim: int = 0) -> Tensor:
    """The tensors (of one shape) joined along a new dimension ``dim``."""
    parts = [_operand_tensor(t, Tensor(np.zeros(0, np.float32))) for t in tensors]
    if not parts:
        raise ValueError("stack: expected at least one tensor")
    out = np.stack([p.value for p in parts], axis=dim)

    def backward(g):
        return tuple(np.take(g, i, axis=dim) for i in range(len(parts)))
    return recorded(out, parts, backward, "stack")


def cat(tensors, dim: int = 0) -> Tensor:
    """The tensors joined along their existing dimension ``dim``."""
    parts = [t if isinstance(t, Tensor) else Tensor(_array(t)) for t in tensors]
    if not parts:
        raise ValueError("cat: expected at least one tensor")
    out = np.concatenate([p.value for p in parts], axis=dim)
    edges = np.cumsum([p.shape[dim] for p in parts])[:-1]

    def backward(g):
        return tuple(np.split(g, edges, axis=dim))
    return recorded(out, parts, backward, "cat")


def where(condition, x, y) -> Tensor:
    """``x`` where ``condition`` holds, else ``y``, elementwise with broadcasting."""
    cond = _array(condition).astype(bool)
    like = x if isinstance(x, Tensor) else y if isinstance(y, Tensor) else None
    x = _operand(x) if like is None else _operand_tensor(x, like)
    y = _operand(y) if like is None else _operand_tensor(y, like)
    a, b = _values(x, y)
    out = _default_float(np.where(cond, a, b), x, y)

    def backward(g):
        return (_unbroadcast(np.where(cond, g, 0), np.shape(a)),
                _unbroadcast(np.where(cond, 0, g), np.shape(b)))
    return recorded(out, (x, y), backward, "where")


def exp(x) -> Tensor:
    """``e**x``, elementwise."""
    return _operand_tensor(x, Tensor(np.zeros(0, np.float32))).exp()


def log(x) -> Tensor:
    """The natural logarithm, elementwise."""
    return _operand_tensor(x, Tensor(np.zeros(0, np.float32))).log()


def sigmoid(x) -> Tensor:
    """``1 / (1 + exp(-x))``, elementwise, on the sigmoid kernels."""
    return _operand_tensor(x, Tensor(np.zeros(0, np.float32))).sigmoid()


def relu(x) -> Tensor:
    """``max(x, 0)``, elementwise, on the relu kernels."""
    return _operand_tensor(x, Tensor(np.zeros(0, np.float32))).relu()


def tanh(x) -> Tensor:
    """``tanh(x)``, elementwise, on the tanh kernels."""
    return _operand_tensor(x, Tensor(np.zeros(0, np.float32))).tanh()


def abs(x) -> Tensor:   # noqa: A001 - torch.abs
    """``|x|``, elementwise."""
    return _operand_tensor(x, Tensor(np.zeros(0, np.float32))).abs()
