"""Layers: each forward keeps what its backward needs, and both call backend kernels.

A model is a ``Sequential`` of ``Linear``, ``ReLU``, ``Sigmoid`` and ``Tanh`` layers.
``forward(x)`` returns the output; ``backward(dy)`` takes dL/d(output), fills every
parameter's ``grad`` (overwriting it: there is nothing to zero) and returns
dL/d(input).  Outputs and gradients live in buffers owned by the layer and reused
from step to step, so a training step allocates nothing after the first batch of
each size.  A layer computes on the backend it was bound to with ``to(backend)``
(the NumPy reference until then).
"""
from __future__ import annotations

import numpy as np

from . import backends
from .random import global_rng
from .tensor import Tensor, linear

__all__ = ["Parameter", "Module", "Linear", "Activation", "ReLU", "Sigmoid", "Tanh", "Sequential", "simple_net",
           "save_model", "load_model", "read_checkpoint", "read_model_file", "ModelFile",
           "max_parameters", "count_parameters", "check_parameter_count", "model_from_config",
           "load_weights", "MAX_PARAMETERS_VARIABLE"]


class Parameter(Tensor):
    """A trainable tensor: ``value`` its array, ``grad`` its gradient (``grad_value`` the
    gradient's array, which the kernels write), ``name`` what it is in its layer.

    It always requires gradients; its gradient starts as zeros of its shape.
    """

    def __init__(self, value, name: str = "param"):
        value = value.value if isinstance(value, Tensor) else np.asarray(value)
        super().__init__(value)
        self.requires_grad_()
        self.grad_value = np.zeros_like(value)
        self.name = name

    def __repr__(self):
        return f"Parameter({self.name}, shape={self.value.shape})"


class Module:
    """Base layer: ``forward``, ``backward``, ``parameters`` and ``to(backend)``.

    Called on a ``Tensor``, a layer computes with recorded operations, so that
    ``loss.backward()`` reaches its parameters; called on an array, it runs
    ``forward`` on its buffers (the layer path of the Learner).  A subclass of your
    own defines ``forward`` on tensors; its ``parameters()`` are the Parameters and
    the parameters of the Modules among its attributes, in the order they were set.
    """

    def __init__(self):
        self.backend = backends.get("numpy")
        self._buffers: dict[tuple, np.ndarray] = {}

    def parameters(self) -> list[Parameter]:
        """Trainable parameters, in a fixed order."""
        found = []
        for value in vars(self).values():
            items = value if isinstance(value, (list, tuple)) else (value,)
            for item in items:
                if isinstance(item, Parameter):
                    found.append(item)
                elif isinstance(item, Module):
                    found.extend(item.parameters())
        return found

    def to(self, backend) -> "Module":
        """Compute on ``backend`` (a name or a Backend) from now on; returns self."""
        self.backend = backends.get(backend)
        for p in self.parameters():
            p.value = self.backend.asarray(p.value)
            p.grad_value = self.backend.zeros(p.value.shape)
        self._buffers.clear()
        return self

    def config(self) -> dict:
        """The architecture of this layer as JSON-ready data."""
        return {"type": type(self).__name__}

    def _buffer(self, key: str, shape, dtype) -> np.ndarray:
        """A reusable array of ``shape`` and ``dtype`` for output ``key``."""
        shape = tuple(shape)
        buf = self._buffers.get((key, shape, dtype))
        if buf is None:
            buf = self._buffers[(key, shape, dtype)] = self.backend.empty(shape, dtype)
        return buf

    def __call__(self, x):
        if isinstance(x, Tensor):
            return self.tensor_forward(x)
        return self.forward(x)

    def tensor_forward(self, x: Tensor) -> Tensor:
        """The output for tensor ``x``, recorded for ``backward`` (a layer of your own:
        its ``forward``)."""
        return self.forward(x)


class Linear(Module):
    """``y = x @ w + b``;  x (B, I), w (I, O), b (O,) -> y (B, O).

    Initialised like PyTorch's ``nn.Linear``: w and b uniform in
    ``[-1/sqrt(I), 1/sqrt(I)]``, drawn from ``rng`` (default: the generator
    seeded by ``fastsgd.set_seed``).
    """

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator | None = None):
        super().__init__()
        for name, n in (("n_in", n_in), ("n_out", n_out)):
            if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
                raise ValueError(f"Linear: {name} must be a positive integer, got {n!r}")
        self.n_in, self.n_out = int(n_in), int(n_out)
        rng = rng or global_rng()
        bound = 1.0 / np.sqrt(n_in)
        self.w = Parameter(rng.uniform(-bound, bound, (n_in, n_out)).astype(np.float32), "w")
        self.b = Parameter(rng.uniform(-bound, bound, n_out).astype(np.float32), "b")
        self.need_input_grad = True
        self._x = None

    def parameters(self):
        return [self.w, self.b]

    @property
    def weight(self) -> Parameter:
        """PyTorch's name for ``w``; note that fastsgd stores it (in, out)."""
        return self.w

    @property
    def bias(self) -> Parameter:
        """PyTorch's name for ``b``."""
        return self.b

    def config(self):
        return {"type": "Linear", "n_in": self.n_in, "n_out": self.n_out}

    def tensor_forward(self, x):
        return linear(x, self.w, self.b)

    def forward(self, x):
        self._x = x
        out = self._buffer("y", (x.shape[0], self.n_out), x.dtype)
        return self.backend.linear_forward(x, self.w.value, self.b.value, out=out)

    def backward(self, dy):
        dx = self._buffer("dx", self._x.shape, dy.dtype) if self.need_input_grad else None
        for p in (self.w, self.b):
            if p.grad_value is None:           # cleared with p.grad = None
                p.grad_value = self.backend.zeros(p.value.shape)
        dx, _, _ = self.backend.linear_backward(self._x, self.w.value, dy, dx=dx,
                                                dw=self.w.grad_value, db=self.b.grad_value,
                                                need_dx=self.need_input_grad)
        return dx

    def __repr__(self):
        return f"Linear({self.n_in}, {self.n_out})"


