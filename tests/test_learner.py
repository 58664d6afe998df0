"""The trainer: learning happens, runs repeat, backends agree, models round-trip."""
import numpy as np
import pytest

import fastsgd as fs

from .conftest import backend_params
from .helpers import make_learner, separable
from .mnist_fixtures import synthetic_digits


@pytest.mark.parametrize("backend", backend_params())
def test_binary_fit_lowers_loss_and_separates(backend):
    learn = make_learner(backend, *separable(n=1000), momentum=0.9)
    before = learn.validate()
    history = learn.fit(8, schedule="cosine")
    assert history[-1]["valid_loss"] < before["valid_loss"] / 2
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["batch_accuracy"] >= 0.95


@pytest.mark.parametrize("backend", backend_params())
def test_multiclass_fit_on_synthetic_digits(backend):
    images, labels = synthetic_digits(700, seed=1)
    x = images.reshape(len(images), -1).astype(np.float32) / 255
    model = fs.simple_net(784, 32, 10)
    learn = make_learner(backend, x, labels.astype(np.int64), model, fs.cross_entropy, lr=0.1,
                         momentum=0.9)
    history = learn.fit(4)
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    assert history[-1]["batch_accuracy"] >= 0.95


def test_same_seed_same_backend_gives_identical_weights():
    x, y = separable()
    runs = []
    for _ in range(2):
        learn = make_learner(None, x, y)
        learn.fit(2)
        runs.append([p.value.copy() for p in learn.model.parameters()])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", [p for p in backend_params() if p.id != "numpy"])
