"""Model files: a ``Sequential``'s architecture and weights in one checksummed .npz, and
the training state a checkpoint adds (``checkpoint.py`` saves and resumes with them).

Reading checks everything before memory is spent: the JSON config's size, nesting and
layer types (one per kind of the registry, ``backends.program.LAYERS``), the declared
parameter count against ``max_parameters()``, and every array's header against the
shapes the config implies.  ``fastsgd.layers`` re-exports the public names.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backends, layers
from .files import file_errors
from .layers import Linear, Module, Sequential
from .npz import BadArchive, NpzArchive, write_npz
from .random import global_rng

__all__ = ["save_model", "load_model", "read_checkpoint", "read_model_file", "ModelFile",
           "max_parameters", "count_parameters", "check_parameter_count", "model_from_config",
           "load_weights", "MAX_PARAMETERS_VARIABLE"]

#: The layer classes a model file may name: one per kind of the registry.
_LAYER_TYPES = {kind.layer: getattr(layers, kind.layer) for kind in backends.program.LAYERS.values()}
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
    of its parts (``fastsgd.npz.write_npz``): a damaged one is refused on loading.
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