class Activation(Module):
    """An activation applied elementwise: its ``kind`` names its record in the registry
    (``backends.program.LAYERS``), which gives its two kernels, ``forward(x, out)`` and
    ``backward(saved, dy, dx)``, and what ``saved`` is ("x" the input, "y" the output).
    A subclass whose kind is registered trains fused too."""

    kind: str

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls._keeps = backends.program.layer_kind(cls.kind).saves

    def forward(self, x):
        y = self.backend.activation_forward(self.kind, x, out=self._buffer("y", x.shape, x.dtype))
        self._saved = x if self._keeps == "x" else y
        return y

    def backward(self, dy):
        return self.backend.activation_backward(self.kind, self._saved, dy,
                                                dx=self._buffer("dx", dy.shape, dy.dtype))

    def tensor_forward(self, x):
        return getattr(x, self.kind)()

    def __repr__(self):
        return f"{type(self).__name__}()"


class ReLU(Activation):
    """``y = max(x, 0)``, elementwise."""

    kind = "relu"


class Sigmoid(Activation):
    """``y = 1 / (1 + exp(-x))``, elementwise."""

    kind = "sigmoid"


class Tanh(Activation):
    """``y = tanh(x)``, elementwise."""

    kind = "tanh"


class Sequential(Module):
    """Layers applied in order; backward runs them in reverse.

    The first layer's input gradient is never needed (it would be the gradient
    w.r.t. the data), so it is not computed.
    """

    def __init__(self, *layers: Module):
        super().__init__()
        if not layers:
            raise ValueError("Sequential: expected at least one layer")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} must be a fastsgd layer, got {layer!r}")
        self.layers = list(layers)
        if isinstance(self.layers[0], Linear):
            self.layers[0].need_input_grad = False

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def to(self, backend):
        self.backend = backends.get(backend)
        for layer in self.layers:
            layer.to(self.backend)
        return self

    def config(self):
        return {"type": "Sequential", "layers": [layer.config() for layer in self.layers]}

    @property
    def n_in(self) -> int:
        """Input features of the first Linear layer (``ValueError`` without one)."""
        return self._linears()[0].n_in

    @property
    def n_out(self) -> int:
        """Output features of the last Linear layer (``ValueError`` without one)."""
        return self._linears()[-1].n_out

    def _linears(self) -> list:
        linears = [layer for layer in self.layers if isinstance(layer, Linear)]
        if not linears:
            layers = ", ".join(repr(layer) for layer in self.layers)
            raise ValueError(f"model: Sequential({layers}) has no Linear layer; its inputs "
                             f"and outputs are those of its Linear layers, so it needs one")
        return linears

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def tensor_forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def simple_net(n_in: int = 784, n_hidden: int = 30, n_out: int = 1,
               rng: np.random.Generator | None = None) -> Sequential:
    """The book's ``simple_net``: Linear(n_in, n_hidden), ReLU, Linear(n_hidden, n_out)."""
    rng = rng or global_rng()
    return Sequential(Linear(n_in, n_hidden, rng), ReLU(), Linear(n_hidden, n_out, rng))


# ------------------------------------------------- activations by record alone
for _kind in backends.program.activations():   # a kind added by its record alone
    if _kind.layer not in globals():
        globals()[_kind.layer] = type(_kind.layer, (Activation,), {
            "kind": _kind.name, "__module__": __name__,
            "__doc__": f"The {_kind.name} activation, elementwise (see its registry record)."})
        __all__.append(_kind.layer)
del _kind

# Model files: written and read by ``model_files.py``; their names are importable here too.
from .model_files import (  # noqa: E402  (it builds the layers defined above)
    MAX_PARAMETERS_VARIABLE,
    ModelFile,
    check_parameter_count,
    count_parameters,
    load_model,
    load_weights,
    max_parameters,
    model_from_config,
    read_checkpoint,
    read_model_file,
    save_model,
)
