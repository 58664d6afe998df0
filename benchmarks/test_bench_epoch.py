"""A whole training epoch per backend: ``Learner.fit(1)``, and the same in PyTorch.

60,000 random 784-pixel samples; 784-30-1 with mnist_loss and 784-128-10 with
cross_entropy; batch sizes 64 and 256; plain SGD, lr 0.1.  Each runner is first
validated (weights after a short unshuffled run match the reference's), then
timed over 5 epochs after a warm-up epoch.  Under ``--benchmark-disable`` the
epoch shrinks to ``SMOKE_SAMPLES`` samples so the smoke run stays quick.
"""
import pytest

from fastsgd import bench

from .conftest import record, runner_params

SMOKE_SAMPLES = 2_048


@pytest.mark.parametrize("runner", runner_params())
@pytest.mark.parametrize("bs", bench.BATCH_SIZES, ids=lambda bs: f"bs{bs}")
@pytest.mark.parametrize("model", list(bench.MODELS))
def test_epoch(benchmark, model, bs, runner, machine):
    samples = bench.EPOCH_SAMPLES if benchmark.enabled else SMOKE_SAMPLES
    case = bench.epoch_case(model, bs, samples)
    job = bench.prepare(case, runner)
    benchmark.group = case.group
    benchmark.extra_info["samples"] = samples
    with bench.timing(runner):
        benchmark.pedantic(job.fn, rounds=5, warmup_rounds=1)
    record(benchmark, case, job, machine)
