"""Layers: each forward keeps what its backward needs, and both call backend kernels.

A model is a ``Sequential`` of ``Linear``, ``ReLU`` and ``Sigmoid`` layers.
``forward(x)`` returns the output; ``backward(dy)`` takes dL/d(output), fills every
parameter's ``grad`` (overwriting it: there is nothing to zero) and returns
dL/d(input).  Outputs and gradients live in buffers owned by the layer and reused
from step to step, so a training step allocates nothing after the first batch of
each size.  A layer computes on the backend it was bound to with ``to(backend)``
(the NumPy reference until then).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import backends
from .random import global_rng

__all__ = ["Parameter", "Module", "Linear", "ReLU", "Sigmoid", "Sequential", "simple_net",
           "save_model", "load_model"]


class Parameter:
    """A trainable array and its gradient, both of the same shape."""

    def __init__(self, value: np.ndarray, name: str):
        self.value = value
        self.grad = np.zeros_like(value)
        self.name = name

    def __repr__(self):
        return f"Parameter({self.name}, shape={self.value.shape})"


class Module:
    """Base layer: ``forward``, ``backward``, ``parameters`` and ``to(backend)``."""

    def __init__(self):
        self.backend = backends.get("numpy")
        self._buffers: dict[tuple, np.ndarray] = {}

    def parameters(self) -> list[Parameter]:
        """Trainable parameters, in a fixed order."""
        return []

    def to(self, backend) -> "Module":
        """Compute on ``backend`` (a name or a Backend) from now on; returns self."""
        self.backend = backends.get(backend)
        for p in self.parameters():
            p.value = self.backend.asarray(p.value)
            p.grad = self.backend.zeros(p.value.shape)
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

    def config(self):
        return {"type": "Linear", "n_in": self.n_in, "n_out": self.n_out}

    def forward(self, x):
        self._x = x
        out = self._buffer("y", (x.shape[0], self.n_out), x.dtype)
        return self.backend.linear_forward(x, self.w.value, self.b.value, out=out)

    def backward(self, dy):
        dx = self._buffer("dx", self._x.shape, dy.dtype) if self.need_input_grad else None
        dx, _, _ = self.backend.linear_backward(self._x, self.w.value, dy, dx=dx,
                                                dw=self.w.grad, db=self.b.grad,
                                                need_dx=self.need_input_grad)
        return dx

    def __repr__(self):
        return f"Linear({self.n_in}, {self.n_out})"


class ReLU(Module):
    """``y = max(x, 0)``, elementwise."""

    def forward(self, x):
        self._x = x
        return self.backend.relu_forward(x, out=self._buffer("y", x.shape, x.dtype))

    def backward(self, dy):
        return self.backend.relu_backward(self._x, dy, dx=self._buffer("dx", dy.shape, dy.dtype))

    def __repr__(self):
        return "ReLU()"


class Sigmoid(Module):
    """``y = 1 / (1 + exp(-x))``, elementwise."""

    def forward(self, x):
        self._y = self.backend.sigmoid_forward(x, out=self._buffer("y", x.shape, x.dtype))
        return self._y

    def backward(self, dy):
        return self.backend.sigmoid_backward(self._y, dy, dx=self._buffer("dx", dy.shape, dy.dtype))

    def __repr__(self):
        return "Sigmoid()"


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
        """Input features of the first Linear layer."""
        return next(layer.n_in for layer in self.layers if isinstance(layer, Linear))

    @property
    def n_out(self) -> int:
        """Output features of the last Linear layer."""
        return next(layer.n_out for layer in reversed(self.layers) if isinstance(layer, Linear))

    def forward(self, x):
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)
        return dy

    def __repr__(self):
        inner = ",\n  ".join(repr(layer) for layer in self.layers)
        return f"Sequential(\n  {inner}\n)"


def simple_net(n_in: int = 784, n_hidden: int = 30, n_out: int = 1,
               rng: np.random.Generator | None = None) -> Sequential:
    """The book's ``simple_net``: Linear(n_in, n_hidden), ReLU, Linear(n_hidden, n_out)."""
    rng = rng or global_rng()
    return Sequential(Linear(n_in, n_hidden, rng), ReLU(), Linear(n_hidden, n_out, rng))


# ---------------------------------------------------------------- save / load
_LAYER_TYPES = {"Linear": Linear, "ReLU": ReLU, "Sigmoid": Sigmoid}


def save_model(model: Sequential, path) -> Path:
    """Write ``model`` (architecture + weights) to an .npz file atomically.

    The file is written to a temporary name in the same folder and renamed, so
    a crash never leaves a half-written model behind.
    """
    path = Path(path)
    arrays = {f"p{i}": model.backend.to_numpy(p.value) for i, p in enumerate(model.parameters())}
    arrays["config"] = np.frombuffer(json.dumps(model.config()).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _build(config: dict) -> Module:
    kind = config.get("type")
    if kind == "Sequential":
        return Sequential(*(_build(c) for c in config["layers"]))
    if kind == "Linear":
        return Linear(config["n_in"], config["n_out"], np.random.default_rng(0))
    if kind in _LAYER_TYPES:
        return _LAYER_TYPES[kind]()
    raise ValueError(f"model file: unknown layer type {kind!r}")


def read_model_file(path) -> tuple[dict, list[np.ndarray]]:
    """(architecture config, parameter arrays) stored in a file written by ``save_model``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            config = json.loads(f["config"].tobytes().decode())
            n = len([k for k in f.files if k.startswith("p")])
            weights = [f[f"p{i}"] for i in range(n)]
    except FileNotFoundError:
        raise FileNotFoundError(f"model file {path} does not exist") from None
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"model file {path} is not a fastsgd model: {exc}") from None
    return config, weights


def load_weights(model: Module, weights: list[np.ndarray], source="weights"):
    """Copy ``weights`` into ``model``'s parameters (shapes must match)."""
    params = model.parameters()
    if len(params) != len(weights):
        raise ValueError(f"{source}: holds {len(weights)} arrays, the model has {len(params)}")
    for p, w in zip(params, weights):
        if p.value.shape != w.shape:
            raise ValueError(f"{source}: {p.name} has shape {w.shape}, expected {p.value.shape}")
        p.value = model.backend.asarray(w)


def load_model(path, backend=None) -> Sequential:
    """The model stored at ``path`` by ``save_model``, on ``backend`` (default: numpy)."""
    config, weights = read_model_file(path)
    model = _build(config)
    if backend is not None:
        model.to(backend)
    load_weights(model, weights, source=f"model file {path}")
    return model
