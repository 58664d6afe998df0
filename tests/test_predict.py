"""Predictions people can use: labels named by the model's classes, probabilities that sum
to 1, raw outputs; images in the shapes people have; pixels scaled as the command scales
them; `fastsgd predict` and `fastsgd interpret` on a generated folder."""
from __future__ import annotations

import importlib.util
import json
import re

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import data, inference
from fastsgd.cli import main

from .mnist_fixtures import make_mnist_folder, synthetic_digits

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def images_and_labels(n, seed):
    images, labels = synthetic_digits(n, seed=seed)
    return (images.reshape(n, -1) / np.float32(255)).astype(np.float32), labels.astype(np.int64)


@pytest.fixture(scope="module")
def binary():
    """A 784-8-1 model trained on 3 vs 7, with classes [3, 7], and its validation set."""
    x, y = images_and_labels(400, 0)
    vx, vy = images_and_labels(200, 1)
    train_x, train_y = data.select_digits(x, y, (3, 7))
    valid_x, valid_y = data.select_digits(vx, vy, (3, 7))
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(train_x, train_y, valid_x, valid_y, bs=16, seed=0)
    learn = fs.Learner(dls, fs.simple_net(784, 8, 1), fs.mnist_loss, fs.SGD(1.0),
                       [fs.batch_accuracy], backend="numpy", show=False)
    learn.fit(3)
    learn.classes = [3, 7]
    return learn, valid_x, valid_y


@pytest.fixture(scope="module")
def ten():
    x, y = images_and_labels(500, 0)
    vx, vy = images_and_labels(100, 1)
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(x, y, vx, vy, bs=32, seed=0)
    learn = fs.Learner(dls, fs.simple_net(784, 16, 10), fs.cross_entropy, fs.SGD(0.1, momentum=0.9),
                       [fs.batch_accuracy], backend="numpy", show=False)
    learn.fit(3)
    return learn, vx, vy


def test_binary_predict_names_the_digits_and_agrees_with_the_metric(binary):
    learn, x, y = binary
    labels = learn.predict(x)
    assert labels.shape == (len(x),) and set(labels.tolist()) <= {3, 7}
    truth = np.where(y == 1, 3, 7)
    accuracy = learn.validate()["batch_accuracy"]
    assert (labels == truth).mean() == pytest.approx(accuracy) and accuracy >= 0.9
    raw = learn.predict_raw(x)
    assert raw.shape == (len(x), 1) and raw.dtype == np.float32
    np.testing.assert_array_equal(labels, np.where(raw[:, 0] > 0, 3, 7))


def test_binary_probabilities_are_sigmoid_then_its_complement(binary):
    learn, x, _ = binary
    proba = learn.predict_proba(x)
    raw = learn.predict_raw(x)[:, 0].astype(np.float64)
    assert proba.shape == (len(x), 2) and proba.dtype == np.float64
    np.testing.assert_allclose(proba[:, 0], 1 / (1 + np.exp(-raw)), rtol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    assert ((proba >= 0) & (proba <= 1)).all()


def test_ten_classes_probabilities_sum_to_one_and_argmax_is_the_label(ten):
    learn, x, y = ten
    proba = learn.predict_proba(x)
    assert proba.shape == (len(x), 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-12)
    labels = learn.predict(x)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))
    assert learn.classes == list(range(10))
    assert (labels == y).mean() == pytest.approx(learn.validate()["batch_accuracy"])


def test_named_classes_are_returned_as_names(ten):
    learn, x, _ = ten
    learn.classes = list(data.FASHION_MNIST_CLASSES)
    try:
        names = learn.predict(x[:5])
        assert names.dtype.kind == "U"
        np.testing.assert_array_equal(
            names, np.array(data.FASHION_MNIST_CLASSES)[learn.predict_raw(x[:5]).argmax(axis=1)])
    finally:
        learn.classes = None
    assert learn.classes == list(range(10))


@pytest.mark.parametrize("shape, n", [((6, 784), 6), ((6, 28, 28), 6), ((28, 28), 1), ((784,), 1),
                                      ((1, 784), 1)])
def test_every_image_shape_gives_the_same_predictions(binary, shape, n):
    learn, x, _ = binary
    rows = x[:n].reshape(shape)
    np.testing.assert_array_equal(learn.predict(rows), learn.predict(x[:n]))
    assert learn.predict_proba(rows).shape == (n, 2) and learn.predict_raw(rows).shape == (n, 1)


