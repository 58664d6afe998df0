"""The fused training path agrees with the layer-by-layer path."""
import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends
from fastsgd.fused import plan

from .conftest import DEVICE_BACKENDS
from .test_learner import make_learner, separable


def fused_backends():
    """Host backends with a fused epoch kernel (device ones are covered by tests_cuda)."""
    return [name for name, ok in backends.available().items()
            if ok is True and name not in DEVICE_BACKENDS
            and hasattr(backends.get(name)._impl, "train_epoch")]


CASES = {
    "linear-binary": (lambda: fs.Sequential(fs.Linear(40, 1)), fs.mnist_loss, None, 1.0, 0.0, 0.0),
    "mlp-binary-momentum-wd": (lambda: fs.simple_net(40, 24, 1), fs.mnist_loss, None, 0.5, 0.9, 1e-3),
    "mlp-ten-classes": (lambda: fs.simple_net(40, 24, 10), fs.cross_entropy, 10, 0.1, 0.9, 0.0),
    "linear-ten-classes-wd": (lambda: fs.Sequential(fs.Linear(40, 10)), fs.cross_entropy, 10, 0.1, 0.0, 1e-2),
}


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("case", list(CASES))
def test_fused_matches_layer_by_layer_after_three_epochs(backend, case):
    build, loss, classes, lr, momentum, wd = CASES[case]
    x, y = separable(n=530, features=40, classes=classes, seed=3)  # 430 train: a short last batch
    runs = {}
    for fused in (False, True):
        fs.set_seed(11)  # the same initial weights for both paths
        learn = make_learner(backend, x, y, build(), loss, bs=32, lr=lr, momentum=momentum)
        learn.opt.weight_decay = wd
        learn.fused = fused
        assert (plan(learn.backend, learn.model, loss, learn.opt, learn.dls.train) is not None) \
            or not fused
        history = learn.fit(3, schedule="cosine")
        runs[fused] = ([p.value.copy() for p in learn.model.parameters()], history,
                       list(learn.recorder.losses))
    (w0, h0, l0), (w1, h1, l1) = runs[False], runs[True]
    for a, b in zip(w0, w1):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(l0, l1, rtol=1e-4, atol=1e-6)
    for r0, r1 in zip(h0, h1):
        assert r0["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-4)
        assert r0["batch_accuracy"] == pytest.approx(r1["batch_accuracy"], abs=0.011)


def test_models_the_fused_kernel_does_not_cover_take_the_layer_path():
    x, y = separable(n=200, features=20)
    numba_like = [b for b in fused_backends()]
    if not numba_like:
        pytest.skip("no backend with a fused kernel")
    deep = fs.Sequential(fs.Linear(20, 8), fs.ReLU(), fs.Linear(8, 8), fs.ReLU(), fs.Linear(8, 1))
    learn = make_learner(numba_like[0], x, y, deep)
    assert plan(learn.backend, learn.model, fs.mnist_loss, learn.opt, learn.dls.train) is None
    sig = fs.Sequential(fs.Linear(20, 8), fs.Sigmoid(), fs.Linear(8, 1))
    learn = make_learner(numba_like[0], x, y, sig)
    assert plan(learn.backend, learn.model, fs.mnist_loss, learn.opt, learn.dls.train) is None
    assert plan(backends.get("numpy"), fs.simple_net(20, 4, 1), fs.mnist_loss, learn.opt,
                learn.dls.train) is None  # the reference has no fused kernel


@pytest.mark.parametrize("backend", fused_backends())
def test_fused_training_that_diverges_stops_with_a_clear_error(backend):
    x, y = separable(classes=2)
    learn = make_learner(backend, x * 1e4, y, fs.Sequential(fs.Linear(20, 2)), fs.cross_entropy,
                         lr=1e38)
    with pytest.raises(fs.TrainingDiverged, match="lower the learning rate"):
        learn.fit(2)
