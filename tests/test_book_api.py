"""fastai's call shapes beside fastsgd's own: nn, SGD(params, lr), DataLoader(dataset),
Learner(opt_func=..., metrics=fn), recorder.values; which path a Learner trains on;
and no surprises for the caller's data."""
import numpy as np
import pytest

import fastsgd as fs
from fastsgd import SGD, DataLoader, DataLoaders, Learner, nn
from fastsgd.tensor import Tensor

torch = fs
tensor = fs.tensor


def mnist_loss(predictions, targets):
    predictions = predictions.sigmoid()
    return torch.where(targets == 1, 1 - predictions, predictions).mean()


def batch_accuracy(xb, yb):
    preds = xb.sigmoid()
    correct = (preds > 0.5) == yb
    return correct.float().mean()


def _data(n=96, features=12, seed=0):
    """Two separable classes, as the book's (N, F) floats and (N, 1) int64 targets."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) > 0.5).astype(np.int64)
    x = (rng.standard_normal((n, features)) + 1.5 * (2 * y[:, None] - 1)).astype(np.float32)
    return tensor(x), tensor(y).unsqueeze(1)


def _dls(bs=16, shuffle=False):
    x, y = _data()
    vx, vy = _data(48, seed=1)
    return DataLoaders(DataLoader(list(zip(x, y)), batch_size=bs, shuffle=shuffle, seed=0),
                       DataLoader(list(zip(vx, vy)), batch_size=bs))


def _net(seed=0):
    fs.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 1))


def test_rows_zip_into_a_dataset_and_batch():
    x = fs.arange(0, 12).float().view(-1, 3)
    y = fs.tensor([1, 0, 1, 0]).unsqueeze(1)
    dset = list(zip(x, y))
    assert len(dset) == 4 and dset[1][0].tolist() == [3.0, 4.0, 5.0] and dset[1][1].tolist() == [0]
    xb, yb = next(iter(fs.DataLoader(dset, batch_size=3)))
    assert isinstance(xb, Tensor) and xb.shape == (3, 3) and yb.shape == (3, 1)
    assert xb.tolist() == x[:3].tolist() and yb.dtype == np.int64
    batches = list(fs.DataLoader(range(15), batch_size=5, shuffle=True, seed=0))
    assert [b.shape for b in batches] == [(5,)] * 3
    assert sorted(v for b in batches for v in b.tolist()) == list(range(15))
    letters = list(fs.DataLoader(list(enumerate("abcdef")), batch_size=4))
    assert letters[0][1] == ("a", "b", "c", "d") and letters[1][0].tolist() == [4, 5]
    with pytest.raises(TypeError, match="bs or batch_size"):
        fs.DataLoader(dset, bs=2, batch_size=2)


def test_the_books_learner_trains_through_autograd():
    learn = Learner(_dls(), _net(), opt_func=SGD, loss_func=mnist_loss, metrics=batch_accuracy,
                    show=False)
    assert "function on tensors" in learn.fused
    learn.fit(4, 0.5)
    values = learn.recorder.values
    assert len(values) == 4 and all(len(row) == 3 for row in values)
    assert values[-1][0] < values[0][0]                 # train_loss fell
    assert values[-1][2] >= 0.9                         # batch_accuracy
    assert values[-1] == [learn.recorder.history[-1][k]
                          for k in ("train_loss", "valid_loss", "batch_accuracy")]


def test_known_model_and_loss_train_fused_whichever_way_spelled():
    for model in (_net(), nn.Linear(12, 1), fs.Sequential(fs.Linear(12, 1))):
        learn = Learner(_dls(), model, opt_func=SGD, loss_func=fs.mnist_loss,
                        metrics=fs.batch_accuracy, show=False)
        assert learn.fused is True
        learn.fit(2, 0.5)
        assert learn.recorder.values[-1][2] >= 0.9


def test_autograd_and_fused_paths_train_alike():
    """The book's mnist_loss through autograd and fs.mnist_loss fused, from the same start
    and batch order, end at the same weights."""
    weights = []
    for loss in (mnist_loss, fs.mnist_loss):
        learn = Learner(_dls(shuffle=True), _net(), opt_func=SGD, loss_func=loss,
                        metrics=[batch_accuracy], show=False)
        learn.fit(3, 0.3)
        weights.append([p.numpy().copy() for p in learn.model.parameters()])
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_basic_optim_and_a_module_of_ones_own():
    class BasicOptim:
        def __init__(self, params, lr): self.params, self.lr = list(params), lr

        def step(self, *args, **kwargs):
            for p in self.params: p.data -= p.grad.data * self.lr  # noqa: E701 - the book's line

        def zero_grad(self, *args, **kwargs):
            for p in self.params: p.grad = None  # noqa: E701

    class TwoLayers(fs.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = nn.Linear(12, 4), nn.Linear(4, 1)

        def forward(self, x):
            return self.second(self.first(x).tanh())

    model = TwoLayers()
    assert len(model.parameters()) == 4 and all(isinstance(p, fs.Parameter)
                                                for p in model.parameters())
    learn = Learner(_dls(), model, opt_func=BasicOptim, loss_func=fs.mnist_loss,
                    metrics=fs.batch_accuracy, show=False)
    assert "TwoLayers" in learn.fused and "BasicOptim" not in learn.fused
    learn.fit(4, 0.5)
    assert learn.recorder.values[-1][2] >= 0.9
    learn = Learner(_dls(), _net(), opt_func=BasicOptim, loss_func=fs.mnist_loss, show=False)
    assert "BasicOptim" in learn.fused


def test_sgd_call_shapes():
    w = fs.randn(3).requires_grad_()
    opt = SGD([w], 0.5)
    assert opt.lr == 0.5 and opt.params == [w]
    assert (SGD(0.2, momentum=0.9).lr, SGD(0.2, momentum=0.9).momentum) == (0.2, 0.9)
    assert SGD(0.2, 0.9).momentum == 0.9 and SGD(lr=0.3).lr == 0.3
    assert SGD(nn.Linear(2, 1).parameters(), lr=0.1, momentum=0.5).momentum == 0.5
    with pytest.raises(TypeError, match="two values for lr"):
        SGD([w], 0.1, lr=0.2)
    with pytest.raises(TypeError, match="params: item 0"):
        SGD([np.zeros(3)], 0.1)
    before = w.numpy().copy()
    (w * w).sum().backward()
    opt.step()
    np.testing.assert_allclose(w.numpy(), before - 0.5 * 2 * before, rtol=1e-6)
    opt.zero_grad()
    assert (w.grad.numpy() == 0).all()


def test_a_metric_of_the_wrong_arity_is_refused_before_training():
    def one_argument(preds):
        return preds.mean()

    with pytest.raises(TypeError, match="metric\\(preds, targets\\)"):
        Learner(_dls(), _net(), loss_func=fs.mnist_loss, metrics=one_argument)
    with pytest.raises(TypeError, match="loss_func\\(preds, targets\\)"):
        Learner(_dls(), _net(), loss_func=lambda a, b, c: a)


def test_a_learner_never_changes_the_callers_data():
    x, y = _data()
    vx, vy = _data(48, seed=1)
    y_array = y.numpy().astype(np.float32)
    copies = [a.copy() for a in (x.numpy(), y_array)]
    train = DataLoader(x.numpy(), y_array, bs=16)
    valid = DataLoader(vx.numpy(), vy.numpy().astype(np.float32), bs=16)
    for loss in (fs.mnist_loss, mnist_loss):
        learn = Learner(DataLoaders(train, valid), _net(), loss, SGD(0.1), show=False)
        learn.fit(1)
        assert train.x is x.numpy() and train.y is y_array
        assert train.y.shape == (96, 1) and valid.y.shape == (48, 1)
        for array, copy in zip((train.x, train.y), copies):
            assert (array == copy).all()
    dls = _dls()
    Learner(dls, _net(), loss_func=fs.mnist_loss, show=False).fit(1)
    assert dls.train.tensors and dls.train.y.shape == (96, 1) and dls.train.y.dtype == np.int64


def test_tensor_batches_and_metrics_see_the_books_shapes():
    seen = []

    def spy(preds, targets):
        seen.append((type(preds), preds.shape, targets.shape, targets.dtype))
        return batch_accuracy(preds, targets)

    learn = Learner(_dls(), _net(), loss_func=fs.mnist_loss, metrics=spy, show=False)
    assert learn.fused is True
    learn.fit(1, 0.5)
    assert seen[0] == (Tensor, (16, 1), (16, 1), np.int64)


def test_exports():
    for name in ("Module", "Parameter", "Tensor", "nn", "tensor", "no_grad", "manual_seed"):
        assert name in fs.__all__ and hasattr(fs, name)
    assert nn.Linear is fs.Linear and nn.Sequential is fs.Sequential
    w, b = nn.Linear(28 * 28, 1).parameters()
    assert isinstance(w, fs.Parameter) and w.shape == (784, 1) and b.shape == (1,)
    assert w.data.shape == (784, 1) and w.grad.shape == (784, 1)


def test_what_needs_the_kernel_path_says_so():
    learn = Learner(_dls(), _net(), opt_func=SGD, loss_func=mnist_loss, show=False)
    for call in (lambda: learn.save("x.npz"), lambda: learn.predict(np.zeros((1, 12))),
                 lambda: learn.lr_find()):
        with pytest.raises(ValueError, match="through autograd because the loss 'mnist_loss'"):
            call()


def test_book_sample_reads_the_images_as_the_book_does(tmp_path):
    from fastsgd.data import book_sample

    from .mnist_fixtures import make_mnist_folder
    folder = make_mnist_folder(tmp_path / "mnist", n_train=300, n_valid=120)
    threes, sevens, valid_3, valid_7 = book_sample(folder)
    assert threes[0].shape == (28, 28) and threes[0].dtype == np.uint8
    assert all(len(part) > 0 for part in (threes, sevens, valid_3, valid_7))
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).unlink()               # the t10k files alone: split 5:1 per digit
    t3, t7, v3, v7 = book_sample(folder)
    assert len(t3) == len(valid_3) * 5 // 6 and len(v3) == len(valid_3) - len(t3)
    assert (t3[0].numpy() == valid_3[0].numpy()).all()
    with pytest.raises(ValueError, match="two digits"):
        book_sample(folder, digits=(1, 2, 3))


def test_functional_losses_of_the_pixel_similarity_baseline():
    F = fs.nn.functional
    rng = np.random.default_rng(2)
    a, b = rng.random((28, 28)).astype(np.float32), rng.random((28, 28)).astype(np.float32)
    assert F.l1_loss(tensor(a), tensor(b)).item() == pytest.approx(np.abs(a - b).mean(), rel=1e-5)
    assert F.mse_loss(tensor(a), tensor(b)).sqrt().item() == pytest.approx(
        np.sqrt(((a - b) ** 2).mean()), rel=1e-5)
    t = tensor(a).requires_grad_()
    F.mse_loss(t, tensor(b)).backward()
    np.testing.assert_allclose(t.grad.numpy(), 2 * (a - b) / a.size, rtol=1e-5)
    stacked = tensor(np.stack([a, b]))
    assert stacked.mean(0).shape == (28, 28) and (stacked - tensor(a)).abs().mean((-1, -2)).shape == (2,)