def test_backend_matches_numpy_after_three_epochs(backend):
    x, y = separable(n=400, features=30, classes=4)
    results = {}
    for name in ("numpy", backend):
        model = fs.Sequential(fs.Linear(30, 12, np.random.default_rng(3)), fs.ReLU(),
                              fs.Linear(12, 4, np.random.default_rng(4)))
        learn = make_learner(name, x, y, model, fs.cross_entropy, lr=0.1, momentum=0.9)
        learn.fit(3)
        results[name] = [learn.model.backend.to_numpy(p.value) for p in learn.model.parameters()]
    for a, b in zip(results["numpy"], results[backend]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("bs", [1, 16, 500], ids=["stochastic", "minibatch", "full-batch"])
def test_all_three_regimes_learn(bs):
    x, y = separable(n=600)
    learn = make_learner("numpy", x, y, fs.Sequential(fs.Linear(20, 1)), bs=bs,
                         lr={1: 0.05, 16: 0.5, 500: 5.0}[bs])
    assert len(learn.dls.train) == -(-500 // bs)
    history = learn.fit(3)
    assert history[-1]["batch_accuracy"] >= 0.9


def test_deep_models_train():
    x, y = separable(n=1000, classes=2)
    model = fs.Sequential(fs.Linear(20, 16), fs.ReLU(), fs.Linear(16, 16), fs.Sigmoid(),
                          fs.Linear(16, 8), fs.ReLU(), fs.Linear(8, 2))
    learn = make_learner(None, x, y, model, fs.cross_entropy, lr=0.1, momentum=0.9)
    history = learn.fit(8, schedule="cosine")
    assert history[-1]["batch_accuracy"] >= 0.95


def test_sequential_backward_matches_finite_differences():
    """The layers chain their kernels correctly: whole-model gradients vs central differences."""
    rng = np.random.default_rng(5)
    model = fs.Sequential(fs.Linear(6, 5), fs.Sigmoid(), fs.Linear(5, 4), fs.ReLU(), fs.Linear(4, 3))
    for p in model.parameters():  # float64 for an exact check
        p.value, p.grad = p.value.astype(np.float64), np.zeros(p.value.shape)
    model.layers[0].need_input_grad = True
    x = rng.standard_normal((7, 6))
    labels = rng.integers(0, 3, 7)

    def loss():
        return fs.cross_entropy(model.forward(x), labels)

    dx = model.backward(fs.cross_entropy.backward(model.forward(x), labels)).copy()
    for p in [*model.parameters(), None]:
        target = x if p is None else p.value
        analytic = dx if p is None else p.grad_value.copy()
        numeric = np.zeros_like(target)
        for i in range(target.size):
            old = target.flat[i]
            target.flat[i] = old + 1e-6
            up = loss()
            target.flat[i] = old - 1e-6
            numeric.flat[i] = (up - loss()) / 2e-6
            target.flat[i] = old
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_cosine_schedule_shrinks_steps_to_zero():
    seen = []
    x, y = separable(n=200)
    learn = make_learner("numpy", x, y, bs=50)
    learn.fit(2, schedule=lambda progress: seen.append(progress) or 1.0)
    assert seen == [i / 4 for i in range(4)]
    assert fs.cosine_lr(0.0) == 1.0 and fs.cosine_lr(1.0) == pytest.approx(0.0)
    assert fs.cosine_lr(0.25) > fs.cosine_lr(0.75)


def test_fit_records_history_and_prints_a_table(capsys):
    x, y = separable(n=200)
    learn = make_learner("numpy", x, y)
    learn.show = True
    learn.fit(2, lr=0.3)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "train_loss", "valid_loss", "batch_accuracy", "time"]
    assert [line.split()[0] for line in out[1:]] == ["0", "1"]
    assert [row["epoch"] for row in learn.recorder.history] == [0, 1]
    assert set(learn.recorder.history[0]) == {"epoch", "train_loss", "valid_loss",
                                              "batch_accuracy", "seconds"}
    assert learn.opt.lr == 0.3
    assert len(learn.recorder.losses) == 2 * len(learn.dls.train)


def test_save_load_round_trip_reproduces_predictions(tmp_path):
    x, y = separable()
    learn = make_learner(None, x, y)
    learn.fit(1)
    path = learn.save(tmp_path / "models" / "net.npz")
    assert [p.name for p in path.parent.iterdir()] == ["net.npz"]  # no temp file left behind
    expected = learn.predict_raw(x)
    again = make_learner(None, x, y, seed=99).load(path)
    np.testing.assert_array_equal(again.predict_raw(x), expected)
    model = fs.load_model(path, backend="numpy")
    assert model.config() == learn.model.config()
    np.testing.assert_allclose(model.forward(np.ascontiguousarray(x[:5])), expected[:5], rtol=1e-5,
                               atol=1e-6)


def test_load_rejects_another_architecture_and_bad_files(tmp_path):
    x, y = separable()
    learn = make_learner("numpy", x, y)
    path = learn.save(tmp_path / "net.npz")
    other = make_learner("numpy", x, y, fs.simple_net(20, 8, 1))
    with pytest.raises(ValueError, match="does not match"):
        other.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a fastsgd model"):
        learn.load(tmp_path / "junk.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        learn.load(tmp_path / "missing.npz")


def test_same_seed_gives_same_shuffles_and_different_seeds_differ():
    x, y = separable(n=100)
    order = [[yb.copy() for _, yb in fs.DataLoader(x, y, 10, shuffle=True, seed=s)] for s in (1, 1, 2)]
    assert all((a == b).all() for a, b in zip(order[0], order[1]))
    assert not all((a == b).all() for a, b in zip(order[0], order[2]))


def test_training_that_diverges_stops_with_a_clear_error():
    x, y = separable(classes=2)
    learn = make_learner("numpy", x * 1e4, y, fs.Sequential(fs.Linear(20, 2)), fs.cross_entropy,
                         lr=1e38)
    with np.errstate(all="ignore"), pytest.raises(fs.TrainingDiverged, match="lower the learning rate"):
        learn.fit(2)


# ------------------------------------------------------------------ bad input
def test_learner_rejects_bad_input():
    x, y = separable()
    with pytest.raises(ValueError, match="x has 20 features but the model expects 784"):
        make_learner("numpy", x, y, fs.simple_net(784, 8, 1))
    with pytest.raises(ValueError, match="needs a model with one output"):
        make_learner("numpy", x, y, fs.simple_net(20, 8, 3))
    with pytest.raises(ValueError, match=r"labels in \[0, 3\)"):
        make_learner("numpy", x, y * 7, fs.simple_net(20, 8, 3), fs.cross_entropy)
    with pytest.raises(ValueError, match="targets 0 or 1"):
        make_learner("numpy", x, y * 2)
    bad = x.copy()
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="x: contains NaN"):
        make_learner("numpy", bad, y)
    with pytest.raises(ValueError, match="bs: expected a positive integer"):
        fs.DataLoader(x, y, bs=0)
    with pytest.raises(ValueError, match="y: expected 600 targets"):
        fs.DataLoader(x, y[:10])
    with pytest.raises(ValueError, match="x: empty dataset"):
        fs.DataLoader(x[:0], y[:0])
    with pytest.raises(TypeError, match="loss_func"):
        fs.Learner(fs.DataLoaders.from_arrays(x, y, x, y), fs.simple_net(20, 4, 1), "mse")
    no_tensor = fs.Learner(fs.DataLoaders.from_arrays(x, y, x, y), fs.simple_net(20, 4, 1),
                           lambda p, t: 0, show=False)     # a function on tensors is a loss ...
    with pytest.raises(TypeError, match="loss_func: expected one value as a Tensor"):
        no_tensor.fit(1)                                  # ... that must give one
    learn = make_learner("numpy", x, y)
    for bad_epochs in (0, -1, 1.5):
        with pytest.raises(ValueError, match="n_epochs"):
            learn.fit(bad_epochs)
    with pytest.raises(ValueError, match="lr: expected a positive"):
        learn.fit(1, lr=-1)
    with pytest.raises(ValueError, match="schedule"):
        learn.fit(1, schedule="sideways")
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 20\)"):
        learn.predict(np.zeros((3, 7)))
    with pytest.raises(ValueError, match=r"N >= 1, got \(0, 20\)"):
        learn.predict(np.zeros((0, 20)))
    with pytest.raises(ValueError, match="SGD: momentum"):
        fs.SGD(0.1, momentum=2)
    with pytest.raises(ValueError, match="Linear: n_in"):
        fs.Linear(0, 3)
    with pytest.raises(ValueError, match="unknown name"):
        make_learner("fortran", x, y)


@pytest.mark.parametrize("layers", [[fs.ReLU()], [fs.ReLU(), fs.Sigmoid()]],
                         ids=["relu", "two-activations"])
def test_a_model_without_a_linear_layer_is_refused_clearly(layers):
    x, y = separable(n=200, features=4)
    with pytest.raises(ValueError, match=r"model: Sequential\(.*\) has no Linear layer"):
        make_learner("numpy", x, y, fs.Sequential(*layers))
