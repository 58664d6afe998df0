"""Corrupt, hostile or surprising inputs to the readers, the writers and the command line:
each refused in one line (or handled), none crashing, none losing a file."""
import numpy as np
import pytest

import fastsgd as fs
from fastsgd import data, layers
from fastsgd.cli import main


def _flip(path, offset, bit):
    """Flip one bit of the file ``path`` at byte ``offset``."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _flip_in_npy_header(path):
    """Flip the bit that turns the first .npy header of ``path`` into an unterminated literal
    (numpy's parser then raises tokenize.TokenError)."""
    at = path.read_bytes().index(b"\x93NUMPY")
    _flip(path, at + 8, 6)                           # the header's opening brace


def _one_line_error(capsys, command):
    """The stderr line of a command that must fail with exit code 2 in one line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"fastsgd {command}: error: "), err
    return err[0]


# ------------------------------------------------------------ item 5: .npy headers
def test_a_flipped_bit_in_a_model_files_npy_header_is_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    layers.save_model(layers.Sequential(layers.Linear(784, 10)), path)
    _flip_in_npy_header(path)
    with pytest.raises(ValueError, match="bad .npy header"):
        fs.load_model(path)
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 784), np.float32))
    assert main(["predict", str(path), str(images)]) == 2
    assert "bad .npy header" in _one_line_error(capsys, "predict")
    assert main(["interpret", str(path), "--digits", "all"]) == 2
    assert "bad .npy header" in _one_line_error(capsys, "interpret")
    assert main(["train", "--resume", str(path), "--epochs", "1"]) == 2
    assert "bad .npy header" in _one_line_error(capsys, "train")


def test_a_flipped_bit_in_an_images_npy_header_is_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    layers.save_model(layers.Sequential(layers.Linear(784, 10)), path)
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 784), np.float32))
    _flip_in_npy_header(images)
    with pytest.raises(data.DataError, match="not a .npy array"):
        data.load_images(images)
    assert main(["predict", str(path), str(images)]) == 2
    assert "not a .npy array" in _one_line_error(capsys, "predict")


def test_a_corrupt_embedded_cache_is_rebuilt(tmp_path):
    first = data.load_embedded(cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    _flip_in_npy_header(cache)
    again = data.load_embedded(cache_dir=tmp_path)
    np.testing.assert_array_equal(again.train_x, first.train_x)
    np.testing.assert_array_equal(again.valid_y, first.valid_y)
    assert data.load_embedded(cache_dir=tmp_path).train_x.shape == first.train_x.shape


# ------------------------------------------------------------ one error format
@pytest.mark.parametrize("argv, command", [
    (["train", "--momentum", "2"], "train"),
    (["train", "--bs", "x"], "train"),
    (["lr-find", "--num-it", "1"], "lr-find"),
    (["predict", "missing.npz", "missing.npy"], "predict"),
    (["interpret", "missing.npz"], "interpret"),
    (["bench", "--sizes", "nonsense"], "bench"),
    (["info", "--bogus"], "info"),
])
def test_every_command_reports_errors_in_one_format(argv, command, capsys, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, command)


def test_an_unknown_command_is_reported_by_fastsgd(capsys):
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastsgd: error: "), err
