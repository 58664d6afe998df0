"""Tensors with reverse-mode automatic differentiation, spelled as PyTorch spells them.

    import fastsgd as fs
    x = fs.tensor([3., 4., 10.]).requires_grad_()
    y = (x ** 2).sum()
    y.backward()
    x.grad                      # tensor([ 6.,  8., 20.])

A ``Tensor`` holds a NumPy array (``t.value``) and, when it was computed from tensors
that require gradients, the function that carries a gradient back to them.  Each
operation below is a forward and, beside it, its ``backward``: given dL/d(output) it
returns dL/d(each input).  ``loss.backward()`` visits the graph in reverse
topological order and adds each leaf's gradient into its ``.grad``.

Where a kernel of the contract computes an operation — matmul and its two backward
products, the linear layer, sigmoid / ReLU / tanh forward and backward, the losses
(``fastsgd.mnist_loss(preds, targets)`` on tensors) and the SGD update
(``fastsgd.SGD``) — the tensor calls the selected backend's kernel (``use_backend``;
default ``fastsgd.backends.default_name()``), or the NumPy reference's for a dtype
the backend does not compute in (float64) or on a device backend, whose arrays
are not NumPy's.  Everything else is NumPy.

Dtypes follow PyTorch: Python floats make float32 tensors, Python ints int64, and an
integer tensor combined with a float scalar gives float32.

Note: ``fastsgd.tensor`` is the function that makes a tensor; this module is
``from fastsgd.tensor import Tensor``.
"""
from __future__ import annotations

import contextlib
import contextvars
import numbers

import numpy as np

from . import backends
from .random import global_rng, set_seed

__all__ = ["Tensor", "tensor", "arange", "randn", "rand", "zeros", "ones", "zeros_like",
           "ones_like", "linspace", "stack", "cat", "where", "exp", "log", "sigmoid", "relu",
           "tanh", "abs", "linear", "manual_seed", "no_grad", "enable_grad", "is_grad_enabled",
           "use_backend", "current_backend", "kernels_for", "recorded", "matmul"]

_GRAD_ENABLED = contextvars.ContextVar("fastsgd_grad_enabled", default=True)
_BACKEND = contextvars.ContextVar("fastsgd_tensor_backend", default=None)


# ------------------------------------------------------------------ switches
class no_grad(contextlib.ContextDecorator):
    """``with fs.no_grad():`` operations inside record nothing (also a decorator)."""

    def __enter__(self):
        self._token = _GRAD_ENABLED.set(False)

    def __exit__(self, *exc):
        _GRAD_ENABLED.reset(self._token)
        return False


class enable_grad(contextlib.ContextDecorator):
    """``with fs.enable_grad():`` record operations again inside a ``no_grad`` block."""

    def __enter__(self):
        self._token = _GRAD_ENABLED.set(True)

    def __exit__(self, *exc):
        _GRAD_ENABLED.reset(self._token)
        return False


def is_grad_enabled() -> bool:
    """Whether operations are being recorded for ``backward`` (False inside ``no_grad``)."""
    return _GRAD_ENABLED.get()


@contextlib.contextmanager
def use_backend(name):
    """``with use_backend("numba"):`` tensor operations call that backend's kernels inside."""
    token = _BACKEND.set(backends.get(name))
    try:
        yield
    finally:
        _BACKEND.reset(token)


def current_backend():
    """The backend whose kernels tensor operations call: the one ``use_backend`` chose,
    else the default; a device backend (cuda) gives the NumPy reference."""
    chosen = _BACKEND.get() or backends.get()
    return backends.get("numpy") if chosen.arrays.device else chosen


def _kernels(*arrays):
    """The backend to compute on ``arrays``: the current one when it takes their (common)
    float dtype, else the NumPy reference when it does, else None (a NumPy expression)."""
    dtype = arrays[0].dtype
    if any(a.dtype != dtype or a.ndim == 0 or a.size == 0 for a in arrays):
        return None
    for backend in (current_backend(), backends.get("numpy")):
        if dtype in backend.dtypes:
            return backend
    return None


