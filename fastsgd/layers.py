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

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backends
from .files import BadArchive, NpzArchive, file_errors, write_npz
from .random import global_rng
from .tensor import Tensor, linear

__all__ = ["Parameter", "Module", "Linear", "Activation", "ReLU", "Sigmoid", "Tanh", "Sequential", "simple_net",
           "save_model", "load_model", "read_checkpoint", "read_model_file", "ModelFile",
           "max_parameters", "count_parameters", "check_parameter_count", "model_from_config",
           "MAX_PARAMETERS_VARIABLE"]


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


# ---------------------------------------------------------------- save / load
for _kind in backends.program.activations():   # a kind added by its record alone
    if _kind.layer not in globals():
        globals()[_kind.layer] = type(_kind.layer, (Activation,), {
            "kind": _kind.name, "__module__": __name__,
            "__doc__": f"The {_kind.name} activation, elementwise (see its registry record)."})
        __all__.append(_kind.layer)
del _kind

#: The layer classes a model file may name: one per kind of the registry.
_LAYER_TYPES = {kind.layer: globals()[kind.layer] for kind in backends.program.LAYERS.values()}
#: The environment variable that sets ``max_parameters()``.
MAX_PARAMETERS_VARIABLE = "FASTSGD_MAX_PARAMETERS"
_DEFAULT_MAX_PARAMETERS = 1 << 24   # 16.8M floats: 64 MiB of weights, ~4x that to train
_MAX_CONFIG_BYTES = 1 << 20
_MAX_NESTING = 8                 # Sequentials inside Sequentials
_MAX_STATE_BYTES = 16 << 20      # a checkpoint's JSON state
_MAX_LOSSES = 1 << 26            # per-step losses a checkpoint may hold
_STATE, _LOSSES = "state", "losses"


def save_model(model: Sequential, path, state: dict | None = None, velocities=None,
               losses=None) -> Path:
    """Write ``model`` (architecture + weights) to an .npz file atomically.

    ``state`` (a JSON-ready dict), ``velocities`` (one array per parameter) and
    ``losses`` (1-D floats) make the file a training checkpoint (see
    ``Learner.save``); without them it holds the model alone.  The file is
    written to a temporary name in the same folder and renamed, so a crash or
    Ctrl-C never leaves a half-written model behind.  The file carries a checksum
    of its parts (``fastsgd.files.write_npz``): a damaged one is refused on loading.
    """
    params = model.parameters()
    arrays = {f"p{i}": model.backend.to_numpy(p.value) for i, p in enumerate(params)}
    arrays["config"] = _json_bytes(model.config())
    if state is None and (velocities is not None or losses is not None):
        raise ValueError("state: velocities and losses are saved only with a state")
    if state is not None:
        arrays[_STATE] = _json_bytes(state)
    if velocities is not None:
        velocities = list(velocities)
        if len(velocities) != len(params):
            raise ValueError(f"velocities: expected {len(params)} arrays, one per parameter, "
                             f"got {len(velocities)}")
        for i, (p, v) in enumerate(zip(params, velocities)):
            v = model.backend.to_numpy(v)
            if v.shape != tuple(p.value.shape):
                raise ValueError(f"velocities: array {i} has shape {v.shape}, expected "
                                 f"{tuple(p.value.shape)}")
            arrays[f"v{i}"] = np.asarray(v, np.float32)
    if losses is not None:
        arrays[_LOSSES] = np.asarray(losses, np.float64).reshape(-1)
    return write_npz(path, arrays)


def _json_bytes(obj) -> np.ndarray:
    return np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)


