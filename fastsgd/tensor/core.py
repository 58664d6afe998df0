"""The Tensor: a NumPy array, the graph of the operations that made it, ``backward``
over that graph, and the helpers every operation uses (``recorded`` makes an
operation's result).  The arithmetic and the other differentiable methods are
``operators.TensorOperators``, which Tensor inherits."""
from __future__ import annotations

import numbers

import numpy as np

from .switches import _GRAD_ENABLED


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


def _comparison(ufunc):
    """The Tensor method ``self (op) other``: the tensor ``ufunc(self, other)`` (booleans,
    no gradient)."""
    def compare(self, other):
        return Tensor(ufunc(self.value, _values(_operand(other))[0]))
    return compare


# Here, not at the top: operators.py imports the helpers above from this module, and
# Tensor below inherits its TensorOperators.
from .operators import TensorOperators  # noqa: E402


# ------------------------------------------------------------------ Tensor
class Tensor(TensorOperators):
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

    # ---------------------------------------------------- comparisons
    __lt__ = _comparison(np.less)
    __le__ = _comparison(np.less_equal)
    __gt__ = _comparison(np.greater)
    __ge__ = _comparison(np.greater_equal)
    __eq__ = _comparison(np.equal)
    __ne__ = _comparison(np.not_equal)
    __and__ = _comparison(np.logical_and)
    __or__ = _comparison(np.logical_or)

    def __invert__(self):
        if self.value.dtype != np.bool_:
            raise TypeError("~ is defined for boolean tensors")
        return Tensor(~self.value)

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

    # -------------------------------------------------------- indices
    def argmax(self, dim=None) -> "Tensor":
        """The index of the largest element (along ``dim``)."""
        return Tensor(np.argmax(self.value, axis=dim).astype(np.int64))
