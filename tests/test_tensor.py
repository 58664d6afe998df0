"""Tensors with autograd: every operation's gradient against central finite differences
(float64), the kernel-backed ones against the kernels' own backward on every CPU
backend, and the PyTorch behaviours chapter 4 relies on."""
import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends
from fastsgd.tensor import Tensor, linear, use_backend

from .helpers import backend_params

CPU_BACKENDS = backend_params(device=False)


def _inputs(shapes, rng, positive=False):
    arrays = [rng.standard_normal(s) for s in shapes]
    if positive:
        arrays = [np.abs(a) + 0.5 for a in arrays]
    return arrays


def _check_gradients(fn, arrays, rng, rtol=1e-6, atol=1e-8):
    """Gradients of ``sum(fn(*inputs) * weights)`` by backward vs central differences."""
    tensors = [fs.tensor(a).requires_grad_() for a in arrays]
    out = fn(*tensors)
    weights = rng.standard_normal(out.shape)
    (out * Tensor(weights)).sum().backward()

    def scalar(values):
        return float((fn(*[Tensor(v) for v in values]).value * weights).sum())

    eps = 1e-6
    for i, (t, a) in enumerate(zip(tensors, arrays)):
        numeric = np.zeros_like(a)
        for j in np.ndindex(a.shape):
            up = [v.copy() for v in arrays]
            down = [v.copy() for v in arrays]
            up[i][j] += eps
            down[i][j] -= eps
            numeric[j] = (scalar(up) - scalar(down)) / (2 * eps)
        assert t.grad is not None, f"input {i} got no gradient"
        assert t.grad.dtype == np.float64
        np.testing.assert_allclose(t.grad.numpy(), numeric, rtol=rtol, atol=atol,
                                   err_msg=f"input {i}")


MASK = np.array([[True, False, True, True], [False, False, True, False], [True, True, False, True]])