@dataclass(frozen=True, eq=False)
class ModelFile:
    """What the model file at ``path`` holds, checked: the architecture ``config`` and ``weights``;
    a checkpoint adds its ``state`` (a dict), the optimiser's ``velocities`` (one
    float32 array per parameter, or None) and the per-step training ``losses``."""

    path: Path
    config: dict
    weights: list
    state: dict | None = None
    velocities: list | None = None
    losses: np.ndarray | None = None

    def build(self, backend=None) -> Sequential:
        """The model this file describes, holding its weights, on ``backend`` (default: numpy)."""
        model = _build(self.config)
        if backend is not None:
            model.to(backend)
        load_weights(model, self.weights, source=f"model file {self.path}")
        return model

class _Zeros:
    """Stands in for a random generator where the drawn values are overwritten at once."""

    def uniform(self, low, high, size):
        return np.zeros(size, dtype=np.float32)


def _build(config: dict, rng=None) -> Module:
    """The model a checked config describes, with zero weights (no random numbers drawn)
    or, given ``rng``, initialised as ``Linear`` does."""
    kind = config["type"]
    if kind == "Sequential":
        return Sequential(*(_build(c, rng) for c in config["layers"]))
    if kind == "Linear":
        return Linear(config["n_in"], config["n_out"], rng or _Zeros())
    return _LAYER_TYPES[kind]()


def model_from_config(config: dict) -> Sequential:
    """A new model of the architecture ``config`` (as ``Sequential.config()`` returns it),
    initialised as its layers are, after the config is checked (``max_parameters()``)."""
    _parameter_shapes(config)
    return _build(config, global_rng())


def max_parameters() -> int:
    """The most parameters a model may have, read from a file or built by the command line:
    ``$FASTSGD_MAX_PARAMETERS``, else 2**24 (64 MiB of float32 weights).  A cap sized from
    what was checked, so that a small file cannot ask for gigabytes; raise it for large
    models."""
    text = os.environ.get(MAX_PARAMETERS_VARIABLE, "").strip()
    if not text:
        return _DEFAULT_MAX_PARAMETERS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{MAX_PARAMETERS_VARIABLE}: expected a positive integer, got {text!r:.40}")
    return value


def count_parameters(sizes) -> int:
    """The parameters of a stack of Linear layers ``sizes[0] -> sizes[1] -> ...``."""
    return sum(n_in * n_out + n_out for n_in, n_out in zip(sizes, sizes[1:]))


def check_parameter_count(total: int, what: str) -> None:
    """ValueError unless a model of ``total`` parameters is within ``max_parameters()``."""
    cap = max_parameters()
    if total > cap:
        raise ValueError(f"{what} declares {total} parameters, more than the {cap} fastsgd "
                         f"builds ({MAX_PARAMETERS_VARIABLE} raises the cap for large models)")


def _check_layer(config, where: str, depth: int) -> list[tuple[int, int]]:
    """The (n_in, n_out) of each Linear in the layer ``config``, or ValueError saying what is wrong."""
    if not isinstance(config, dict):
        raise ValueError(f"{where}: expected a layer object, got {type(config).__name__}")
    kind = config.get("type")
    known = ["Sequential", *_LAYER_TYPES]
    if not isinstance(kind, str) or kind not in known:
        raise ValueError(f"{where}: unknown layer type {kind!r} (expected one of {', '.join(known)})")
    keys = {"Sequential": {"type", "layers"}, "Linear": {"type", "n_in", "n_out"}}.get(kind, {"type"})
    if set(config) != keys:
        raise ValueError(f"{where}: a {kind} has the keys {sorted(keys)}, got {sorted(config)}")
    if kind == "Linear":
        for key in ("n_in", "n_out"):
            n = config[key]
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max_parameters():
                raise ValueError(f"{where}: {key} must be an integer in 1..{max_parameters()}, "
                                 f"got {n!r}")
        return [(config["n_in"], config["n_out"])]
    if kind != "Sequential":
        return []
    layers = config["layers"]
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{where}: layers must be a non-empty list, got {layers!r:.60}")
    if depth >= _MAX_NESTING:
        raise ValueError(f"{where}: Sequentials nested more than {_MAX_NESTING} deep")
    return [s for i, c in enumerate(layers) for s in _check_layer(c, f"{where}.layers[{i}]", depth + 1)]