def kernels_for(array):
    """The backend whose kernels compute on ``array``: as ``_kernels``, with the NumPy
    reference when none fits."""
    return _kernels(array) or backends.get("numpy")


def _c(a):
    return np.ascontiguousarray(a)


def manual_seed(seed: int) -> None:
    """Seed ``randn``/``rand`` and, as ``fastsgd.set_seed`` does, layer initialisation and
    shuffling."""
    set_seed(seed)


# ------------------------------------------------------------------ helpers
def _array(x, dtype=None) -> np.ndarray:
    """``x`` (a Tensor, array, number or nested list) as a NumPy array with PyTorch's
    default dtypes: Python floats float32, ints int64, bools bool."""
    if isinstance(x, Tensor):
        return x.value if dtype is None else x.value.astype(dtype)
    if isinstance(x, np.ndarray):
        return x if dtype is None else x.astype(dtype)
    if isinstance(x, (list, tuple)) and any(isinstance(e, Tensor) for e in x):
        x = [e.value if isinstance(e, Tensor) else e for e in x]
    a = np.asarray(x)
    if dtype is not None:
        return a.astype(dtype)
    if a.dtype == np.float64 and not isinstance(x, np.generic):
        return a.astype(np.float32)
    if a.dtype.kind == "i" and a.dtype != np.int64:
        return a.astype(np.int64)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"tensor: expected numbers, got {a.dtype} from {type(x).__name__}")
    return a


def _host(array, what):
    """``array`` itself when it is a NumPy array, else TypeError: a parameter moved to a
    device backend (cuda) by a Learner keeps its arrays there, and tensors compute on the
    host."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{what}: this parameter's array lives on a device backend "
                        f"({type(array).__name__}); tensors compute on NumPy arrays (use "
                        f"grad_value / value with the backend's kernels)")
    return array


def _operand(x):
    """A Python number stays a (weak) scalar; anything else becomes a Tensor."""
    if isinstance(x, (numbers.Number, np.generic)) and not isinstance(x, np.ndarray):
        return x
    return x if isinstance(x, Tensor) else Tensor(_array(x))


def _values(*operands):
    return [x.value if isinstance(x, Tensor) else x for x in operands]


def _default_float(out, *operands):
    """PyTorch's promotion: integers with a float scalar give float32, not float64."""
    if isinstance(out, np.ndarray) and out.dtype == np.float64 and not any(
            isinstance(x, Tensor) and x.value.dtype == np.float64 for x in operands):
        return out.astype(np.float32)
    return out


def _unbroadcast(g, shape):
    """Sum gradient ``g`` down to ``shape``: the inverse of broadcasting."""
    if g.shape == tuple(shape):
        return g
    extra = g.ndim - len(shape)
    if extra:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def recorded(value, parents, backward, op: str) -> "Tensor":
    """The Tensor of an operation with result ``value`` computed from ``parents``.

    When operations are recorded and a parent requires gradients, the result keeps
    ``backward``: a function of dL/d(result) returning dL/d(each parent) (None for
    one that needs none).
    """
    value = np.asarray(value)
    if _GRAD_ENABLED.get():
        needs = [p for p in parents if isinstance(p, Tensor) and p.requires_grad]
        if needs and value.dtype.kind == "f":
            out = Tensor(value)
            out.requires_grad = True
            out._parents = tuple(p if isinstance(p, Tensor) else None for p in parents)
            out._backward = backward
            out._op = op
            return out
    return Tensor(value)


def _axes(dim):
    if dim is None:
        return None
    return tuple(dim) if isinstance(dim, (tuple, list)) else int(dim)


def _shape_args(shape):
    """``f(2, 3)`` and ``f((2, 3))`` both mean shape (2, 3)."""
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return tuple(int(n) for n in shape)