#: name -> (function of tensors, input shapes, inputs positive)
OPERATIONS = {
    "add broadcast": (lambda a, b: a + b, [(3, 4), (4,)], False),
    "add scalar": (lambda a: a + 2.5, [(3,)], False),
    "radd": (lambda a: 2.5 + a, [(3,)], False),
    "sub broadcast": (lambda a, b: a - b, [(3, 1), (1, 4)], False),
    "rsub": (lambda a: 1 - a, [(5,)], False),
    "mul broadcast": (lambda a, b: a * b, [(2, 3, 4), (3, 1)], False),
    "rmul": (lambda a: 3 * a, [(2, 2)], False),
    "div": (lambda a, b: a / b, [(3, 4), (4,)], True),
    "rdiv": (lambda a: 2 / a, [(4,)], True),
    "pow scalar": (lambda a: a ** 3, [(2, 3)], False),
    "pow tensor": (lambda a, b: a ** b, [(3,), (3,)], True),
    "rpow": (lambda a: 2 ** a, [(3,)], False),
    "neg": (lambda a: -a, [(3,)], False),
    "matmul 2-D": (lambda a, b: a @ b, [(5, 4), (4, 3)], False),
    "matmul 1-D @ 2-D": (lambda a, b: a @ b, [(4,), (4, 3)], False),
    "matmul 2-D @ 1-D": (lambda a, b: a @ b, [(5, 4), (4,)], False),
    "matmul batched": (lambda a, b: a @ b, [(2, 5, 4), (4, 3)], False),
    "linear": (lambda x, w, b: linear(x, w, b), [(5, 4), (4, 3), (3,)], False),
    "sigmoid": (lambda a: a.sigmoid(), [(4, 3)], False),
    "relu": (lambda a: a.relu(), [(4, 3)], False),
    "tanh": (lambda a: a.tanh(), [(4, 3)], False),
    "fs.sigmoid": (lambda a: fs.sigmoid(a), [(5,)], False),
    "exp": (lambda a: a.exp(), [(4,)], False),
    "fs.exp": (lambda a: 1 / (1 + fs.exp(-a)), [(4,)], False),
    "log": (lambda a: a.log(), [(4,)], True),
    "abs": (lambda a: a.abs(), [(4,)], False),
    "sqrt": (lambda a: a.sqrt(), [(4,)], True),
    "clamp": (lambda a: a.clamp(-0.5, 0.5), [(6,)], False),
    "sum": (lambda a: a.sum(), [(3, 4)], False),
    "sum dim": (lambda a: a.sum(0), [(3, 4)], False),
    "sum dims keepdim": (lambda a: a.sum((0, 2), keepdim=True), [(2, 3, 4)], False),
    "mean": (lambda a: a.mean(), [(3, 4)], False),
    "mean dim": (lambda a: a.mean(1), [(3, 4)], False),
    "mean last two": (lambda a: a.mean((-1, -2)), [(2, 3, 4)], False),
    "max": (lambda a: a.max(), [(3, 4)], False),
    "max other": (lambda a, b: a.max(b), [(3, 4), (4,)], False),
    "max zero (relu)": (lambda a: a.max(fs.tensor(0.0)), [(3, 4)], False),
    "where": (lambda a, b: fs.where(Tensor(MASK), a, b), [(3, 4), (4,)], False),
    "index int": (lambda a: a[1], [(3, 4)], False),
    "index slice": (lambda a: a[:, 1:3], [(3, 4)], False),
    "index repeated": (lambda a: a[[0, 2, 0]], [(3, 4)], False),
    "index mask": (lambda a: a[Tensor(MASK)], [(3, 4)], False),
    "view": (lambda a: a.view(-1, 2) * fs.tensor(np.arange(2.0)), [(3, 4)], False),
    "reshape": (lambda a: a.reshape(4, 3), [(3, 4)], False),
    "unsqueeze": (lambda a: a.unsqueeze(1) * fs.tensor(np.ones((1, 2))), [(3,)], False),
    "squeeze": (lambda a: a.squeeze(1), [(3, 1)], False),
    "T": (lambda a: a.T @ a, [(3, 4)], False),
    "t": (lambda a: a.t(), [(3, 4)], False),
    "flatten": (lambda a: a.flatten(), [(3, 4)], False),
    "clone": (lambda a: a.clone() * a, [(3,)], False),
    "stack": (lambda a, b: fs.stack([a, b, a], dim=1), [(3, 2), (3, 2)], False),
    "cat": (lambda a, b: fs.cat([a, b]), [(3, 2), (1, 2)], False),
    "cat dim 1": (lambda a, b: fs.cat([a, b], dim=1), [(3, 2), (3, 1)], False),
    "unpack rows": (lambda p: (lambda a, b, c: a * b + c)(*p), [(3,)], False),
    "book quadratic": (lambda p: p[0] * (fs.arange(0, 5).double() ** 2) + p[1]
                       * fs.arange(0, 5).double() + p[2], [(3,)], False),
    "mnist_loss as the book writes it": (
        lambda p: fs.where(Tensor(np.array([[1], [0], [1]])) == 1, 1 - p.sigmoid(),
                           p.sigmoid()).mean(), [(3, 1)], False),
}


@pytest.mark.parametrize("name", OPERATIONS)
def test_gradient_matches_finite_differences(name):
    fn, shapes, positive = OPERATIONS[name]
    rng = np.random.default_rng(7)
    arrays = _inputs(shapes, rng, positive)
    with use_backend("numpy"):
        _check_gradients(fn, arrays, rng)


@pytest.mark.parametrize("loss, targets", [
    (fs.mnist_loss, np.array([[1.0], [0.0], [1.0], [0.0]])),
    (fs.mse, np.array([[0.5], [-1.0], [2.0], [0.0]])),
])
def test_loss_gradient_matches_finite_differences(loss, targets):
    rng = np.random.default_rng(3)
    with use_backend("numpy"):
        _check_gradients(lambda p: loss(p, Tensor(targets)), [rng.standard_normal((4, 1))], rng)


def test_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(4)
    labels = Tensor(np.array([2, 0, 1, 2]))
    with use_backend("numpy"):
        _check_gradients(lambda z: fs.cross_entropy(z, labels), [rng.standard_normal((4, 3))], rng)


def test_layers_gradients_match_finite_differences():
    rng = np.random.default_rng(5)
    model = fs.nn.Sequential(fs.nn.Linear(4, 3, rng), fs.nn.Tanh(), fs.nn.Linear(3, 2, rng),
                             fs.nn.Sigmoid(), fs.nn.Linear(2, 1, rng), fs.nn.ReLU())
    for p in model.parameters():
        p.value = p.value.astype(np.float64) + 0.1      # float64, and the ReLU's input positive
        p.grad = None
    x = rng.standard_normal((5, 4))
    with use_backend("numpy"):
        model(Tensor(x)).sum().backward()
        for p in model.parameters():
            numeric = np.zeros_like(p.value)
            for j in np.ndindex(p.value.shape):
                saved = p.value[j]
                p.value[j] = saved + 1e-6
                up = model(Tensor(x)).sum().item()
                p.value[j] = saved - 1e-6
                down = model(Tensor(x)).sum().item()
                p.value[j] = saved
                numeric[j] = (up - down) / 2e-6
            np.testing.assert_allclose(p.grad.numpy(), numeric, rtol=1e-6, atol=1e-8)


