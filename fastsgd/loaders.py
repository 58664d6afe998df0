"""DataLoaders: the batches a Learner trains and validates on, and their shuffling state.

    dls = DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=64, seed=0)
    for xb, yb in dls.train: ...

A ``DataLoader`` keeps its rows on the backend it was moved to and gathers
shuffled batches there; its generator's state can be saved as JSON-ready data
(``rng_state``) and continued later (``generator_from_state``).
"""
from __future__ import annotations

import copy
import math

import numpy as np

from . import backends
from .backends.arrays import host_all_finite
from .random import global_rng

__all__ = ["DataLoader", "DataLoaders", "generator_from_state"]


class DataLoader:
    """Batches of ``(x, y)``, from two arrays or from a dataset of items.

    ``DataLoader(x, y, bs=64)``: x (N, F) float32, y (N,) targets; batches are
    arrays, gathered into reused buffers (views without shuffling).

    ``DataLoader(dataset, batch_size=64)`` (PyTorch's and fastai's call): the
    dataset is a list of items — ``(x, y)`` pairs such as ``list(zip(train_x,
    train_y))``, or single values such as ``range(15)`` — collated once into arrays;
    each batch is a tuple of new Tensors, one per field of the items (a field of
    strings gives a tuple of them), or one Tensor for single values.

    With ``shuffle``, each pass visits the rows in a new order drawn from a
    generator seeded by ``seed`` (same seed, same batches).  The last batch may be
    smaller.  ``bs=len(x)`` gives full-batch gradient descent and ``bs=1`` pure
    stochastic descent; ``batch_size`` is another name for ``bs``.
    """

    def __init__(self, x, y=None, bs: int | None = None, shuffle: bool = False,
                 seed: int | None = None, *, batch_size: int | None = None):
        if batch_size is not None and bs is not None:
            raise TypeError("DataLoader: give bs or batch_size, not both")
        if y is not None and _is_count(y) and _is_dataset(x):
            y, bs = None, y                      # DataLoader(dataset, 256)
        bs = next((b for b in (batch_size, bs) if b is not None), 64)
        if not _is_count(bs) or bs < 1:
            raise ValueError(f"bs: expected a positive integer batch size, got {bs!r}")
        self.columns = None
        if y is None:
            self.columns = _collate(x)
            x, y = self.columns[0], (self.columns[1] if len(self.columns) > 1 else None)
        else:
            x, y = _checked_arrays(x, y)
        self.x, self.y = x, y
        self.tensors = self.columns is not None
        #: Whether every input lies in [0, 1], as pixels scaled from 0..255 do.
        self.unit_range = bool(np.issubdtype(np.asarray(x).dtype, np.number) and len(x)
                               and np.min(x) >= 0 and np.max(x) <= 1)
        self.backend = backends.get("numpy")
        self.bs = int(min(bs, len(x)))
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed) if seed is not None else \
            np.random.default_rng(global_rng().integers(2**63))
        self._buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def with_arrays(self, x, y) -> "DataLoader":
        """A DataLoader of the same batch size and shuffling (the same generator, shared)
        over arrays ``x`` and ``y``, giving arrays; this one is left as it is."""
        clone = copy.copy(self)
        clone.x, clone.y, clone.columns, clone.tensors = x, y, None, False
        clone._buffers = {}
        return clone

    def to(self, backend) -> "DataLoader":
        """Keep the data on ``backend`` (moved once) and gather batches there."""
        self.backend = backends.get(backend)
        self.x = self.backend.asarray(self.x)
        self.y = self.backend.asarray(self.y, dtype=self.y.dtype)
        self._buffers.clear()
        return self

    def __len__(self):
        """Number of batches per pass."""
        return math.ceil(len(self.x) / self.bs)

    @property
    def n(self) -> int:
        """Number of samples."""
        return len(self.x)

    def next_order(self) -> np.ndarray:
        """The row order of the next pass: a fresh permutation when shuffling."""
        return self._rng.permutation(len(self.x)) if self.shuffle else np.arange(len(self.x))

    def __iter__(self):
        if self.tensors:
            yield from self._tensor_batches()
            return
        n, bs = len(self.x), self.bs
        if self.x.ndim > 2 or self.y.ndim > 2 or self.x.dtype != np.float32 \
                or self.y.dtype not in (np.float32, np.int64):     # gathered by NumPy (host)
            order = self.next_order()
            for start in range(0, n, bs):
                idx = order[start:start + bs]
                yield self.x[idx], self.y[idx]
            return
        if not self.shuffle:
            for start in range(0, n, bs):
                yield self.x[start:start + bs], self.y[start:start + bs]
            return
        order = self.backend.asarray(self.next_order(), dtype=np.int64)
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            xb, yb = self._batch_buffers(len(idx))
            self.backend.take_rows(self.x, idx, out=xb)
            self.backend.take_rows(self.y, idx, out=yb)
            yield xb, yb

    @property
    def rng_state(self) -> dict:
        """The shuffling generator's state as JSON-ready data (``bit_generator.state``).

        Assigning a state saved this way continues the same sequence of batch
        orders; a malformed one raises ValueError and changes nothing.
        """
        return _json_ready(self._rng.bit_generator.state)

    @rng_state.setter
    def rng_state(self, state: dict):
        self._rng = generator_from_state(state)

    def _tensor_batches(self):
        """Batches of a dataset: a tuple with one new Tensor (or tuple of values) per field."""
        from .tensor import Tensor
        order = self.next_order()
        for start in range(0, len(order), self.bs):
            idx = order[start:start + self.bs]
            fields = tuple(Tensor(c[idx]) if isinstance(c, np.ndarray) else tuple(c[i] for i in idx)
                           for c in self.columns)
            yield fields if len(fields) > 1 else fields[0]

    def _batch_buffers(self, size):
        if size not in self._buffers:
            self._buffers[size] = (self.backend.empty((size, *self.x.shape[1:]), self.x.dtype),
                                   self.backend.empty((size, *self.y.shape[1:]), self.y.dtype))
        return self._buffers[size]