def test_uint8_pixels_are_scaled_as_the_command_scales_them(binary):
    learn, x, _ = binary
    pixels = np.rint(x[:6] * 255).astype(np.uint8)
    for method in (learn.predict, learn.predict_proba, learn.predict_raw):
        scaled = pixels.astype(np.float32) * np.float32(1 / 255)     # as load_images scales
        np.testing.assert_array_equal(method(pixels), method(scaled))


@pytest.mark.parametrize("pixels, text", [
    (lambda x: (x[:3] * 255).astype(np.int64), "expected uint8 pixels 0..255 or floats in [0, 1]"),
    (lambda x: x[:3] > 0.5, "expected uint8 pixels 0..255 or floats in [0, 1]"),
    (lambda x: x[:3] * 255, "float pixels must lie in [0, 1]"),
])
def test_other_pixel_scales_are_refused_with_the_fix(binary, pixels, text):
    learn, x, _ = binary
    for method in (learn.predict, learn.predict_proba, learn.predict_raw):
        with pytest.raises(ValueError, match=re.escape(text)):
            method(pixels(x))


@pytest.mark.parametrize("bad, text", [
    (np.zeros((3, 27, 28), np.float32), r"x: expected shape \(N, 784\)"),
    (np.zeros((0, 784), np.float32), r"N >= 1, got \(0, 784\)"),
    (np.full((2, 784), np.nan, np.float32), "NaN or Inf"),
])
def test_bad_input_names_x_and_what_was_expected(binary, bad, text):
    with pytest.raises(ValueError, match=text):
        binary[0].predict(bad)


def test_classes_are_checked(binary):
    learn = binary[0]
    for bad, text in (([3], "2 classes, got 1"), ([3, 3], "distinct"), ([3, 7.5], "ints or strings"),
                      ("37", "list of 2")):
        with pytest.raises(ValueError, match=text):
            learn.classes = bad
    assert learn.classes == [3, 7]


def test_default_binary_classes_are_the_targets(binary):
    learn, x, y = binary
    learn.classes = None
    try:
        assert learn.classes == [1, 0]
        assert (learn.predict(x) == y).mean() == pytest.approx(learn.validate()["batch_accuracy"])
    finally:
        learn.classes = [3, 7]


def test_a_regression_model_predicts_its_outputs_and_has_no_probabilities():
    x = np.random.default_rng(0).standard_normal((64, 3)).astype(np.float32)
    y = (x @ np.array([[1.0], [2.0], [-1.0]], np.float32)).astype(np.float32)
    dls = fs.DataLoaders.from_arrays(x, y, x, y, bs=16, seed=0)
    learn = fs.Learner(dls, fs.Sequential(fs.Linear(3, 1)), fs.mse, fs.SGD(0.1), backend="numpy",
                       show=False)
    learn.fit(2)
    assert learn.classes is None
    np.testing.assert_array_equal(learn.predict(x), learn.predict_raw(x))
    with pytest.raises(ValueError, match="no class probabilities"):
        learn.predict_proba(x)
    with pytest.raises(ValueError, match="no classes"):
        learn.classes = [0, 1]


def test_classes_survive_save_and_load(binary, tmp_path):
    learn, x, y = binary
    path = learn.save(tmp_path / "m.npz")
    fs.set_seed(1)
    dls = fs.DataLoaders.from_arrays(x, y, x, y, bs=16, seed=1)
    other = fs.Learner(dls, fs.simple_net(784, 8, 1), fs.mnist_loss, fs.SGD(1.0), backend="numpy",
                       show=False)
    assert other.classes == [1, 0]
    other.load(path)
    assert other.classes == [3, 7]
    np.testing.assert_array_equal(other.predict(x), learn.predict(x))


