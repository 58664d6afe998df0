"""Tensor's differentiable methods (arithmetic, in place, shapes, reductions,
elementwise) and the operations that run on the kernels of the contract (matmul,
the activations): each a forward with its ``backward`` beside it."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import backends
from ..backends import program
from .core import (
    _axes,
    _default_float,
    _index,
    _operand,
    _operand_tensor,
    _shape_args,
    _unbroadcast,
    _values,
    recorded,
)
from .switches import _GRAD_ENABLED, _kernels

if TYPE_CHECKING:
    from .core import Tensor


class TensorOperators:
    """The methods of ``Tensor`` that compute a new value from it (and its in-place
    changes); ``Tensor`` inherits them."""

    # ------------------------------------------------------- in place
    def _check_in_place(self, what):
        if self.requires_grad and _GRAD_ENABLED.get():
            raise RuntimeError(f"{what}: a tensor that requires gradients cannot be changed in "
                               f"place while operations are recorded; change .data, or do it "
                               f"inside fs.no_grad()")

    def _in_place(self, ufunc, other, what):
        self._check_in_place(what)
        ufunc(self.value, _values(_operand(other))[0], out=self.value, casting="same_kind")
        return self

    def __iadd__(self, other):
        return self._in_place(np.add, other, "+=")

    def __isub__(self, other):
        return self._in_place(np.subtract, other, "-=")

    def __imul__(self, other):
        return self._in_place(np.multiply, other, "*=")

    def __itruediv__(self, other):
        return self._in_place(np.true_divide, other, "/=")

    def add_(self, other):
        """``self += other`` in place."""
        return self.__iadd__(other)

    def sub_(self, other):
        """``self -= other`` in place."""
        return self.__isub__(other)

    def mul_(self, other):
        """``self *= other`` in place."""
        return self.__imul__(other)

    def zero_(self) -> "Tensor":
        """Set every element to 0 in place."""
        self._check_in_place("zero_")
        self.value[...] = 0
        return self

    def fill_(self, number) -> "Tensor":
        """Set every element to ``number`` in place."""
        self._check_in_place("fill_")
        self.value[...] = number
        return self

    def __setitem__(self, index, value):
        self._check_in_place("item assignment")
        self.value[_index(index)] = _values(_operand(value))[0]

    # ---------------------------------------------------- arithmetic
    def _binary(self, other, ufunc):
        """``other`` as an operand, the two values, and ``ufunc`` of them with PyTorch's
        promotion: what each binary operator's forward starts from."""
        other = _operand(other)
        a, b = _values(self, other)
        return other, a, b, _default_float(ufunc(a, b), self, other)

    def __add__(self, other):
        other, a, b, out = self._binary(other, np.add)

        def backward(g):
            return _unbroadcast(g, np.shape(a)), _unbroadcast(g, np.shape(b))
        return recorded(out, (self, other), backward, "add")

    __radd__ = __add__

    def __sub__(self, other):
        other, a, b, out = self._binary(other, np.subtract)

        def backward(g):
            return _unbroadcast(g, np.shape(a)), _unbroadcast(-g, np.shape(b))
        return recorded(out, (self, other), backward, "sub")

    def __rsub__(self, other):
        return _operand_tensor(other, self) - self

    def __mul__(self, other):
        other, a, b, out = self._binary(other, np.multiply)

        def backward(g):
            return _unbroadcast(g * b, np.shape(a)), _unbroadcast(g * a, np.shape(b))
        return recorded(out, (self, other), backward, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other):
        other, a, b, out = self._binary(other, np.true_divide)

        def backward(g):
            return (_unbroadcast(g / b, np.shape(a)),
                    _unbroadcast(-g * a / (np.asarray(b) * b), np.shape(b)))
        return recorded(out, (self, other), backward, "div")

    def __rtruediv__(self, other):
        return _operand_tensor(other, self) / self

    def __pow__(self, other):
        other, a, b, out = self._binary(other, np.power)

        def backward(g):
            ga = _unbroadcast(g * b * np.power(a, np.asarray(b) - 1), np.shape(a))
            gb = None
            if getattr(other, "requires_grad", False):
                gb = _unbroadcast(g * out * np.log(np.where(a > 0, a, 1)), np.shape(b))
            return ga, gb
        return recorded(out, (self, other), backward, "pow")

    def __rpow__(self, other):
        return _operand_tensor(other, self) ** self

    def __neg__(self):
        return recorded(np.negative(self.value), (self,), lambda g: (-g,), "neg")

    def __pos__(self):
        return self

    def __matmul__(self, other):
        return matmul(self, _operand_tensor(other, self))

    def __rmatmul__(self, other):
        return matmul(_operand_tensor(other, self), self)

    # ------------------------------------------------------- shapes
    def view(self, *shape) -> "Tensor":
        """The same elements in ``shape`` (one size may be -1)."""
        old = self.shape
        return recorded(self.value.reshape(_shape_args(shape)), (self,),
                       lambda g: (g.reshape(old),), "view")

    reshape = view

    def flatten(self) -> "Tensor":
        """As one dimension."""
        return self.view(-1)

    def unsqueeze(self, dim: int) -> "Tensor":
        """With a new dimension of size 1 at ``dim``."""
        old = self.shape
        return recorded(np.expand_dims(self.value, dim), (self,),
                       lambda g: (g.reshape(old),), "unsqueeze")

    def squeeze(self, dim=None) -> "Tensor":
        """Without dimensions of size 1 (or only ``dim``, when it has size 1)."""
        old = self.shape
        if dim is not None and self.shape[dim] != 1:
            return self
        return recorded(np.squeeze(self.value, dim), (self,),
                       lambda g: (g.reshape(old),), "squeeze")

    def t(self) -> "Tensor":
        """The transpose of a 2-D tensor (a 0-D or 1-D one is returned as it is)."""
        if self.ndim < 2:
            return self
        if self.ndim != 2:
            raise ValueError(f"t: expected at most 2 dimensions, got shape {self.shape}")
        return recorded(self.value.T, (self,), lambda g: (g.T,), "t")

    @property
    def T(self) -> "Tensor":
        """The transpose (dimensions reversed)."""
        if self.ndim < 2:
            return self
        return recorded(self.value.T, (self,), lambda g: (g.T,), "T")

    def __getitem__(self, index):
        index = _index(index)
        shape, dtype = self.shape, self.value.dtype

        def backward(g):
            full = np.zeros(shape, dtype)
            np.add.at(full, index, g)
            return (full,)
        return recorded(self.value[index], (self,), backward, "index")

    # --------------------------------------------------- reductions
    def sum(self, dim=None, keepdim: bool = False) -> "Tensor":
        """The sum over ``dim`` (an int or tuple; default: every element)."""
        axes, shape = _axes(dim), self.shape
        out = np.sum(self.value, axis=axes, keepdims=keepdim)
        if self.value.dtype == np.bool_:
            out = out.astype(np.int64)

        def backward(g):
            if axes is not None and not keepdim:
                g = np.expand_dims(g, axes)
            return (np.broadcast_to(g, shape),)
        return recorded(out, (self,), backward, "sum")

    def mean(self, dim=None, keepdim: bool = False) -> "Tensor":
        """The mean over ``dim`` (an int or tuple; default: every element)."""
        axes, shape = _axes(dim), self.shape
        out = _default_float(np.mean(self.value, axis=axes, keepdims=keepdim), self)
        count = self.value.size // max(np.asarray(out).size, 1) if self.value.size else 1

        def backward(g):
            if axes is not None and not keepdim:
                g = np.expand_dims(g, axes)
            return (np.broadcast_to(g / count, shape),)
        return recorded(out, (self,), backward, "mean")

    def max(self, other=None):
        """With ``other`` (a tensor or number): the elementwise maximum, where ties
        send the gradient to ``other`` (``x.max(tensor(0.0))`` is ReLU and runs on the
        relu kernels).  Without: the largest element."""
        if other is None:
            flat = int(np.argmax(self.value))
            shape, dtype = self.shape, self.value.dtype

            def backward(g):
                full = np.zeros(int(np.prod(shape)), dtype)
                full[flat] = g
                return (full.reshape(shape),)
            return recorded(self.value.reshape(-1)[flat], (self,), backward, "max")
        other = _operand(other)
        b = _values(other)[0]
        if (np.ndim(b) == 0 and float(b) == 0.0 and self.value.dtype.kind == "f"
                and not getattr(other, "requires_grad", False)):
            return self.relu()
        return _maximum(self, other)

    # ---------------------------------------------------- elementwise
    def abs(self) -> "Tensor":
        """``|x|``, elementwise."""
        x = self.value
        return recorded(np.abs(x), (self,), lambda g: (g * np.sign(x),), "abs")

    def exp(self) -> "Tensor":
        """``e**x``, elementwise."""
        out = np.exp(self.value)
        return recorded(out, (self,), lambda g: (g * out,), "exp")

    def log(self) -> "Tensor":
        """The natural logarithm, elementwise."""
        x = self.value
        return recorded(np.log(x), (self,), lambda g: (g / x,), "log")

    def sqrt(self) -> "Tensor":
        """The square root, elementwise."""
        out = np.sqrt(self.value)
        return recorded(out, (self,), lambda g: (g / (2 * out),), "sqrt")

    def clamp(self, min=None, max=None) -> "Tensor":
        """Values limited to [min, max]; no gradient where a limit applies."""
        x = self.value
        out = np.clip(x, min, max)
        return recorded(out, (self,), lambda g: (g * (out == x),), "clamp")

    def sigmoid(self) -> "Tensor":
        """``1 / (1 + exp(-x))``, elementwise, on the sigmoid kernels."""
        return _activation(self, "sigmoid")

    def relu(self) -> "Tensor":
        """``max(x, 0)``, elementwise, on the relu kernels."""
        return _activation(self, "relu")

    def tanh(self) -> "Tensor":
        """``tanh(x)``, elementwise, on the tanh kernels."""
        return _activation(self, "tanh")


