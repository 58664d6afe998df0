"""Checkpoints resume exactly: 3 epochs + 3 resumed epochs give the weights of 6 epochs,
bit for bit, on every host backend, through the CLI and through the Learner."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fastsgd as fs
from fastsgd.cli import main
from fastsgd.layers import read_checkpoint

from .conftest import backend_params
from .mnist_fixtures import make_mnist_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("mnist"), n_train=300, n_valid=100, seed=0)


def train(*args) -> int:
    return main(["train", "--no-progress", "--quiet", *map(str, args)])


def assert_same_checkpoint(a, b):
    """Two checkpoints hold the same weights, velocities, losses, epoch, shuffling and history."""
    x, y = read_checkpoint(a), read_checkpoint(b)
    assert x.config == y.config
    for name, first, second in (("weights", x.weights, y.weights),
                                ("velocities", x.velocities, y.velocities)):
        assert len(first) == len(second), name
        for u, v in zip(first, second):
            assert u.dtype == v.dtype == np.float32
            np.testing.assert_array_equal(u, v, err_msg=name)
    np.testing.assert_array_equal(x.losses, y.losses)
    for key in ("epoch", "rng", "opt", "classes", "targets"):
        assert x.state[key] == y.state[key], key
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(x.state["history"]) == drop(y.state["history"])


@pytest.mark.parametrize("backend", backend_params())
def test_three_plus_three_resumed_epochs_are_six_epochs_bit_for_bit(tmp_path, folder, backend):
    common = ["--data", folder, "--digits", "all", "--momentum", "0.9", "--backend", backend]
    assert train(*common, "--epochs", 3, "--save", tmp_path / "a.npz") == 0
    assert train("--resume", tmp_path / "a.npz", "--epochs", 3, "--save", tmp_path / "b.npz",
                 "--json", tmp_path / "b.json") == 0
    assert train(*common, "--epochs", 6, "--save", tmp_path / "c.npz") == 0
    assert_same_checkpoint(tmp_path / "b.npz", tmp_path / "c.npz")
    state = read_checkpoint(tmp_path / "b.npz").state
    assert state["epoch"] == 6 and [r["epoch"] for r in state["history"]] == list(range(6))
    assert state["classes"] == list(range(10)) and state["opt"]["momentum"] == 0.9
    report = json.loads((tmp_path / "b.json").read_text())
    assert report["settings"]["backend"] == backend and report["settings"]["digits"] == list(range(10))
    assert report["settings"]["resume"] == str(tmp_path / "a.npz")
    assert len(report["history"]) == 6 and report["accuracy"] >= 0.8
    velocities = read_checkpoint(tmp_path / "a.npz").velocities
    assert velocities is not None and all(v.any() for v in velocities)   # momentum was in flight


def test_a_resumed_binary_run_matches_too(tmp_path, folder):
    common = ["--data", folder, "--backend", "numpy", "--model", "linear"]
    assert train(*common, "--epochs", 2, "--save", tmp_path / "a.npz") == 0
    assert train("--resume", tmp_path / "a.npz", "--epochs", 2, "--save", tmp_path / "b.npz") == 0
    assert train(*common, "--epochs", 4, "--save", tmp_path / "c.npz") == 0
    assert_same_checkpoint(tmp_path / "b.npz", tmp_path / "c.npz")
    state = read_checkpoint(tmp_path / "b.npz").state
    assert state["classes"] == [3, 7] and state["targets"] == "binary"
    assert state["opt"]["momentum"] == 0.0 and state["opt"]["lr"] == 1.0


def test_resume_takes_the_checkpoints_settings_unless_given(tmp_path, folder):
    assert train("--data", folder, "--digits", "1,2,3", "--hidden", 12, "--bs", 32, "--lr", 0.05,
                 "--wd", 0.001, "--schedule", "cosine", "--backend", "numpy", "--epochs", 1,
                 "--save", tmp_path / "a.npz") == 0
    assert train("--resume", tmp_path / "a.npz", "--epochs", 1, "--lr", 0.02,
                 "--json", tmp_path / "r.json", "--save", tmp_path / "b.npz") == 0
    settings = json.loads((tmp_path / "r.json").read_text())["settings"]
    assert settings["digits"] == [1, 2, 3] and settings["hidden"] == [12] and settings["bs"] == 32
    assert settings["wd"] == 0.001 and settings["schedule"] == "cosine"
    assert settings["backend"] == "numpy" and settings["lr"] == 0.02
    assert settings["data"] == str(folder)
    saved = read_checkpoint(tmp_path / "b.npz").state
    assert saved["opt"] == {"lr": 0.02, "momentum": 0.9, "weight_decay": 0.001}
    assert saved["settings"]["lr"] == 0.02 and saved["settings"]["data"] == str(folder.resolve())


def test_seed_with_resume_starts_a_new_shuffle(tmp_path, folder):
    common = ["--data", folder, "--digits", "all", "--backend", "numpy"]
    assert train(*common, "--epochs", 1, "--save", tmp_path / "a.npz") == 0
    for name, extra in (("same.npz", []), ("reseeded.npz", ["--seed", 5])):
        assert train("--resume", tmp_path / "a.npz", "--epochs", 1, *extra,
                     "--save", tmp_path / name) == 0
    rng = {name: read_checkpoint(tmp_path / name).state["rng"] for name in ("same.npz", "reseeded.npz")}
    fresh = np.random.default_rng(5)
    fresh.permutation(300)                        # the one epoch's shuffle after reseeding
    assert rng["reseeded.npz"] == fresh.bit_generator.state != rng["same.npz"]


@pytest.mark.parametrize("extra, text", [
    (["--digits", "1,2"], "--digits: "),
    (["--hidden", "7"], "a resumed run keeps its model and digits"),
    (["--model", "linear"], "--model: "),
])
def test_resume_refuses_to_change_the_model(tmp_path, folder, capsys, extra, text):
    assert train("--data", folder, "--backend", "numpy", "--epochs", 1, "--save", tmp_path / "a.npz") == 0
    capsys.readouterr()
    assert train("--resume", tmp_path / "a.npz", *extra) == 2
    err = capsys.readouterr().err
    assert text in err and len(err.strip().splitlines()) == 1


def test_resume_of_a_missing_weights_only_or_broken_file_is_one_line(tmp_path, folder, capsys):
    weights_only = fs.save_model(fs.simple_net(784, 30, 1), tmp_path / "w.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    for path, text in ((tmp_path / "missing.npz", "does not exist"),
                       (weights_only, "is not a checkpoint of fastsgd train"),
                       (tmp_path / "junk.npz", "is not a fastsgd model")):
        assert train("--resume", path, "--epochs", 1) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastsgd train: error: --resume: ") and text in err, err
        assert len(err.strip().splitlines()) == 1


def test_resume_on_a_backend_unavailable_here_asks_for_backend(tmp_path, folder, capsys, monkeypatch):
    assert train("--data", folder, "--backend", "numpy", "--epochs", 1, "--save", tmp_path / "a.npz") == 0
    real = fs.backends.available
    monkeypatch.setattr(fs.backends, "available", lambda: {**real(), "numpy": "switched off"})
    assert train("--resume", tmp_path / "a.npz", "--epochs", 1) == 2
    assert "unavailable here (switched off); pass --backend" in capsys.readouterr().err


# ---------------------------------------------------------------- through the Learner

def make_learner(seed, fused=True, backend="numpy"):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((240, 12)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64) + (x[:, 3] > 1).astype(np.int64)
    fs.set_seed(seed)
    dls = fs.DataLoaders.from_arrays(x[:200], y[:200], x[200:], y[200:], bs=24, seed=seed)
    model = fs.Sequential(fs.Linear(12, 8), fs.Tanh(), fs.Linear(8, 3))
    return fs.Learner(dls, model, fs.cross_entropy, fs.SGD(0.1, momentum=0.9, weight_decay=1e-3),
                      [fs.batch_accuracy], backend=backend, show=False, fused=fused)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "layer-by-layer"])
def test_learner_save_load_continues_exactly(tmp_path, fused):
    first = make_learner(0, fused)
    first.fit(2)
    first.save(tmp_path / "ckpt.npz")
    first.fit(2)
    again = make_learner(123, fused).load(tmp_path / "ckpt.npz")   # other init, other shuffles
    assert again.epoch == 2 and len(again.recorder.history) == 2
    again.fit(2)
    for p, q in zip(first.model.parameters(), again.model.parameters()):
        np.testing.assert_array_equal(p.value, q.value)
    assert again.recorder.losses == first.recorder.losses
    assert [r["train_loss"] for r in again.recorder.history] == \
        [r["train_loss"] for r in first.recorder.history]


def test_weights_only_save_restores_weights_and_restarts_momentum(tmp_path):
    learn = make_learner(0)
    learn.fit(1)
    learn.classes = ["low", "mid", "high"]
    learn.save(tmp_path / "w.npz", with_opt=False)
    stored = read_checkpoint(tmp_path / "w.npz")
    assert stored.velocities is None and stored.losses is None and "opt" not in stored.state
    other = make_learner(7)
    other.fit(1)
    other.load(tmp_path / "w.npz")
    assert other.epoch == 1 and other.classes == ["low", "mid", "high"]
    assert all(not v.any() for v in other.opt.velocities())
    for p, q in zip(learn.model.parameters(), other.model.parameters()):
        np.testing.assert_array_equal(p.value, q.value)
