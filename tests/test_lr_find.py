"""lr_find: the rates it tries, where it stops, what it suggests, and that it changes nothing."""
import importlib.util

import numpy as np
import pytest

import fastsgd as fs
from fastsgd.cli import main

from .helpers import fused_backends, separable
from .mnist_fixtures import embedded_data_missing, make_mnist_folder, synthetic_digits


def digits_learner(backend="numpy", classes=(3, 7), n=700, bs=32, momentum=0.0, fused=True):
    """A Learner on synthetic digits: binary (mnist_loss) for two classes, else cross-entropy."""
    images, labels = synthetic_digits(n, seed=2)
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    keep = np.isin(labels, classes)
    x, labels = x[keep], labels[keep]
    fs.set_seed(0)
    if len(classes) == 2:
        y, loss, model = (labels == classes[0]).astype(np.float32), fs.mnist_loss, fs.simple_net(784, 30, 1)
    else:
        y, loss, model = labels.astype(np.int64), fs.cross_entropy, fs.simple_net(784, 30, 10)
    n_valid = len(x) // 5
    dls = fs.DataLoaders.from_arrays(x[n_valid:], y[n_valid:], x[:n_valid], y[:n_valid], bs=bs, seed=0)
    return fs.Learner(dls, model, loss, fs.SGD(0.1, momentum=momentum), [fs.batch_accuracy],
                      backend=backend, show=False, progress=False, fused=fused)


def state(learn):
    """Everything lr_find must leave as it found it, as host copies."""
    host = learn.backend.to_numpy
    return {"values": [host(p.value).copy() for p in learn.model.parameters()],
            "grads": [None if p.grad_value is None else host(p.grad_value).copy()
                      for p in learn.model.parameters()],
            "velocities": [None if v is None else host(v).copy() for v in learn.opt.velocities()],
            "lr": learn.opt.lr, "rng": learn.dls.train.rng_state, "epoch": learn.epoch,
            "history": [{k: v for k, v in row.items() if k != "seconds"}  # timings differ
                        for row in learn.recorder.history],
            "losses": list(learn.recorder.losses), "fused": learn.fused}


def assert_same_state(a, b):
    for key in ("values", "grads", "velocities"):
        assert len(a[key]) == len(b[key])
        for x, y in zip(a[key], b[key]):
            if x is None or y is None:
                assert x is None and y is None, key
            else:
                np.testing.assert_array_equal(x, y, err_msg=key)
    for key in ("lr", "rng", "epoch", "history", "losses", "fused"):
        assert a[key] == b[key], key


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["plain", "momentum"])
def test_lr_find_restores_the_learner_exactly(backend, momentum):
    learn, twin = (digits_learner(backend, classes=(0, 1, 2), momentum=momentum) for _ in range(2))
    for one in (learn, twin):
        one.fit(1)                      # fused: parameters and velocities live in flat blocks
    before = state(learn)
    assert before["fused"] is True
    learn.lr_find(num_it=30)
    assert len(learn.recorder.lr_find.lrs) > len(learn.dls.train)   # it crossed an epoch
    assert_same_state(state(learn), before)
    learn.fit(2)                        # and training goes on exactly as without lr_find
    twin.fit(2)
    assert_same_state(state(learn), state(twin))


def test_lr_find_on_a_fresh_learner_restores_it_too():
    learn, twin = digits_learner(), digits_learner()
    before = state(learn)
    learn.lr_find()
    assert_same_state(state(learn), before)
    learn.fit(1)
    twin.fit(1)
    assert_same_state(state(learn), state(twin))


def test_the_rates_grow_exponentially_and_every_step_is_recorded():
    learn = digits_learner(classes=(0, 1, 2))
    suggestion = learn.lr_find(start_lr=1e-5, end_lr=1.0, num_it=21, stop_div=False)
    found = learn.recorder.lr_find
    np.testing.assert_allclose(found.lrs, np.logspace(-5, 0, 21), rtol=1e-9)
    assert len(found.losses) == len(found.smoothed) == 21 and np.isfinite(found.losses).all()
    assert found.smoothed[0] == pytest.approx(found.losses[0])      # bias-corrected average
    assert suggestion == pytest.approx(found.lrs[np.argmin(found.smoothed)] / 10)
    assert learn.recorder.history == [] and learn.recorder.losses == []