def _parameter_shapes(config) -> list[tuple[int, ...]]:
    """The shape of each parameter a model config declares, checked for sense and size."""
    if not isinstance(config, dict) or config.get("type") != "Sequential":
        raise ValueError("config: expected a Sequential at the top")
    linears = _check_layer(config, "config", 0)
    if not linears:
        raise ValueError("config: no Linear layer")
    for (_, n_out), (n_in, _) in zip(linears, linears[1:]):
        if n_out != n_in:
            raise ValueError(f"config: a Linear with {n_out} outputs feeds one with {n_in} inputs")
    check_parameter_count(sum(n_in * n_out + n_out for n_in, n_out in linears), "config")
    return [shape for n_in, n_out in linears for shape in ((n_in, n_out), (n_out,))]


def _read_json(npz: NpzArchive, name: str, limit: int):
    """The JSON value stored as UTF-8 bytes in the archive's ``name`` member."""
    header = npz.headers[name]
    if header.dtype != np.uint8 or len(header.shape) != 1 or header.size > limit:
        raise ValueError(f"{name} must be at most {limit} uint8 bytes, got "
                         f"shape {header.shape} of {header.dtype}")
    try:
        return json.loads(npz.read(name).tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:     # bad UTF-8 or JSON, or nesting too deep
        raise ValueError(f"{name} is not valid JSON ({type(e).__name__}: {str(e)[:100]})") from None


def _read_config(npz: NpzArchive):
    """The architecture stored in the archive's ``config`` member (JSON bytes)."""
    if "config" not in npz.headers:
        raise ValueError("no config array")
    return _read_json(npz, "config", _MAX_CONFIG_BYTES)


def _expected_members(npz: NpzArchive, n: int) -> set[str]:
    """The member names a file with ``n`` parameters may hold: config and p0.., and in a
    checkpoint (one with a state) also v0.. and losses."""
    expected = {"config", *(f"p{i}" for i in range(n))}
    if _STATE not in npz.headers:
        return expected
    velocities = {f"v{i}" for i in range(n)}
    if velocities & set(npz.headers):        # the optimiser's velocities: all of them or none
        expected |= velocities
    return expected | {_STATE} | ({_LOSSES} & set(npz.headers))


def _check_arrays(npz: NpzArchive, shapes) -> None:
    """The archive holds ``config`` and p0.. with float data of ``shapes`` (and, in a
    checkpoint, velocities v0.. shaped alike and 1-D float ``losses``), nothing else."""
    expected = _expected_members(npz, len(shapes))
    missing, extra = sorted(expected - set(npz.headers)), sorted(set(npz.headers) - expected)
    if missing or extra:
        raise ValueError(f"the config declares {len(shapes)} parameter arrays; "
                         + "; ".join(f"{what} {', '.join(names)}" for what, names in
                                     (("missing", missing), ("unexpected", extra)) if names))
    for prefix in ("p", "v"):
        for i, shape in enumerate(shapes):
            header = npz.headers.get(f"{prefix}{i}")
            if header is None:
                continue
            if header.dtype.kind != "f":
                raise ValueError(f"{prefix}{i} holds {header.dtype}, expected floats")
            if header.shape != shape:
                raise ValueError(f"{prefix}{i} has shape {header.shape}, the config declares {shape}")
    losses = npz.headers.get(_LOSSES)
    if losses is not None and (losses.dtype.kind != "f" or len(losses.shape) != 1
                               or losses.size > _MAX_LOSSES):
        raise ValueError(f"losses must be at most {_MAX_LOSSES} floats in one dimension, got "
                         f"shape {losses.shape} of {losses.dtype}")


def _read_floats(npz: NpzArchive, names, dtype=np.float32) -> list[np.ndarray]:
    """The arrays ``names`` as ``dtype``, each checked to be finite."""
    arrays = []
    for name in names:
        array = npz.read(name).astype(dtype, copy=False)
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        arrays.append(array)
    return arrays


def read_checkpoint(path) -> ModelFile:
    """Everything a file written by ``save_model`` or ``Learner.save`` holds, checked.

    Everything is checked before any array is read: the config's layers and sizes
    (at most ``max_parameters()``), the arrays' declared size against the file's (at
    most 16:1), and every array's header against them; then the checksum; then every
    array is checked to be finite and a checkpoint's state to be a JSON object.  A
    malformed file raises one ValueError naming it; a missing one FileNotFoundError.
    The state's meaning is checked by its reader (``Learner.load``).
    """
    path = Path(path)
    with file_errors(lambda: FileNotFoundError(f"model file {path} does not exist"),
                     lambda e: ValueError(f"model file {path}: cannot read ({e.strerror or e})")):
        try:
            return _read_arrays(path)
        except BadArchive as e:
            raise ValueError(f"model file {path} is not a fastsgd model: {e.reason}") from None
        except OSError:
            raise                                  # said by file_errors
        except ValueError as e:
            raise ValueError(f"model file {path}: {e}") from None


def _read_arrays(path: Path) -> ModelFile:
    """``read_checkpoint``'s reading and checking, before its errors are put in its words."""
    with NpzArchive(path) as npz:
        npz.check_expansion()
        config = _read_config(npz)
        shapes = _parameter_shapes(config)
        npz.verify()                       # files of earlier versions have no checksum
        _check_arrays(npz, shapes)
        state = _read_json(npz, _STATE, _MAX_STATE_BYTES) if _STATE in npz.headers else None
        if state is not None and not isinstance(state, dict):
            raise ValueError(f"state must be a JSON object, got {type(state).__name__}")
        n = len(shapes)
        weights = _read_floats(npz, [f"p{i}" for i in range(n)])
        velocities = _read_floats(npz, [f"v{i}" for i in range(n)]) \
            if "v0" in npz.headers else None
        losses = _read_floats(npz, [_LOSSES], np.float64)[0] if _LOSSES in npz.headers else None
    return ModelFile(path, config, weights, state, velocities, losses)


def read_model_file(path) -> tuple[dict, list[np.ndarray]]:
    """(architecture config, parameter arrays) stored in a model file or a checkpoint.

    The whole file is checked as ``read_checkpoint`` does; a malformed file raises
    one ValueError naming it, a missing one FileNotFoundError.
    """
    stored = read_checkpoint(path)
    return stored.config, stored.weights


def load_weights(model: Module, weights: list[np.ndarray], source="weights"):
    """Copy ``weights`` into ``model``'s parameters: all of them, or (on error) none.

    Every array is checked (count, shape, floats) and converted before the first
    parameter changes.
    """
    params = model.parameters()
    if len(params) != len(weights):
        raise ValueError(f"{source}: holds {len(weights)} arrays, the model has {len(params)}")
    for i, (p, w) in enumerate(zip(params, weights)):
        shape = tuple(getattr(w, "shape", ()))
        if shape != tuple(p.value.shape):
            raise ValueError(f"{source}: array {i} ({p.name}) has shape {shape}, "
                             f"expected {tuple(p.value.shape)}")
        dtype = np.dtype(w.dtype) if hasattr(w, "dtype") else np.asarray(w).dtype
        if dtype.kind != "f":
            raise ValueError(f"{source}: array {i} ({p.name}) holds {dtype}, expected floats")
    values = [model.backend.asarray(w) for w in weights]
    for p, value in zip(params, values):
        p.value = value


def load_model(path, backend=None) -> Sequential:
    """The model (architecture + weights) stored at ``path`` by ``save_model`` or
    ``Learner.save``, on ``backend`` (default: numpy)."""
    return read_checkpoint(path).build(backend)
