"""Divergence and bad learning rates are caught the same way on every backend and path."""
import numpy as np
import pytest

import fastsgd as fs

from .helpers import backend_params, make_learner, separable

PATHS = [pytest.param(True, id="fused"), pytest.param(False, id="layered")]


def learner(backend, fused, loss=fs.cross_entropy, lr=0.1, scale=1.0):
    classes = 3 if loss is fs.cross_entropy else None
    x, y = separable(n=400, features=12, classes=classes)
    model = fs.simple_net(12, 8, 3 if classes else 1)
    learn = make_learner(backend, x * scale, y, model, loss, lr=lr)
    learn.fused = fused
    return learn


#: What a rate out of the kernels' bounds is told (``optim.checked_lr``).
IN_FLOAT32 = "expected a finite number in [0.0, 3.4e38 (the float32 limit)], got"


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("schedule, text", [
    (lambda progress: -1.0, f"{IN_FLOAT32} -0.1"),
    (lambda progress: float("nan"), f"{IN_FLOAT32} nan"),
    (lambda progress: 1e40, f"{IN_FLOAT32} 1.0000000000000001e+39"),
    (lambda progress: "fast", "expected a real number as the learning rate, got 'fast'"),
], ids=["negative", "nan", "beyond-float32", "not-a-number"])
def test_a_schedule_giving_a_bad_rate_is_refused_before_any_step(backend, fused, schedule, text):
    learn = learner(backend, fused)
    before = [learn.backend.to_numpy(p.value).copy() for p in learn.model.parameters()]
    with pytest.raises(ValueError) as info:
        learn.fit(2, schedule=schedule)
    assert str(info.value) == f"schedule: step 0's learning rate (lr times the schedule's multiplier): {text}"
    after = [learn.backend.to_numpy(p.value) for p in learn.model.parameters()]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fused", PATHS)
def test_a_huge_weight_decay_is_named_as_the_cause(backend, fused):
    learn = learner(backend, fused)
    learn.opt.weight_decay = 1e30
    with pytest.raises(fs.TrainingDiverged, match=r"lower the weight decay \(wd=1e\+30: with "
                                                  r"lr=0.1 and momentum=0 it alone grows"):
        learn.fit(2)


@pytest.mark.parametrize("wd, momentum, advice", [
    (0.0, 0.0, "lower the learning rate (lr=1.0)"),
    (1.9, 0.0, "lower the learning rate (lr=1.0)"),       # the decay alone shrinks the weights
    (2.0, 0.0, "lower the weight decay (wd=2: with lr=1"),
    (3.0, 0.9, "lower the learning rate (lr=1.0)"),       # stable under momentum 0.9
    (3.8, 0.9, "lower the weight decay (wd=3.8: with lr=1 and momentum=0.9"),
])
def test_divergence_advice_names_the_weight_decay_only_when_it_alone_diverges(wd, momentum,
                                                                              advice):
    from fastsgd.learner import divergence_advice
    assert divergence_advice(fs.SGD(1.0, momentum, wd)).startswith(advice)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fused", PATHS)
@pytest.mark.parametrize("loss", [fs.cross_entropy, fs.mnist_loss], ids=["cross_entropy", "mnist_loss"])
def test_a_huge_learning_rate_raises_training_diverged(backend, fused, loss):
    learn = learner(backend, fused, loss, lr=1e30)
    with pytest.raises(fs.TrainingDiverged, match="lower the learning rate"):
        learn.fit(2)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("fused", PATHS)
def test_a_loss_that_explodes_while_finite_is_divergence(backend, fused):
    learn = learner(backend, fused, lr=10.0)
    with pytest.raises(fs.TrainingDiverged, match="training loss grew from"):
        learn.fit(3)


@pytest.mark.parametrize("backend", backend_params())
def test_a_good_rate_trains_without_a_false_alarm(backend):
    learn = learner(backend, True, lr=0.5)
    history = learn.fit(3)
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_the_bound_follows_the_first_loss_of_training():
    learn = learner("numpy", False, lr=0.1)
    learn.fit(1)
    first = learn.recorder.losses[0]
    assert learn.recorder.history[0]["train_loss"] < fs.learner.DIVERGED_LOSS_FACTOR * first + 1