def _is_count(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_dataset(x) -> bool:
    """Whether ``x`` is a dataset of items rather than an array of rows."""
    return not isinstance(x, np.ndarray) and not hasattr(x, "value")


def _checked_arrays(x, y):
    """``x`` (N, F) as float32 and ``y`` (N, ...) as an array, or an error naming the bad one."""
    x = np.asarray(x)
    y = np.asarray(y)
    if x.ndim != 2:
        raise ValueError(f"x: expected a 2-D array (N, features), got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("x: empty dataset; expected at least one row")
    if len(y) != len(x):
        raise ValueError(f"y: expected {len(x)} targets to match x, got {len(y)}")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"x: expected numbers, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not host_all_finite(x):
        raise ValueError("x: contains NaN or Inf; expected finite values")
    return x, y


def _collate(dataset) -> list:
    """The fields of a dataset's items, each as one array (numbers, arrays, tensors) or a
    list (anything else): ``[(x0, y0), (x1, y1)]`` -> ``[array of x, array of y]``."""
    from .tensor.core import _array
    try:
        items = list(dataset)
    except TypeError:
        raise TypeError(f"dataset: expected a list of items or of (x, y) pairs, "
                        f"got {type(dataset).__name__}") from None
    if not items:
        raise ValueError("dataset: empty; expected at least one item")
    pairs = isinstance(items[0], (tuple, list))
    width = len(items[0]) if pairs else 1
    if pairs and any(not isinstance(item, (tuple, list)) or len(item) != width for item in items):
        raise ValueError(f"dataset: every item must be a tuple of {width} fields, like the first")
    fields = list(zip(*items)) if pairs else [items]
    columns = []
    for i, field in enumerate(fields):
        try:
            values = [_array(v) for v in field]
            column = np.stack(values)
        except (TypeError, ValueError):
            column = list(field)     # strings, or values of differing shapes
        columns.append(column)
    return columns


#: Bit generators whose saved state ``DataLoader.rng_state`` accepts.
_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _json_ready(value):
    """``value`` with NumPy arrays and scalars turned into lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def generator_from_state(state, where: str = "rng_state") -> np.random.Generator:
    """A ``numpy.random.Generator`` continuing from a saved ``bit_generator.state``, or
    ValueError naming ``where`` and what is wrong with it."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"{where}: expected a bit generator state of one of "
                         f"{', '.join(_BIT_GENERATORS)}, got {str(state)[:80]}")
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as e:
        raise ValueError(f"{where}: not a valid {name} state ({type(e).__name__}: "
                         f"{str(e)[:80]})") from None
    return np.random.Generator(bit_generator)


class DataLoaders:
    """A training and a validation ``DataLoader`` (fastai's ``DataLoaders(train, valid)``)."""

    def __init__(self, train: DataLoader, valid: DataLoader):
        self.train, self.valid = train, valid

    @classmethod
    def from_arrays(cls, train_x, train_y, valid_x, valid_y, bs: int = 64, seed: int | None = None,
                    valid_bs: int | None = None) -> "DataLoaders":
        """Shuffled training batches of ``bs``; validation in order, in batches of ``valid_bs``."""
        train = DataLoader(train_x, train_y, bs, shuffle=True, seed=seed)
        valid = DataLoader(valid_x, valid_y, valid_bs or max(bs, 1024), shuffle=False)
        return cls.checked(train, valid)

    @classmethod
    def checked(cls, train: DataLoader, valid: DataLoader) -> "DataLoaders":
        """``DataLoaders(train, valid)``, or ValueError when their rows differ in features."""
        if valid.x.shape[1] != train.x.shape[1]:
            raise ValueError(f"valid_x: expected {train.x.shape[1]} features to match train_x, "
                             f"got {valid.x.shape[1]}")
        return cls(train, valid)

    def __iter__(self):
        return iter((self.train, self.valid))