def test_lr_find_stops_when_the_loss_diverges():
    x, y = separable(n=400, classes=3)
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(x[100:], y[100:], x[:100], y[:100], bs=16, seed=0)
    learn = fs.Learner(dls, fs.simple_net(20, 16, 3), fs.cross_entropy, fs.SGD(0.1),
                       backend="numpy", show=False, progress=False)
    with np.errstate(all="ignore"):
        learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=100)
    found = learn.recorder.lr_find
    assert 2 < len(found.lrs) < 100
    last = found.smoothed[-1]
    assert not np.isfinite(last) or last > 4 * np.nanmin(found.smoothed[:-1]) or \
        not np.isfinite(learn.model.forward(x[:5].astype(np.float32))).all()
    with np.errstate(all="ignore"):
        learn.lr_find(start_lr=1e-3, end_lr=1e6, num_it=100, stop_div=False)
    assert len(learn.recorder.lr_find.lrs) >= len(found.lrs)  # on until a loss is not finite
    for p in learn.model.parameters():  # the weights are back after all that
        assert np.isfinite(p.value).all()


@pytest.mark.parametrize("classes", [(3, 7), tuple(range(10))], ids=["3-vs-7", "ten"])
def test_the_suggestion_on_synthetic_digits_is_a_sensible_rate(classes):
    learn = digits_learner(classes=classes, n=1000, momentum=0.0 if len(classes) == 2 else 0.9)
    suggestion = learn.lr_find()
    assert 1e-3 <= suggestion <= 10
    history = learn.fit(2, lr=suggestion)   # and it trains
    assert history[-1]["batch_accuracy"] >= 0.9


@pytest.mark.skipif(bool(embedded_data_missing()), reason=str(embedded_data_missing()))
def test_the_suggestion_on_the_embedded_3_vs_7_set_is_between_1e_3_and_10():
    from fastsgd import data
    ds = data.load_embedded()
    train_x, train_y = data.select_digits(ds.train_x, ds.train_y, (3, 7))
    valid_x, valid_y = data.select_digits(ds.valid_x, ds.valid_y, (3, 7))
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=64, seed=0)
    learn = fs.Learner(dls, fs.simple_net(784, 30, 1), fs.mnist_loss, fs.SGD(1.0),
                       [fs.batch_accuracy], show=False, progress=False)
    assert 1e-3 <= learn.lr_find() <= 10


def test_lr_find_rejects_bad_arguments():
    learn = digits_learner()
    for kwargs, text in [(dict(start_lr=0), "start_lr"), (dict(end_lr=float("inf")), "end_lr"),
                         (dict(start_lr=1.0, end_lr=0.5), "end_lr: expected a rate above"),
                         (dict(num_it=1), "num_it"), (dict(num_it=2.5), "num_it")]:
        with pytest.raises(ValueError, match=text):
            learn.lr_find(**kwargs)
    with pytest.raises(ValueError, match="run learn.lr_find"):
        learn.recorder.plot_lr_find("x.png")


needs_matplotlib = pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                                      reason="plotting needs matplotlib")


@needs_matplotlib
def test_plot_lr_find_draws_a_png(tmp_path):
    learn = digits_learner()
    learn.lr_find(num_it=20)
    path = learn.recorder.plot_lr_find(tmp_path / "plots" / "lr.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["lr.png"]


# ------------------------------------------------------------------ command line
@needs_matplotlib
def test_the_command_prints_the_suggestion_and_draws_the_plot(tmp_path, capsys):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=600, n_valid=200, seed=0)
    plot = tmp_path / "lr.png"
    assert main(["lr-find", "--data", str(folder), "--backend", "numpy", "--no-progress",
                 "--plot", str(plot)]) == 0
    captured = capsys.readouterr()
    *_, last, wrote = captured.out.strip().splitlines()
    assert last.startswith("suggested lr ")
    assert 1e-3 <= float(last.split()[2]) <= 10
    assert wrote == f"wrote {plot}"
    assert captured.err == ""
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_the_command_takes_train_s_model_options_and_refuses_bad_ones(tmp_path, capsys):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=300, n_valid=100, seed=0)
    assert main(["lr-find", "--data", str(folder), "--digits", "all", "--model", "mlp",
                 "--hidden", "16,8", "--activation", "tanh", "--bs", "32", "--seed", "3",
                 "--backend", "numpy", "--no-progress", "--num-it", "20"]) == 0
    out = capsys.readouterr().out
    assert "784-16-8-10 (tanh)" in out and "momentum 0.9" in out and "20 steps" in out
    assert main(["lr-find", "--data", str(folder), "--num-it", "1"]) == 2
    assert "--num-it" in capsys.readouterr().err
    assert main(["lr-find", "--data", str(tmp_path / "missing")]) == 2