def test_probabilities_are_stable_at_extreme_scores():
    raw = np.array([[1000.0], [-1000.0], [0.0]], np.float32)
    proba = inference.probabilities(raw, "binary")
    np.testing.assert_allclose(proba, [[1, 0], [0, 1], [0.5, 0.5]], atol=1e-300)
    scores = np.array([[1000.0, -1000.0, 0.0], [5.0, 5.0, 5.0]])
    np.testing.assert_allclose(inference.probabilities(scores, "labels"),
                               [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)


def test_sample_losses_and_confusion_matrix():
    raw = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    losses = inference.sample_losses(raw, "labels", np.array([0, 0, 1]))
    np.testing.assert_allclose(losses, [np.log1p(np.exp(-2.0)), 2 + np.log1p(np.exp(-2.0)), np.log(2)])
    binary = inference.sample_losses(np.array([[0.0], [3.0]]), "binary", np.array([1, 0]))
    np.testing.assert_allclose(binary, [0.5, 1 - 1 / (1 + np.exp(-3.0))])
    matrix = inference.confusion_matrix([0, 0, 1, 2, 2], [0, 1, 1, 2, 0], 3)
    np.testing.assert_array_equal(matrix, [[1, 1, 0], [0, 1, 0], [1, 0, 1]])


# ------------------------------------------------------------------------ the command line

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A generated folder, a 3-vs-7 checkpoint trained on it, and the train --json report."""
    root = tmp_path_factory.mktemp("predict")
    folder = make_mnist_folder(root / "mnist", n_train=400, n_valid=200, seed=0)
    model, report = root / "net.npz", root / "run.json"
    assert main(["train", "--no-progress", "--quiet", "--data", str(folder), "--epochs", "3",
                 "--backend", "numpy", "--save", str(model), "--json", str(report)]) == 0
    return folder, model, json.loads(report.read_text())


def t10k(folder):
    images = data.read_idx(folder / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(folder / "t10k-labels-idx1-ubyte.gz")
    return images, labels


def lines(capsys):
    return capsys.readouterr().out.splitlines()


def test_cli_predict_prints_one_label_per_image(trained, capsys):
    folder, model, report = trained
    assert main(["predict", str(model), str(folder / "t10k-images-idx3-ubyte.gz"),
                 "--backend", "numpy"]) == 0
    labels = np.array([int(line) for line in lines(capsys)])
    images, truth = t10k(folder)
    assert len(labels) == len(images) and set(labels.tolist()) <= {3, 7}
    keep = np.isin(truth, (3, 7))
    assert (labels[keep] == truth[keep]).mean() == pytest.approx(report["accuracy"])


def test_cli_predict_proba_and_json(trained, tmp_path, capsys):
    folder, model, _ = trained
    out = tmp_path / "p.json"
    assert main(["predict", str(model), str(folder / "t10k-images-idx3-ubyte.gz"), "--proba",
                 "--json", str(out)]) == 0
    printed = lines(capsys)
    assert printed[0].split("\t") == ["label", "3", "7"]
    rows = [line.split("\t") for line in printed[1:]]
    assert all(abs(float(a) + float(b) - 1) <= 2e-4 for _, a, b in rows)
    result = json.loads(out.read_text())
    assert set(result) == {"model", "images", "classes", "labels", "probabilities"}
    assert result["classes"] == [3, 7] and [str(v) for v in result["labels"]] == [r[0] for r in rows]
    np.testing.assert_allclose(np.sum(result["probabilities"], axis=1), 1.0, atol=1e-12)


def test_cli_predict_takes_npy_arrays_in_every_shape(trained, tmp_path, capsys):
    folder, model, _ = trained
    images, _ = t10k(folder)
    assert main(["predict", str(model), str(folder / "t10k-images-idx3-ubyte.gz")]) == 0
    expected = lines(capsys)
    for name, array in (("u8.npy", images), ("flat.npy", images.reshape(len(images), -1)),
                        ("unit.npy", images / 255.0)):
        np.save(tmp_path / name, array)
        assert main(["predict", str(model), str(tmp_path / name)]) == 0
        assert lines(capsys) == expected, name
    np.save(tmp_path / "one.npy", images[5])
    assert main(["predict", str(model), str(tmp_path / "one.npy")]) == 0
    assert lines(capsys) == [expected[5]]


@pytest.mark.parametrize("array, text", [
    (np.full((2, 28, 28), 255.0), "float pixels must lie in [0, 1]"),
    (np.zeros((2, 28, 28), np.int16), "expected uint8 pixels 0..255 or floats in [0, 1]"),
    (np.zeros((2, 27, 27), np.uint8), "expected shape (N, 784)"),
])
def test_cli_predict_bad_images_are_one_line(trained, tmp_path, capsys, array, text):
    np.save(tmp_path / "bad.npy", array)
    assert main(["predict", str(trained[1]), str(tmp_path / "bad.npy")]) == 2
    err = capsys.readouterr().err
    assert text in err and str(tmp_path / "bad.npy") in err and len(err.strip().splitlines()) == 1


def test_cli_predict_names_fashion_classes(trained, tmp_path, capsys):
    folder, model, _ = trained
    images = str(folder / "t10k-images-idx3-ubyte.gz")
    assert main(["predict", str(model), images]) == 0
    digits = lines(capsys)
    assert main(["predict", str(model), images, "--classes", "fashion"]) == 0
    names = {"3": "Dress", "7": "Sneaker"}
    assert lines(capsys) == [names[d] for d in digits]
    fashion = tmp_path / "fashion-mnist"
    fashion.mkdir()
    for f in folder.iterdir():
        (fashion / f.name).write_bytes(f.read_bytes())
    assert main(["train", "--no-progress", "--quiet", "--data", str(fashion), "--epochs", "1",
                 "--backend", "numpy", "--save", str(tmp_path / "f.npz")]) == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "f.npz"), images]) == 0      # auto: from the folder
    assert set(lines(capsys)) <= {"Dress", "Sneaker"}
    assert main(["predict", str(tmp_path / "f.npz"), images, "--classes", "labels"]) == 0
    assert set(lines(capsys)) <= {"3", "7"}


def test_cli_predict_with_a_weights_only_file(trained, tmp_path, capsys):
    folder, model, _ = trained
    old = fs.save_model(fs.load_model(model), tmp_path / "old.npz")    # config and weights only
    assert main(["predict", str(model), str(folder / "t10k-images-idx3-ubyte.gz")]) == 0
    digits = lines(capsys)
    assert main(["predict", str(old), str(folder / "t10k-images-idx3-ubyte.gz")]) == 0
    assert lines(capsys) == ["1" if d == "3" else "0" for d in digits]   # the targets


def test_cli_interpret_prints_the_matrix_and_top_losses(trained, capsys):
    folder, model, report = trained
    assert main(["interpret", str(model), "--top", "4"]) == 0    # the data folder it was trained on
    out = lines(capsys)
    assert out[0].startswith(f"mnist ({folder}): ") and out[0].endswith(f"{report['accuracy']:.4f}")
    assert out[1].startswith("confusion matrix") and out[2].split() == ["3", "7"]
    matrix = np.array([[int(c) for c in line.split()[1:]] for line in out[3:5]])
    _, truth = t10k(folder)
    assert matrix.sum(axis=1).tolist() == [(truth == 3).sum(), (truth == 7).sum()]
    assert np.trace(matrix) / matrix.sum() == pytest.approx(report["accuracy"])
    assert out[5].startswith("top 4 losses") and len(out) == 10
    losses = [float(line.split("loss ")[1].split(",")[0]) for line in out[6:]]
    assert losses == sorted(losses, reverse=True)


@pytest.mark.skipif(not HAS_MATPLOTLIB, reason="plots need matplotlib")
def test_cli_interpret_draws_two_pngs(trained, tmp_path, capsys):
    folder, model, _ = trained
    plot = tmp_path / "out" / "cm.png"
    assert main(["interpret", str(model), "--data", str(folder), "--plot", str(plot),
                 "--classes", "fashion"]) == 0
    assert "Dress" in capsys.readouterr().out
    for path in (plot, tmp_path / "out" / "cm-top-losses.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_cli_interpret_of_ten_classes_and_of_weights_alone(trained, tmp_path, capsys):
    folder, model, _ = trained
    old = fs.save_model(fs.load_model(model), tmp_path / "old.npz")
    assert main(["interpret", str(old), "--data", str(folder)]) == 2
    assert "pass --digits" in capsys.readouterr().err
    assert main(["interpret", str(old), "--data", str(folder), "--digits", "3,7"]) == 0
    assert main(["interpret", str(model), "--plot", "-"]) == 2
    assert "expected a file name" in capsys.readouterr().err
    assert main(["train", "--no-progress", "--quiet", "--data", str(folder), "--digits", "all",
                 "--epochs", "2", "--backend", "numpy", "--save", str(tmp_path / "ten.npz")]) == 0
    capsys.readouterr()
    assert main(["interpret", str(tmp_path / "ten.npz")]) == 0
    out = lines(capsys)
    assert out[2].split() == [str(d) for d in range(10)] and len(out) == 2 + 11 + 1 + 9
