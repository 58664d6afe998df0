"""A fused epoch of a layer program: one hidden layer against two, per backend.

    pytest benchmarks/test_bench_program.py                       # one group per model
    pytest benchmarks/test_bench_program.py --benchmark-disable   # each case once (smoke)

``Learner.fit(1)`` on 60,000 random 784-pixel samples, cross-entropy over 10 classes,
bs 64, plain SGD at lr 0.1, on the fused path (one ``train_epoch`` call per epoch), for
784-128-10 and 784-256-128-10 with ReLU between the layers.  The second model does
``FLOP_RATIO`` (about 2.46) times the work of the first, so on an idle machine its epoch
should take at most that many times as long: per-step overheads (thread wake-ups, the
gather, the update of the block) show as a higher ratio.  Each backend is first
validated (weights after a short unshuffled epoch match the numpy backend's), then
timed over 5 epochs after a warm-up.  Under ``--benchmark-disable`` the epoch shrinks
to ``SMOKE_SAMPLES`` samples.
"""
import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends

SAMPLES, SMOKE_SAMPLES, VALIDATION_SAMPLES = 60_000, 2_048, 512
BS, CLASSES, LR = 64, 10, 0.1
MODELS = {"784-128-10": (784, 128, 10), "784-256-128-10": (784, 256, 128, 10)}


def flop_per_sample(sizes) -> int:
    """2 * (forward MACs + weight-gradient MACs + input-gradient MACs past the first layer)."""
    macs = [i * o for i, o in zip(sizes, sizes[1:])]
    return 2 * (2 * sum(macs) + sum(macs[1:]))


FLOP_RATIO = flop_per_sample(MODELS["784-256-128-10"]) / flop_per_sample(MODELS["784-128-10"])


def fused_runners():
    """Every backend as a param; unavailable ones and those without a fused kernel skip."""
    params = []
    for name, status in backends.available().items():
        reason = None if status is True else f"{name} unavailable: {status}"
        if reason is None and not backends.get(name).supports("train_epoch"):
            reason = f"{name} has no fused train_epoch kernel"
        params.append(pytest.param(name, id=name,
                                   marks=[pytest.mark.skip(reason=reason)] if reason else []))
    return params


def data(samples):
    rng = np.random.default_rng(0)
    x = rng.random((samples, 784), dtype=np.float32)
    return x, rng.integers(0, CLASSES, samples)


def learner(backend, sizes, x, y, shuffle=True):
    """A fused Learner of the model ``sizes`` (ReLU between layers), same init every call."""
    layers = []
    rng = np.random.default_rng(1)
    for i, o in zip(sizes, sizes[1:]):
        layers += [fs.Linear(i, o, rng=rng), fs.ReLU()]
    dls = fs.DataLoaders(fs.DataLoader(x, y, BS, shuffle=shuffle, seed=0),
                         fs.DataLoader(x[:BS], y[:BS], BS))
    learn = fs.Learner(dls, fs.Sequential(*layers[:-1]), fs.cross_entropy, fs.SGD(LR),
                       backend=backend, show=False, progress=False)
    assert learn.fused is True, learn.fused
    return learn


def weights(learn):
    return [learn.backend.to_numpy(p.value).astype(np.float64) for p in learn.model.parameters()]


def validate(backend, sizes):
    x, y = data(VALIDATION_SAMPLES)
    mine, ref = learner(backend, sizes, x, y, False), learner("numpy", sizes, x, y, False)
    mine.fit(1)
    ref.fit(1)
    for a, b in zip(weights(mine), weights(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("runner", fused_runners())
@pytest.mark.parametrize("model", list(MODELS))
def test_fused_epoch(benchmark, model, runner):
    sizes = MODELS[model]
    samples = SAMPLES if benchmark.enabled else SMOKE_SAMPLES
    validate(runner, sizes)
    learn = learner(runner, sizes, *data(samples))
    benchmark.group = f"fused epoch bs{BS}: {model}"
    flop = flop_per_sample(sizes) * samples
    benchmark.extra_info.update(model=model, samples=samples, flop=flop, flop_ratio=FLOP_RATIO)
    benchmark.pedantic(learn.fit, args=(1,), rounds=5, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gflops"] = flop / stats.stats.median / 1e9