# ------------------------------------------------------------------ Tensor
class Tensor:
    """An n-dimensional array that can record the operations made on it.

    ``value`` is the NumPy array; ``requires_grad`` says whether gradients flow to
    it; ``grad`` is dL/d(self) after ``backward`` (a Tensor, or None) and
    ``grad_value`` that gradient's array itself (what kernels write into).
    """

    __array_ufunc__ = None       # ndarray (op) Tensor defers to the Tensor's operator
    __hash__ = object.__hash__   # == builds a boolean tensor, so hash by identity

    def __init__(self, value, requires_grad: bool = False):
        self.value = value if isinstance(value, np.ndarray) else _array(value)
        self.requires_grad = False
        self.grad_value = None
        self._parents = ()
        self._backward = None
        self._op = ""
        if requires_grad:
            self.requires_grad_()

    # -------------------------------------------------------------- basics
    @property
    def shape(self) -> tuple:
        """The dimensions, a tuple."""
        return self.value.shape

    def size(self, dim=None):
        """The shape, or the length of dimension ``dim``."""
        return self.value.shape if dim is None else self.value.shape[dim]

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return self.value.ndim

    def dim(self) -> int:
        """The number of dimensions."""
        return self.value.ndim

    def numel(self) -> int:
        """The number of elements."""
        return self.value.size

    @property
    def dtype(self):
        """The NumPy dtype of the elements."""
        return self.value.dtype

    @property
    def is_leaf(self) -> bool:
        """True unless this tensor was computed from tensors that require gradients."""
        return self._backward is None

    def __len__(self):
        if self.value.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return len(self.value)

    def __iter__(self):
        if self.value.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(len(self.value)))

    def __repr__(self):
        body = np.array2string(self.value, separator=", ", prefix="tensor(")
        extra = ", requires_grad=True" if self.requires_grad and self.is_leaf else ""
        extra += f", grad_fn=<{self._op}>" if not self.is_leaf else ""
        if self.value.dtype not in (np.float32, np.int64, np.bool_):
            extra += f", dtype={self.value.dtype}"
        return f"tensor({body}{extra})"

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.value.size != 1:
            raise ValueError(f"item: only a one-element tensor has one value, this has shape "
                             f"{self.shape}")
        return self.value.item()

    def __float__(self):
        return float(self.item())

    def __int__(self):
        return int(self.item())

    def __index__(self):
        if self.value.dtype.kind not in "iu":
            raise TypeError("only integer tensors can be used as an index")
        return int(self.item())

    def __bool__(self):
        if self.value.size != 1:
            raise ValueError(f"the truth of a tensor of shape {self.shape} is ambiguous; use "
                             f".any() or .all()")
        return bool(self.item())

    def any(self) -> "Tensor":
        """Whether any element is true (non-zero)."""
        return Tensor(np.any(self.value))

    def all(self) -> "Tensor":
        """Whether every element is true (non-zero)."""
        return Tensor(np.all(self.value))

    def __format__(self, spec):
        return format(self.item(), spec) if self.value.size == 1 and spec else repr(self)

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def numpy(self) -> np.ndarray:
        """The NumPy array itself (shares memory)."""
        return self.value

    def tolist(self):
        """The values as (nested) Python lists."""
        return self.value.tolist()

    # --------------------------------------------------------- gradients
    def requires_grad_(self, requires_grad: bool = True) -> "Tensor":
        """Make this tensor a leaf whose gradient ``backward`` computes; returns self."""
        if requires_grad and self.value.dtype.kind != "f":
            raise TypeError(f"requires_grad_: only floating-point tensors can require "
                            f"gradients, this one is {self.value.dtype}; call .float() first")
        self.requires_grad = bool(requires_grad)
        return self

    @property
    def grad(self) -> "Tensor | None":
        """dL/d(self) summed over every ``backward`` since it was last cleared, or None.

        Assign None to clear it (``p.grad = None``) or zero it in place with
        ``p.grad.zero_()``.
        """
        if self.grad_value is None:
            return None
        return Tensor(_host(self.grad_value, "grad"))

    @grad.setter
    def grad(self, value):
        if value is None:
            self.grad_value = None
            return
        value = _array(value)
        if value.shape != self.shape:
            raise ValueError(f"grad: expected shape {self.shape}, got {value.shape}")
        self.grad_value = value

    @property
    def data(self) -> "Tensor":
        """The same values as a tensor that records nothing: ``p.data -= lr * p.grad``
        updates ``p`` in place, outside the graph."""
        return Tensor(_host(self.value, "data"))

    @data.setter
    def data(self, new):
        new = _array(new)
        if new is self.value:
            return
        if new.shape != self.shape:
            raise ValueError(f"data: expected shape {self.shape}, got {new.shape}")
        self.value = new

    def detach(self) -> "Tensor":
        """The same values, outside any graph (shares memory)."""
        return Tensor(self.value)

    def backward(self, gradient=None):
        """Compute dL/d(leaf) for every leaf this tensor depends on that requires
        gradients, adding it into the leaf's ``grad``.

        ``gradient`` is dL/d(self); it may be left out when self holds one value.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require gradients (no input "
                               "of it called requires_grad_(), or it was made inside no_grad)")
        if gradient is None:
            if self.value.size != 1:
                raise RuntimeError(f"backward: a gradient must be given for a tensor of shape "
                                   f"{self.shape}; only one value (a loss) can start alone")
            g = np.ones_like(self.value)
        else:
            g = np.broadcast_to(_array(gradient, self.value.dtype), self.shape)
        grads = {self: g}
        for node in reversed(_topological(self)):
            g = grads.pop(node, None)
            if g is None:
                continue
            if node._backward is None:
                node._accumulate(g)
                continue
            for parent, pg in zip(node._parents, node._backward(g)):
                if parent is None or pg is None or not parent.requires_grad:
                    continue
                grads[parent] = pg if parent not in grads else grads[parent] + pg

    def _accumulate(self, g):
        g = np.asarray(g, dtype=self.value.dtype).reshape(self.shape)
        if self.grad_value is None:
            self.grad_value = np.array(g, order="C", copy=True)
        else:
            self.grad_value += g

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
    def __add__(self, other):
        other = _operand(other)
        a, b = _values(self, other)
        out = _default_float(np.add(a, b), self, other)

        def backward(g):
            return _unbroadcast(g, np.shape(a)), _unbroadcast(g, np.shape(b))
        return recorded(out, (self, other), backward, "add")

    __radd__ = __add__

    def __sub__(self, other):
        other = _operand(other)
        a, b = _values(self, other)
        out = _default_float(np.subtract(a, b), self, other)

        def backward(g):
            return _unbroadcast(g, np.shape(a)), _unbroadcast(-g, np.shape(b))
        return recorded(out, (self, other), backward, "sub")

    def __rsub__(self, other):
        return _operand_tensor(other, self) - self

    def __mul__(self, other):
        other = _operand(other)
        a, b = _values(self, other)
        out = _default_float(np.multiply(a, b), self, other)

        def backward(g):
            return _unbroadcast(g * b, np.shape(a)), _unbroadcast(g * a, np.shape(b))
        return recorded(out, (self, other), backward, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other):
        other = _operand(other)
        a, b = _values(self, other)
        out = _default_float(np.true_divide(a, b), self, other)

        def backward(g):
            return (_unbroadcast(g / b, np.shape(a)),
                    _unbroadcast(-g * a / (np.asarray(b) * b), np.shape(b)))
        return recorded(out, (self, other), backward, "div")

    def __rtruediv__(self, other):
        return _operand_tensor(other, self) / self

    def __pow__(self, other):
        other = _operand(other)
        a, b = _values(self, other)
        out = _default_float(np.power(a, b), self, other)

        def backward(g):
            ga = _unbroadcast(g * b * np.power(a, np.asarray(b) - 1), np.shape(a))
            gb = None
            if isinstance(other, Tensor) and other.requires_grad:
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

    # ---------------------------------------------------- comparisons
    def _compare(self, ufunc, other):
        return Tensor(ufunc(self.value, _values(_operand(other))[0]))

    def __lt__(self, other):
        return self._compare(np.less, other)

    def __le__(self, other):
        return self._compare(np.less_equal, other)

    def __gt__(self, other):
        return self._compare(np.greater, other)

    def __ge__(self, other):
        return self._compare(np.greater_equal, other)

    def __eq__(self, other):
        return self._compare(np.equal, other)

    def __ne__(self, other):
        return self._compare(np.not_equal, other)

    def __invert__(self):
        if self.value.dtype != np.bool_:
            raise TypeError("~ is defined for boolean tensors")
        return Tensor(~self.value)

    def __and__(self, other):
        return self._compare(np.logical_and, other)

    def __or__(self, other):
        return self._compare(np.logical_or, other)

    # ---------------------------------------------------- conversions
    def _cast(self, dtype):
        dtype = np.dtype(dtype)
        if self.value.dtype == dtype:
            return self
        source = self.value.dtype
        return recorded(self.value.astype(dtype), (self,), lambda g: (g.astype(source),), "cast")

    def float(self) -> "Tensor":
        """As float32 (differentiable)."""
        return self._cast(np.float32)

    def double(self) -> "Tensor":
        """As float64 (differentiable)."""
        return self._cast(np.float64)

    def long(self) -> "Tensor":
        """As int64."""
        return Tensor(self.value.astype(np.int64))

    def int(self) -> "Tensor":
        """As int32."""
        return Tensor(self.value.astype(np.int32))

    def bool(self) -> "Tensor":
        """As booleans."""
        return Tensor(self.value.astype(np.bool_))

    def clone(self) -> "Tensor":
        """A copy with its own memory; gradients flow through it to self."""
        return recorded(self.value.copy(), (self,), lambda g: (g,), "clone")

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

    def argmax(self, dim=None) -> "Tensor":
        """The index of the largest element (along ``dim``)."""
        return Tensor(np.argmax(self.value, axis=dim).astype(np.int64))

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
        return _activation(self, "sigmoid", keeps="y")

    def relu(self) -> "Tensor":
        """``max(x, 0)``, elementwise, on the relu kernels."""
        return _activation(self, "relu", keeps="x")

    def tanh(self) -> "Tensor":
        """``tanh(x)``, elementwise, on the tanh kernels."""
        return _activation(self, "tanh", keeps="y")


def _operand_tensor(x, like: Tensor) -> Tensor:
    """``x`` as a Tensor; a Python number takes ``like``'s float dtype (PyTorch's scalars)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, numbers.Number) and like.value.dtype.kind == "f":
        return Tensor(np.asarray(x, like.value.dtype))
    return Tensor(_array(x))