# ------------------------------------------------- against the kernels' backward
def _float32(rng, *shapes):
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_matmul_and_linear_use_the_backward_kernels(name):
    ref = backends.get("numpy")
    rng = np.random.default_rng(11)
    x, w, b, dy = _float32(rng, (7, 33), (33, 5), (5,), (7, 5))
    with use_backend(name):
        tx, tw, tb = (fs.tensor(a).requires_grad_() for a in (x, w, b))
        (tx @ tw).backward(Tensor(dy))
        np.testing.assert_allclose(tx.grad.numpy(), ref.matmul_backward_input(dy, w), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(tw.grad.numpy(), ref.matmul_backward_weight(x, dy), rtol=1e-5,
                                   atol=1e-5)
        for t in (tx, tw):
            t.grad = None
        linear(tx, tw, tb).backward(Tensor(dy))
    dx, dw, db = ref.linear_backward(x, w, dy)
    for got, expected in ((tx.grad, dx), (tw.grad, dw), (tb.grad, db)):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("kernel, keeps", [("sigmoid", "y"), ("relu", "x"), ("tanh", "y")])
def test_activations_use_the_backward_kernels(name, kernel, keeps):
    ref = backends.get("numpy")
    rng = np.random.default_rng(12)
    x, dy = _float32(rng, (9, 17), (9, 17))
    with use_backend(name):
        t = fs.tensor(x).requires_grad_()
        y = getattr(t, kernel)()
        y.backward(Tensor(dy))
    expected_y = getattr(ref, f"{kernel}_forward")(x)
    np.testing.assert_allclose(y.numpy(), expected_y, rtol=1e-5, atol=1e-6)
    saved = x if keeps == "x" else expected_y
    np.testing.assert_allclose(t.grad.numpy(), getattr(ref, f"{kernel}_backward")(saved, dy),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_losses_use_the_loss_kernels(name):
    ref = backends.get("numpy")
    rng = np.random.default_rng(13)
    preds, logits = _float32(rng, (10, 1), (10, 4))
    binary = (rng.random(10) > 0.5).astype(np.float32)
    labels = rng.integers(0, 4, 10)
    cases = [(fs.mnist_loss, preds, binary.reshape(-1, 1), ref.mnist_loss_forward(preds, binary),
              ref.mnist_loss_backward(preds, binary)),
             (fs.mse, preds, binary, ref.mse_forward(preds, binary), ref.mse_backward(preds, binary)),
             (fs.cross_entropy, logits, labels, ref.cross_entropy_forward(logits, labels),
              ref.cross_entropy_backward(logits, labels))]
    with use_backend(name):
        for loss, p, t, value, grad in cases:
            tp = fs.tensor(p).requires_grad_()
            out = loss(tp, fs.tensor(t))
            (out * 3).backward()
            assert out.item() == pytest.approx(value, rel=1e-5)
            np.testing.assert_allclose(tp.grad.numpy(), 3 * grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_operations_run_on_the_selected_backends_kernels(name, monkeypatch):
    chosen = backends.get(name)
    calls = []
    for kernel in ("matmul", "matmul_backward_input", "matmul_backward_weight", "relu_forward",
                   "relu_backward", "sgd_update"):
        original = getattr(chosen, kernel)
        monkeypatch.setattr(chosen, kernel, lambda *a, _k=kernel, _f=original, **kw:
                            calls.append(_k) or _f(*a, **kw))
    rng = np.random.default_rng(14)
    x, w = _float32(rng, (4, 6), (6, 3))
    with use_backend(name):
        tw = fs.tensor(w).requires_grad_()
        tx = fs.tensor(x).requires_grad_()
        (tx @ tw).max(fs.tensor(0.0)).sum().backward()
        fs.SGD([tw], 0.1).step()
    assert sorted(set(calls)) == sorted(["matmul", "matmul_backward_input",
                                         "matmul_backward_weight", "relu_forward",
                                         "relu_backward", "sgd_update"])


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_sgd_step_matches_the_reference_update(name):
    ref = backends.get("numpy")
    rng = np.random.default_rng(15)
    w, g = _float32(rng, (5, 3), (5, 3))
    expected, velocity = w.copy(), np.zeros_like(w)
    for _ in range(2):
        ref.sgd_update(expected, g, 0.1, 0.9, 0.01, velocity)
    with use_backend(name):
        p = fs.tensor(w).requires_grad_()
        opt = fs.SGD([p], 0.1, momentum=0.9, weight_decay=0.01)
        for _ in range(2):
            p.grad = g.copy()
            opt.step()
    np.testing.assert_allclose(p.numpy(), expected, rtol=1e-6)
    opt.zero_grad()
    assert (p.grad.numpy() == 0).all()


# --------------------------------------------------------- PyTorch's behaviours
def test_dtypes_follow_pytorch():
    assert fs.tensor([1, 0, 1]).dtype == np.int64
    assert fs.tensor([0.9, 0.4]).dtype == np.float32
    assert fs.tensor(3.).dtype == np.float32 and fs.tensor(3.).shape == ()
    assert fs.arange(0, 20).dtype == np.int64 and fs.arange(0, 20).float().dtype == np.float32
    assert (fs.tensor([1, 2]) * 0.5).dtype == np.float32
    assert (fs.tensor([1, 2]) / 2).dtype == np.float32
    assert (fs.arange(0, 4).float() - 9.5).dtype == np.float32
    assert fs.tensor(np.zeros(2)).dtype == np.float64            # an array keeps its dtype
    assert (fs.tensor([1.0]) > 0.5).dtype == np.bool_


def test_randn_is_seeded_by_manual_seed():
    fs.manual_seed(3)
    a = fs.randn(20)
    b = fs.randn((2, 3))
    fs.manual_seed(3)
    assert (fs.randn(20).numpy() == a.numpy()).all() and b.shape == (2, 3)
    assert a.dtype == np.float32


def test_grad_accumulates_until_cleared():
    x = fs.tensor([1.0, 2.0]).requires_grad_()
    (x * x).sum().backward()
    (x * 3).sum().backward()
    assert x.grad.tolist() == [5.0, 7.0]
    x.grad.zero_()
    assert x.grad.tolist() == [0.0, 0.0]
    x.grad = None
    assert x.grad is None
    (x * 2).sum().backward()
    assert x.grad.tolist() == [2.0, 2.0]


def test_data_updates_in_place_without_recording():
    params = fs.tensor([1.0, 2.0, 3.0]).requires_grad_()
    values = params.numpy()
    (params ** 2).sum().backward()
    params.data -= 0.5 * params.grad.data
    assert params.numpy() is values and params.tolist() == [0.0, 0.0, 0.0]
    assert params.requires_grad and params.is_leaf


def test_in_place_changes_need_no_grad():
    weights = fs.randn(4, 1).requires_grad_()
    with pytest.raises(RuntimeError, match="no_grad"):
        weights[0] *= 2
    before = weights.numpy()[0, 0]
    with fs.no_grad():
        weights[0] *= 1.0001
        y = weights * 2
    assert weights.numpy()[0, 0] == pytest.approx(before * 1.0001)
    assert not y.requires_grad


def test_backward_needs_a_gradient_for_many_values():
    x = fs.tensor([1.0, 2.0]).requires_grad_()
    with pytest.raises(RuntimeError, match="gradient"):
        (x * 2).backward()
    with pytest.raises(RuntimeError, match="does not require"):
        fs.tensor([1.0]).backward()
    with pytest.raises(TypeError, match="floating-point"):
        fs.tensor([1, 2]).requires_grad_()


def test_comparisons_item_and_repr():
    t = fs.tensor([0.9, 0.4, 0.2])
    assert ((t > 0.5).float().mean().item()) == pytest.approx(1 / 3)
    assert (fs.tensor([1, 0, 1]) == 1).tolist() == [True, False, True]
    assert repr(fs.tensor([1.0, 2.0]).requires_grad_()).endswith("requires_grad=True)")
    assert round(fs.stack([fs.tensor(0.5), fs.tensor(1.0)]).mean().item(), 4) == 0.75
    assert f"{fs.tensor(0.123456):.3f}" == "0.123"


def test_truth_of_many_values_is_refused():
    t = fs.tensor([1.0, 0.0])
    with pytest.raises(ValueError, match="ambiguous"):
        bool(t)
    assert bool(t.any()) and not bool(t.all()) and bool(fs.tensor(2.0) > 1)
