"""The Learner trains on the CUDA backend exactly as on the NumPy reference."""
import numpy as np
import pytest

from fastsgd import (
    SGD,
    DataLoaders,
    Learner,
    Linear,
    ReLU,
    Sequential,
    Tanh,
    batch_accuracy,
    cross_entropy,
    mnist_loss,
    mse,
)
from fastsgd.backends import cuda as cuda_backend

from .conftest import ON_DEVICE

# samples, features, hidden units, classes, batch size, epochs
SIZES = (2048, 784, 128, 10, 64, 2) if ON_DEVICE else (64, 16, 8, 3, 16, 2)


def data(n, features, classes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = rng.integers(0, classes, n)
    return x, y


def fit(backend, loss, n, features, hidden, outputs, bs, epochs, targets):
    x, _ = data(n, features, outputs)
    split = n * 3 // 4
    dls = DataLoaders.from_arrays(x[:split], targets[:split], x[split:], targets[split:], bs=bs, seed=0)
    rng = np.random.default_rng(42)
    model = Sequential(Linear(features, hidden, rng), ReLU(), Linear(hidden, outputs, rng))
    learn = Learner(dls, model, loss, SGD(0.1, momentum=0.9, weight_decay=1e-4), [batch_accuracy],
                    backend=backend, show=False)
    history = learn.fit(epochs)
    return learn, history


@pytest.mark.parametrize("loss", ["cross_entropy", "mnist_loss"])
def test_fit_matches_the_numpy_backend(cu, loss):
    n, features, hidden, classes, bs, epochs = SIZES
    _, labels = data(n, features, classes)
    if loss == "mnist_loss":
        loss_func, outputs, targets = mnist_loss, 1, (labels == 0).astype(np.float32)
        epochs = 1
    else:
        loss_func, outputs, targets = cross_entropy, classes, labels
    on_gpu, gpu_history = fit("cuda", loss_func, n, features, hidden, outputs, bs, epochs, targets)
    on_cpu, cpu_history = fit("numpy", loss_func, n, features, hidden, outputs, bs, epochs, targets)

    for p in on_gpu.model.parameters():
        assert cuda_backend.is_device_array(p.value) and cuda_backend.is_device_array(p.grad_value)
    for p_gpu, p_cpu in zip(on_gpu.model.parameters(), on_cpu.model.parameters()):
        np.testing.assert_allclose(on_gpu.backend.to_numpy(p_gpu.value), p_cpu.value,
                                   rtol=1e-3, atol=1e-4, err_msg=p_gpu.name)
    n_valid = n - n * 3 // 4
    for row_gpu, row_cpu in zip(gpu_history, cpu_history):
        for key in ("train_loss", "valid_loss"):
            assert row_gpu[key] == pytest.approx(row_cpu[key], rel=1e-3, abs=1e-4), key
        # a near-tie in the logits may round the other way: allow a couple of samples
        assert row_gpu["batch_accuracy"] == pytest.approx(row_cpu["batch_accuracy"], abs=2.5 / n_valid)
    x, _ = data(n, features, classes)
    np.testing.assert_allclose(on_gpu.predict_raw(x[:5]), on_cpu.predict_raw(x[:5]), rtol=1e-3, atol=1e-4)


def model(kind, features, hidden, outputs, rng):
    """A fresh model: "linear", "relu" (Linear-ReLU-Linear) or "deep" (Linear-Tanh-Linear-ReLU-Linear)."""
    if kind == "linear":
        return Sequential(Linear(features, outputs, rng))
    if kind == "relu":
        return Sequential(Linear(features, hidden, rng), ReLU(), Linear(hidden, outputs, rng))
    return Sequential(Linear(features, hidden, rng), Tanh(), Linear(hidden, hidden // 2, rng), ReLU(),
                      Linear(hidden // 2, outputs, rng))


def task(loss, n, features, classes, seed):
    """(x, targets, outputs, loss function) for ``loss``: 0/1 targets, labels or real values."""
    x, labels = data(n, features, classes, seed)
    if loss == "mnist_loss":
        return x, (labels == 0).astype(np.float32), 1, mnist_loss
    if loss == "mse":
        return x, (x[:, :2] @ np.array([[1.0, -0.5], [0.5, 2.0]]) * 0.5).astype(np.float32), 2, mse
    return x, labels, classes, cross_entropy


def fit_program(backend, kind, loss, fused, epochs=2, seed=1):
    """A Learner with a fresh ``kind`` model after ``epochs`` (cosine schedule), its weights, its history."""
    n, features, hidden, classes, bs, _ = SIZES
    x, targets, outputs, loss_func = task(loss, n, features, classes, seed)
    dls = DataLoaders.from_arrays(x[:n - 16], targets[:n - 16], x[n - 16:], targets[n - 16:],
                                  bs=bs - 3, seed=0)  # a short last batch
    learn = Learner(dls, model(kind, features, hidden, outputs, np.random.default_rng(7)), loss_func,
                    SGD(0.1, momentum=0.9, weight_decay=1e-3), [] if loss == "mse" else [batch_accuracy],
                    backend=backend, show=False, fused=fused)
    history = learn.fit(epochs, schedule="cosine")
    weights = [learn.backend.to_numpy(p.value) for p in learn.model.parameters()]
    return learn, weights, history


@pytest.mark.parametrize("kind, loss", [("linear", "mnist_loss"), ("relu", "cross_entropy"),
                                        ("deep", "mse")])
def test_fused_epoch_matches_the_layer_by_layer_path(cu, kind, loss):
    """One epoch each way (the layer path is slow in the simulator); test_cuda_program covers the rest."""
    from fastsgd.fused import plan
    layered, w0, h0 = fit_program("cuda", kind, loss, fused=False, epochs=1)
    fused, w1, h1 = fit_program("cuda", kind, loss, fused=True, epochs=1)
    assert layered.fused == "turned off" and fused.fused is True
    program = plan(fused.model, fused.loss_func, fused.opt, fused.dls.train)
    assert cuda_backend.is_device_array(program.params)
    for a, b in zip(w0, w1):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(layered.recorder.losses, fused.recorder.losses, rtol=1e-4, atol=1e-5)
    assert h0[-1]["train_loss"] == pytest.approx(h1[-1]["train_loss"], rel=1e-4)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_a_deeper_model_trains_fused_and_matches_the_numpy_backend(cu, loss):
    on_gpu, w_gpu, h_gpu = fit_program("cuda", "deep", loss, fused=True, seed=2)
    on_cpu, w_cpu, h_cpu = fit_program("numpy", "deep", loss, fused=True, seed=2)
    assert on_gpu.fused is True and on_cpu.fused is True
    for p in on_gpu.model.parameters():  # views into the program's device blocks
        assert cuda_backend.is_device_array(p.value) and cuda_backend.is_device_array(p.grad_value)
    for a, b in zip(w_gpu, w_cpu):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(on_gpu.recorder.losses, on_cpu.recorder.losses, rtol=1e-4, atol=1e-5)
    for row_gpu, row_cpu in zip(h_gpu, h_cpu):
        for key in ("train_loss", "valid_loss"):
            assert row_gpu[key] == pytest.approx(row_cpu[key], rel=1e-3, abs=1e-4), key
    x = data(*SIZES[:2], SIZES[3])[0][:5]
    np.testing.assert_allclose(on_gpu.predict_raw(x), on_cpu.predict_raw(x), rtol=1e-3, atol=1e-4)