def _index(index):
    """An index with tensors in it turned into arrays."""
    if isinstance(index, Tensor):
        return index.value
    if isinstance(index, tuple):
        return tuple(i.value if isinstance(i, Tensor) else i for i in index)
    return index


def _topological(root: Tensor) -> list:
    """Every tensor ``root`` depends on through recorded operations, parents first."""
    order, seen, stack = [], {root}, [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            order.append(node)
            continue
        stack.append((node, True))
        for parent in node._parents:
            if parent is not None and parent.requires_grad and parent not in seen:
                seen.add(parent)
                stack.append((parent, False))
    return order


# ------------------------------------------------------- kernel-backed ops
def _activation(x: Tensor, kernel: str, keeps: str) -> Tensor:
    """An activation on ``<kernel>_forward`` / ``<kernel>_backward``; the backward takes
    the input (``keeps="x"``) or the output (``"y"``) and dL/dy."""
    if x.value.dtype.kind != "f":
        x = x.float()
    a = _c(x.value)
    k = _kernels(a)
    with backends.skip_value_checks():
        out = getattr(k, f"{kernel}_forward")(a) if k else _NUMPY_ACTIVATIONS[kernel](a)

    def backward(g):
        saved = a if keeps == "x" else out
        kb = _kernels(saved, g)
        if kb is None:
            return (_NUMPY_ACTIVATION_GRADS[kernel](saved, g),)
        with backends.skip_value_checks():
            return (getattr(kb, f"{kernel}_backward")(saved, _c(g)),)
    return recorded(out, (x,), backward, kernel)


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


# ------------------------------------------------------------ factories
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
