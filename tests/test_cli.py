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

from .mnist_fixtures import embedded_data_missing, make_mnist_folder, write_idx

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


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_train_a_deeper_mlp_on_the_fused_path(tmp_path, digits_folder, capsys, activation):
    code, result = train(tmp_path, "--data", str(digits_folder), "--digits", "all", "--epochs", "2",
                         "--hidden", "24,12", "--activation", activation, "--backend", "numpy",
                         "--save", str(tmp_path / "deep.npz"))
    assert code == 0
    assert result["settings"]["fused"] is True and result["settings"]["hidden"] == [24, 12]
    assert f"model 784-24-12-10 ({activation}), backend numpy (fused)" in capsys.readouterr().out
    layers = fs.load_model(tmp_path / "deep.npz").config()["layers"]
    assert [layer["type"] for layer in layers] == ["Linear", activation.title().replace("Relu", "ReLU"),
                                                   "Linear", layers[1]["type"], "Linear"]


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
    (["--hidden", "30,0"], "expected hidden sizes like 30 or 256,128"),
    (["--hidden", "a"], "expected hidden sizes like 30 or 256,128"),
    (["--activation", "gelu"], "invalid choice: 'gelu'"),
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


@pytest.mark.skipif(bool(embedded_data_missing()), reason=str(embedded_data_missing()))
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


# ---------------------------------------------------------------- output files and errors
FAST = ["--no-progress", "--epochs", "1", "--model", "linear", "--backend", "numpy"]


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("option, path, text", [
    ("--save", "/proc/x/m.npz", "--save: cannot write /proc/x/m.npz: cannot create folder /proc/x"),
    ("--json", "{tmp}", "--json: cannot write"),
    ("--plot", "{tmp}/file/p.png", "--plot: cannot write"),
])
def test_unwritable_outputs_fail_before_training(tmp_path, digits_folder, capsys, option, path, text):
    (tmp_path / "file").write_text("a file, not a folder")
    path = path.format(tmp=tmp_path)
    assert main(["train", "--data", str(digits_folder), *FAST, option, path]) == 2
    captured = capsys.readouterr()
    assert text in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "epoch" not in captured.out and "accuracy" not in captured.out


def test_two_outputs_on_stdout_or_one_file_are_refused(tmp_path, digits_folder, capsys):
    args = ["train", "--data", str(digits_folder), *FAST]
    assert main([*args, "--save", "-", "--json", "-"]) == 2
    assert "only one of --save, --json and --plot can be standard output" in capsys.readouterr().err
    same = str(tmp_path / "same")
    assert main([*args, "--save", same, "--json", same]) == 2
    assert "name the same file" in capsys.readouterr().err


def test_outputs_are_0644_under_umask_022(tmp_path, digits_folder):
    old = os.umask(0o022)
    try:
        names = ["m.npz", "r.json"] + (["p.png"] if importlib.util.find_spec("matplotlib") else [])
        extra = ["--plot", str(tmp_path / "p.png")] if "p.png" in names else []
        assert main(["train", "--data", str(digits_folder), *FAST, "--save", str(tmp_path / "m.npz"),
                     "--json", str(tmp_path / "r.json"), *extra]) == 0
    finally:
        os.umask(old)
    for name in names:
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    assert leftovers(tmp_path) == []


def test_a_symlinked_save_stays_a_symlink(tmp_path, digits_folder):
    real = tmp_path / "models" / "real.npz"
    real.parent.mkdir()
    link = tmp_path / "link.npz"
    link.symlink_to(real)
    assert main(["train", "--data", str(digits_folder), *FAST, "--save", str(link)]) == 0
    assert link.is_symlink() and fs.load_model(real).config()["layers"][0]["n_in"] == 784


def test_device_nodes_stay_device_nodes(tmp_path, digits_folder):
    import stat
    if os.geteuid() != 0:
        pytest.skip("making device nodes needs root")
    nodes = [tmp_path / "save-node", tmp_path / "json-node"]
    try:
        for node in nodes:
            os.mknod(node, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    except OSError as e:
        pytest.skip(f"cannot make a device node: {e}")
    assert main(["train", "--data", str(digits_folder), *FAST, "--save", str(nodes[0]),
                 "--json", str(nodes[1])]) == 0
    assert all(stat.S_ISCHR(node.stat().st_mode) for node in nodes)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["json-node", "save-node"]


def test_json_to_stdout(tmp_path, digits_folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", str(digits_folder), *FAST, "--json", "-"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["settings"]["json"] == "-" and len(result["history"]) == 1
    assert "accuracy" in captured.err and "epoch" in captured.err
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_right_after_saving_is_an_interrupt(tmp_path, digits_folder, capsys, monkeypatch):
    from fastsgd import files
    out = tmp_path / "m.npz"
    out.write_bytes(b"old")
    real_replace = os.replace

    def interrupted(src, dst):
        real_replace(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(files.os, "replace", interrupted)
    assert main(["train", "--data", str(digits_folder), *FAST, "--save", str(out)]) == 130
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert capsys.readouterr().err.strip() == "fastsgd train: interrupted"
    assert fs.load_model(out).config()["layers"][0]["n_in"] == 784 and leftovers(tmp_path) == []


def test_memory_error_is_one_line(tmp_path, digits_folder, capsys, monkeypatch):
    from fastsgd import data

    def no_memory(path, valid_pct=None):
        raise MemoryError("Unable to allocate 1.49 GiB for an array with shape (20000, 20000)")

    monkeypatch.setattr(data, "load_mnist", no_memory)
    assert main(["train", "--data", str(digits_folder), *FAST]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastsgd train: error: out of memory") and "1.49 GiB" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("payload, text", [
    ("bomb", "trailing data"),
    (bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2, "hold no data"),
])
def test_bad_data_files_are_one_line(tmp_path, digits_folder, capsys, payload, text):
    import gzip
    folder = tmp_path / "data"
    folder.mkdir()
    for f in digits_folder.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    if payload == "bomb":
        header = bytes([0, 0, 8, 3]) + (600).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        mib = bytes(1 << 20)
        payload = gzip.compress(header + mib) + gzip.compress(mib) * 1000
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(payload)
    assert main(["train", "--data", str(folder), *FAST]) == 2
    err = capsys.readouterr().err
    assert "t10k-images-idx3-ubyte.gz" in err and text in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
