"""A whole training epoch per runner, in this process: fastsgd's fused epoch and the peers.

The epoch of ``fastsgd.bench.epochs``: 784-128-10 (ReLU), softmax cross-entropy, plain
SGD at lr 0.1, batch sizes 64 and 256, the same samples, initial weights and order for
every runner.  Each runner is first validated (``epochs.validate``: its first step
losses and its epoch's losses against the numpy reference's on a short run), then
timed over 5 epochs after a warm-up epoch.  ``fastsgd bench`` runs the same epochs,
each runner in a process of its own; here they share one, so an idle thread pool of
one runner may still slow another.  Under ``--benchmark-disable`` the epoch shrinks to
``SMOKE_SAMPLES`` samples and torch.compile, which compiles for tens of seconds, is skipped.
"""
import pytest

from fastsgd import bench
from fastsgd.bench import epochs

from .conftest import record, runner_params

SMOKE_SAMPLES = 2_048


@pytest.mark.parametrize("runner", runner_params("epoch"))
@pytest.mark.parametrize("bs", bench.BATCH_SIZES, ids=lambda bs: f"bs{bs}")
def test_epoch(benchmark, bs, runner, machine):
    if runner == "torch.compile" and not benchmark.enabled:
        pytest.skip("torch.compile compiles for tens of seconds; it runs when timing")
    samples = bench.EPOCH_SAMPLES if benchmark.enabled else SMOKE_SAMPLES
    case = bench.epoch_case(bs, samples)
    error = epochs.validate(runner, bs)   # raises ValidationError on a mismatch
    trainer = epochs.trainer(runner, epochs.load_data(samples), epochs.initial_weights(), bs)
    benchmark.group = case.group
    benchmark.extra_info["samples"] = samples
    with bench.timing(runner):
        benchmark.pedantic(trainer.epoch, rounds=5, warmup_rounds=1)
    record(benchmark, case, runner, machine, error)