# ------------------------------------------------------- kernel-backed ops
def _c(a):
    return np.ascontiguousarray(a)


def _activation(x: Tensor, name: str) -> Tensor:
    """The activation ``name`` on the kernels its registry record names; the backward takes
    what the record saves, the input (``saves="x"``) or the output (``"y"``), and dL/dy."""
    kind = program.LAYERS[program.LAYER_KINDS[name]]
    if x.value.dtype.kind != "f":
        x = x.float()
    a = _c(x.value)
    k = _kernels(a)
    with backends.skip_value_checks():
        out = getattr(k, kind.forward)(a) if k else _NUMPY_ACTIVATIONS[name](a)

    def backward(g):
        saved = a if kind.saves == "x" else out
        kb = _kernels(saved, g)
        if kb is None:
            return (_NUMPY_ACTIVATION_GRADS[name](saved, g),)
        with backends.skip_value_checks():
            return (getattr(kb, kind.backward)(saved, _c(g)),)
    return recorded(out, (x,), backward, name)


_NUMPY_ACTIVATIONS = {"sigmoid": lambda x: 1 / (1 + np.exp(-x)), "relu": lambda x: np.maximum(x, 0),
                      "tanh": np.tanh}
_NUMPY_ACTIVATION_GRADS = {"sigmoid": lambda y, g: g * y * (1 - y), "relu": lambda x, g: g * (x > 0),
                           "tanh": lambda y, g: g * (1 - y * y)}


