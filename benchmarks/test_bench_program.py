"""A fused epoch of a layer program: one hidden layer against two, per backend.

    pytest benchmarks/test_bench_program.py                       # one group per model
    pytest benchmarks/test_bench_program.py --benchmark-disable   # each case once (smoke)

The epoch of ``fastsgd.bench.epochs`` (``Learner.fit(1)`` on the fused path, 60,000
samples, cross-entropy over 10 classes, bs 64, plain SGD at lr 0.1) for 784-128-10 and
784-256-128-10 with ReLU between the layers.  The second model does ``FLOP_RATIO``
(about 2.46) times the work of the first, so on an idle machine its epoch should take
at most that many times as long: per-step overheads (thread wake-ups, the gather, the
update of the block) show as a higher ratio.  Each backend is first validated
(``epochs.validate``), then timed over 5 epochs after a warm-up.  Under
``--benchmark-disable`` the epoch shrinks to ``SMOKE_SAMPLES`` samples.
"""
import pytest

from fastsgd import backends, bench
from fastsgd.bench import epochs

SMOKE_SAMPLES, BS = 2_048, 64
MODELS = {"784-128-10": (784, 128, 10), "784-256-128-10": (784, 256, 128, 10)}
FLOP_RATIO = bench.epoch_flop(MODELS["784-256-128-10"], 1) / bench.epoch_flop(MODELS["784-128-10"], 1)


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


@pytest.mark.parametrize("runner", fused_runners())
@pytest.mark.parametrize("model", list(MODELS))
def test_fused_epoch(benchmark, model, runner):
    sizes = MODELS[model]
    samples = bench.EPOCH_SAMPLES if benchmark.enabled else SMOKE_SAMPLES
    epochs.validate(runner, BS, sizes=sizes)   # raises ValidationError on a mismatch
    data = epochs.load_data(samples, sizes=sizes)
    trainer = epochs.trainer(runner, data, epochs.initial_weights(sizes), BS)
    benchmark.group = f"fused epoch bs{BS}: {model}"
    flop = bench.epoch_flop(sizes, samples)
    benchmark.extra_info.update(model=model, samples=samples, flop=flop, flop_ratio=FLOP_RATIO)
    benchmark.pedantic(trainer.epoch, rounds=5, warmup_rounds=1)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["gflops"] = flop / stats.stats.median / 1e9
