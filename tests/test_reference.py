"""The NumPy reference against central finite differences (float64) and plain formulas."""
import numpy as np
import pytest

from fastsgd import backends

EPS = 1e-6


@pytest.fixture
def ref():
    return backends.get("numpy")


def numeric_grad(f, x):
    """Central differences of the scalar function f at x (f reads x, which is perturbed in place)."""
    grad = np.zeros_like(x)
    flat, g = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + EPS
        up = f()
        flat[i] = old - EPS
        down = f()
        flat[i] = old
        g[i] = (up - down) / (2 * EPS)
    return grad


def assert_grad(analytic, numeric):
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_linear_backward_matches_finite_differences(ref, rng):
    x, w, b = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    dy = rng.standard_normal((4, 3))  # L = sum(dy * (x @ w + b)), so dL/dy = dy

    def loss():
        return (dy * ref.linear_forward(x, w, b)).sum()

    dx, dw, db = ref.linear_backward(x, w, dy)
    assert_grad(dx, numeric_grad(loss, x))
    assert_grad(dw, numeric_grad(loss, w))
    assert_grad(db, numeric_grad(loss, b))
    assert_grad(ref.matmul_backward_input(dy, w), numeric_grad(loss, x))
    assert_grad(ref.matmul_backward_weight(x, dy), numeric_grad(loss, w))
    assert_grad(ref.bias_backward(dy), numeric_grad(loss, b))


def test_matmul_matches_explicit_sums(ref, rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2))
    expected = [[sum(a[i, k] * b[k, j] for k in range(4)) for j in range(2)] for i in range(3)]
    np.testing.assert_allclose(ref.matmul(a, b), expected, rtol=1e-12)


def test_sigmoid_backward_matches_finite_differences(ref, rng):
    x, dy = rng.standard_normal((3, 4)) * 3, rng.standard_normal((3, 4))
    numeric = numeric_grad(lambda: (dy * ref.sigmoid_forward(x)).sum(), x)
    assert_grad(ref.sigmoid_backward(ref.sigmoid_forward(x), dy), numeric)


def test_sigmoid_matches_its_formula(ref):
    x = np.linspace(-30, 30, 61)
    np.testing.assert_allclose(ref.sigmoid_forward(x), 1 / (1 + np.exp(-x)), rtol=1e-14)


def test_tanh_backward_matches_finite_differences_and_its_formula(ref, rng):
    x, dy = rng.standard_normal((3, 4)) * 3, rng.standard_normal((3, 4))
    np.testing.assert_allclose(ref.tanh_forward(x), (np.exp(x) - np.exp(-x)) / (np.exp(x) + np.exp(-x)),
                               rtol=1e-12)
    numeric = numeric_grad(lambda: (dy * ref.tanh_forward(x)).sum(), x)
    assert_grad(ref.tanh_backward(ref.tanh_forward(x), dy), numeric)


def test_mse_matches_the_book_and_finite_differences(ref, rng):
    preds, targets = rng.standard_normal((5, 3)) * 4, rng.standard_normal((5, 3)) * 10
    assert ref.mse_forward(preds, targets) == pytest.approx(((preds - targets) ** 2).mean(), rel=1e-14)
    numeric = numeric_grad(lambda: ref.mse_forward(preds, targets), preds)
    assert_grad(ref.mse_backward(preds, targets), numeric)
    column, flat = preds[:, :1].copy(), targets[:, 0].copy()  # (B, 1) against (B,)
    numeric = numeric_grad(lambda: ref.mse_forward(column, flat), column)
    assert_grad(ref.mse_backward(column, flat), numeric)


def test_relu_backward_matches_finite_differences(ref, rng):
    x = rng.standard_normal((3, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    dy = rng.standard_normal((3, 5))
    numeric = numeric_grad(lambda: (dy * ref.relu_forward(x)).sum(), x)
    assert_grad(ref.relu_backward(x, dy), numeric)


def test_mnist_loss_matches_the_book_and_finite_differences(ref, rng):
    preds = rng.standard_normal(6) * 2
    targets = np.array([1, 0, 1, 1, 0, 0], np.float64)
    s = 1 / (1 + np.exp(-preds))
    assert ref.mnist_loss_forward(preds, targets) == pytest.approx(
        np.where(targets == 1, 1 - s, s).mean(), rel=1e-14)
    numeric = numeric_grad(lambda: ref.mnist_loss_forward(preds, targets), preds)
    assert_grad(ref.mnist_loss_backward(preds, targets), numeric)


def test_cross_entropy_matches_its_definition_and_finite_differences(ref, rng):
    logits = rng.standard_normal((5, 4)) * 3
    labels = np.array([0, 3, 1, 1, 2])
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert ref.cross_entropy_forward(logits, labels) == pytest.approx(
        -np.log(p[np.arange(5), labels]).mean(), rel=1e-12)
    numeric = numeric_grad(lambda: ref.cross_entropy_forward(logits, labels), logits)
    assert_grad(ref.cross_entropy_backward(logits, labels), numeric)


def test_cross_entropy_is_stable_for_huge_logits(ref):
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]])
    assert ref.cross_entropy_forward(logits, np.array([1, 0])) == pytest.approx(500.0)


def test_sgd_step_descends_the_finite_difference_gradient(ref, rng):
    """The update moves along -lr * (grad + wd * w): check against the numeric gradient of L + wd/2 |w|^2."""
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), np.zeros(2)
    labels = np.array([0, 1, 1, 0])
    wd, lr = 0.1, 0.01

    def objective():
        return ref.cross_entropy_forward(ref.linear_forward(x, w, b), labels) + wd / 2 * (w**2).sum()

    numeric = numeric_grad(objective, w)
    dlogits = ref.cross_entropy_backward(ref.linear_forward(x, w, b), labels)
    _, dw, _ = ref.linear_backward(x, w, dlogits)
    expected = w - lr * numeric
    ref.sgd_update(w, dw, lr, weight_decay=wd)
    np.testing.assert_allclose(w, expected, rtol=1e-8, atol=1e-10)