def _maximum(x: Tensor, other) -> Tensor:
    a, b = _values(x, other)
    out = _default_float(np.maximum(a, b), x, other)
    mine = np.greater(a, b)

    def backward(g):
        return _unbroadcast(g * mine, np.shape(a)), _unbroadcast(g * ~mine, np.shape(b))
    return recorded(out, (x, other), backward, "maximum")


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``.  Two 2-D float tensors use the matmul kernels: forward ``matmul``,
    backward ``matmul_backward_input`` (dA = dY @ B.T) and ``matmul_backward_weight``
    (dB = A.T @ dY); other shapes are NumPy's ``@``."""
    x, w = _c(a.value), _c(b.value)
    k = _kernels(x, w) if x.ndim == 2 and w.ndim == 2 and x.dtype.kind == "f" else None
    if k is None:
        return _matmul_numpy(a, b)
    with backends.skip_value_checks():
        out = k.matmul(x, w)

    def backward(g):
        g = _c(g.astype(x.dtype, copy=False))
        kb = _kernels(x, w, g) or backends.get("numpy")
        with backends.skip_value_checks():
            ga = kb.matmul_backward_input(g, w) if a.requires_grad else None
            gb = kb.matmul_backward_weight(x, g) if b.requires_grad else None
        return ga, gb
    return recorded(out, (a, b), backward, "matmul")


def _matmul_numpy(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` by NumPy for any shapes: a 1-D operand is a row (left) or a column (right)."""
    av, bv = a.value, b.value
    out = _default_float(np.matmul(av, bv), a, b)
    a2 = av[None, :] if av.ndim == 1 else av
    b2 = bv[:, None] if bv.ndim == 1 else bv

    def backward(g):
        g2 = np.reshape(g, np.matmul(a2, b2).shape)
        ga = _unbroadcast(g2 @ np.swapaxes(b2, -1, -2), a2.shape).reshape(av.shape)
        gb = _unbroadcast(np.swapaxes(a2, -1, -2) @ g2, b2.shape).reshape(bv.shape)
        return ga, gb
    return recorded(out, (a, b), backward, "matmul")
