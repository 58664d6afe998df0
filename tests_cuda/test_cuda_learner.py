"""The Learner trains on the CUDA backend exactly as on the NumPy reference."""
import numpy as np
import pytest

from fastsgd import SGD, DataLoaders, Learner, Linear, ReLU, Sequential, batch_accuracy
from fastsgd import cross_entropy, mnist_loss
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
        assert cuda_backend.is_device_array(p.value) and cuda_backend.is_device_array(p.grad)
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
    np.testing.assert_allclose(on_gpu.predict(x[:5]), on_cpu.predict(x[:5]), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("layers, loss", [(1, "mnist_loss"), (1, "cross_entropy"),
                                          (2, "mnist_loss"), (2, "cross_entropy")])
def test_fused_epoch_matches_the_layer_by_layer_path(cu, layers, loss):
    from fastsgd.fused import plan
    n, features, hidden, classes, bs, _ = SIZES
    x, labels = data(n, features, classes, seed=1)
    binary = loss == "mnist_loss"
    targets = (labels == 0).astype(np.float32) if binary else labels
    outputs = 1 if binary else classes
    runs = {}
    for fused in (False, True):
        rng = np.random.default_rng(7)
        model = Sequential(Linear(features, hidden, rng), ReLU(), Linear(hidden, outputs, rng)) \
            if layers == 2 else Sequential(Linear(features, outputs, rng))
        dls = DataLoaders.from_arrays(x[:n - 16], targets[:n - 16], x[n - 16:], targets[n - 16:],
                                      bs=bs - 3, seed=0)  # a short last batch
        learn = Learner(dls, model, mnist_loss if binary else cross_entropy,
                        SGD(0.1, momentum=0.9, weight_decay=1e-3), [batch_accuracy], backend="cuda",
                        show=False, fused=fused)
        if fused:
            assert plan(learn.backend, learn.model, learn.loss_func, learn.opt, dls.train) is not None
        history = learn.fit(2, schedule="cosine")
        runs[fused] = ([learn.backend.to_numpy(p.value) for p in model.parameters()], history,
                       learn.recorder.losses)
    (w0, h0, l0), (w1, h1, l1) = runs[False], runs[True]
    for a, b in zip(w0, w1):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(l0, l1, rtol=1e-4, atol=1e-5)
    assert h0[-1]["train_loss"] == pytest.approx(h1[-1]["train_loss"], rel=1e-4)
