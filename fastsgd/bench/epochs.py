"""The epoch benchmark: the same training epoch on fastsgd's backends and on the peers.

Every runner trains an MLP of widths ``sizes`` (default 784-128-10, ReLU
between the layers) with softmax cross-entropy (mean) and plain SGD at
``LR``, from the same initial weights (``initial_weights``), on the same
samples (``load_data``), visiting them in the same order each epoch (the
permutations of ``numpy.random.default_rng(ORDER_SEED)``, which is what a
shuffling ``fastsgd.DataLoader(seed=ORDER_SEED)`` draws), and evaluates the
held-out set after each epoch.  fastsgd runs ``Learner.fit(1)`` on the fused
path.

Each runner has a first (warm-up) epoch, whose losses validate it against the
``numpy`` reference, then ``epochs`` timed epochs.  ``fastsgd bench`` runs each
runner in its own process, so that no runner's thread pool takes the cores from
another, and takes the runners' timed epochs in turn (``lockstep``), so that a slow
spell of a shared machine touches all of them alike.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from . import peers
from .cases import EPOCH_MODEL, EPOCH_SAMPLES, EPOCH_VALID, LR, MODELS, ValidationError

#: Layer widths of the epoch model.
EPOCH_SIZES = MODELS[EPOCH_MODEL][:3]
DATA_SEED, WEIGHT_SEED, ORDER_SEED = 0, 1, 2
#: The first epoch validates a runner against the reference: the losses of its first
#: ``CHECK_STEPS`` steps must agree within ``STEP_RTOL`` (relative), the epoch's mean
#: training loss and the held-out loss after it within ``EPOCH_RTOL``.  SGD at this rate
#: is chaotic: float32 rounding differences stay ~1e-7 for a few hundred steps, then
#: grow, so two correct runners can end an epoch ~0.5% apart.
CHECK_STEPS, STEP_RTOL, EPOCH_RTOL = 20, 1e-4, 2e-2
#: Samples of the quick in-process validation (``validate``).
VALIDATION_SAMPLES = 512


class EpochData(NamedTuple):
    """x (N, I) float32, y (N,) int64 labels, and the held-out vx, vy."""

    x: np.ndarray
    y: np.ndarray
    vx: np.ndarray
    vy: np.ndarray


@functools.lru_cache(maxsize=2)
def load_data(samples: int = EPOCH_SAMPLES, source: str = "random",
              sizes: tuple = EPOCH_SIZES) -> EpochData:
    """``samples`` training rows and ``EPOCH_VALID`` held-out ones.

    ``"random"``: pixels uniform in [0, 1) and labels from a fixed random
    linear teacher (``argmax((x - 0.5) @ T)``), so an epoch learns something
    and a wrong gradient shows in the loss.  Otherwise ``source`` is a folder
    of MNIST-format IDX files (Fashion-MNIST, MNIST), read by ``fastsgd.data``.
    """
    n_in, n_out = sizes[0], sizes[-1]
    if source == "random":
        rng = np.random.default_rng(DATA_SEED)
        x = rng.random((samples + EPOCH_VALID, n_in), dtype=np.float32)
        teacher = rng.standard_normal((n_in, n_out)).astype(np.float32)
        y = np.argmax((x - 0.5) @ teacher, axis=1).astype(np.int64)
        return EpochData(x[:samples], y[:samples], x[samples:], y[samples:])
    from ..data import load_mnist
    ds = load_mnist(source)
    if len(ds.train_x) < samples or ds.train_x.shape[1] != n_in:
        raise ValueError(f"data: {source} holds {len(ds.train_x)} training images of "
                         f"{ds.train_x.shape[1]} pixels; expected {samples} of {n_in}")
    if int(ds.train_y.max()) >= n_out:
        raise ValueError(f"data: {source} has labels up to {int(ds.train_y.max())}; "
                         f"the model has {n_out} outputs")
    return EpochData(np.ascontiguousarray(ds.train_x[:samples], np.float32),
                     ds.train_y[:samples].astype(np.int64),
                     np.ascontiguousarray(ds.valid_x[:EPOCH_VALID], np.float32),
                     ds.valid_y[:EPOCH_VALID].astype(np.int64))


def initial_weights(sizes: tuple = EPOCH_SIZES, seed: int = WEIGHT_SEED) -> list[np.ndarray]:
    """[w (I, O), b (O,)] per layer, uniform in +-1/sqrt(I) like ``fastsgd.Linear``."""
    rng = np.random.default_rng(seed)
    weights = []
    for i, o in zip(sizes, sizes[1:]):
        bound = 1.0 / math.sqrt(i)
        weights += [rng.uniform(-bound, bound, (i, o)).astype(np.float32),
                    rng.uniform(-bound, bound, o).astype(np.float32)]
    return weights


class FastsgdEpoch:
    """``Learner.fit(1)`` on fastsgd backend ``runner``, required to be on the fused path."""

    def __init__(self, runner: str, data: EpochData, weights, bs: int, seed: int):
        import fastsgd as fs
        from ..layers import load_weights
        layers = []
        for i in range(0, len(weights), 2):
            layers += [fs.Linear(*weights[i].shape), fs.ReLU()]
        model = fs.Sequential(*layers[:-1])
        load_weights(model, [w.copy() for w in weights])
        dls = fs.DataLoaders(fs.DataLoader(data.x, data.y, bs, shuffle=True, seed=seed),
                             fs.DataLoader(data.vx, data.vy, len(data.vx)))
        self.learn = fs.Learner(dls, model, fs.cross_entropy, fs.SGD(LR), backend=runner,
                                show=False, progress=False)
        if self.learn.fused is not True:
            raise RuntimeError(f"{runner}: the epoch does not run fused: {self.learn.fused}")

    def epoch(self, check_steps: int = 0):
        """(mean training loss, held-out loss, the first ``check_steps`` step losses)."""
        row = self.learn.fit(1)[0]
        losses = self.learn.recorder.losses
        steps = len(self.learn.dls.train)
        return row["train_loss"], row["valid_loss"], losses[len(losses) - steps:][:check_steps]


def trainer(runner: str, data: EpochData, weights, bs: int, seed: int = ORDER_SEED):
    """An object whose ``epoch(check_steps)`` trains one epoch and returns (mean training
    loss, held-out loss, the first ``check_steps`` step losses)."""
    if runner in peers.EPOCH_PEERS:
        return peers.epoch_trainer(runner, data, weights, bs, seed)
    return FastsgdEpoch(runner, data, weights, bs, seed)


@dataclass(frozen=True)
class EpochSpec:
    """One epoch row: who runs, at which batch size, on how much of which data."""

    runner: str
    bs: int
    samples: int = EPOCH_SAMPLES
    epochs: int = 5
    data: str = "random"
    sizes: tuple = EPOCH_SIZES
    retry: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "EpochSpec":
        fields = json.loads(text)
        fields["sizes"] = tuple(fields["sizes"])
        return cls(**fields)


def pool_stalls(runner: str) -> int | None:
    """For ``c``, how often its thread pool has found a worker kept off its core (by
    another process) and run jobs on the caller alone for a while; None elsewhere."""
    if runner != "c":
        return None
    from ..backends import c_ext
    return c_ext.pool_stalls()


def compare(runner: str, result: dict, reference: dict) -> float:
    """How far ``result``'s first epoch is from ``reference``'s (both ``run_interleaved`` results,
    or dicts of ``train_loss``, ``valid_loss``, ``step_losses``): the largest relative
    difference of the step losses; ``ValidationError`` past the tolerances."""
    steps, ref_steps = result["step_losses"], reference["step_losses"]
    if len(steps) != len(ref_steps):
        raise ValidationError(f"{runner}: reported {len(steps)} step losses, the reference "
                              f"{len(ref_steps)}")
    step_error = max((abs(a - b) / abs(b) for a, b in zip(steps, ref_steps)), default=0.0)
    if not step_error <= STEP_RTOL:   # also catches NaN
        worst = max(range(len(steps)), key=lambda i: abs(steps[i] - ref_steps[i]))
        raise ValidationError(f"{runner}: the loss of step {worst} is {steps[worst]:.7g}, the "
                              f"reference's {ref_steps[worst]:.7g}: {step_error:.3g} apart "
                              f"(relative), more than {STEP_RTOL:g}")
    for key, what in (("train_loss", "mean training loss"), ("valid_loss", "held-out loss")):
        error = abs(result[key] - reference[key]) / abs(reference[key])
        if not error <= EPOCH_RTOL:
            raise ValidationError(f"{runner}: {what} after the first epoch {result[key]:.6g}, "
                                  f"the reference's {reference[key]:.6g}: {error:.3g} apart "
                                  f"(relative), more than {EPOCH_RTOL:g}")
    return step_error


@functools.lru_cache(maxsize=8)
def _reference(bs, samples, sizes) -> dict:
    data = load_data(samples, "random", sizes)
    train, valid, steps = trainer("numpy", data, initial_weights(sizes), bs).epoch(CHECK_STEPS)
    return {"train_loss": train, "valid_loss": valid, "step_losses": steps}


def validate(runner: str, bs: int, samples: int = VALIDATION_SAMPLES,
             sizes: tuple = EPOCH_SIZES) -> float:
    """One epoch of ``samples`` on ``runner`` and on ``numpy``, here; ``compare`` them."""
    data = load_data(samples, "random", sizes)
    train, valid, steps = trainer(runner, data, initial_weights(sizes), bs).epoch(CHECK_STEPS)
    return compare(runner, {"train_loss": train, "valid_loss": valid, "step_losses": steps},
                   _reference(bs, samples, tuple(sizes)))
