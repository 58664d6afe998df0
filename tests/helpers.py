"""Helpers shared by the test suites (tests/, tests_cuda/): backends, inputs, tolerances.

Numpy only (no hypothesis), so the CUDA suite can use it on a machine that has
just numpy and pytest.  Arrays reach a backend through its adapter
(``backend.asarray``) and come back through ``backend.to_numpy``, so one test
body runs on host and device backends alike.
"""
import os

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends
from fastsgd.backends import program as prog

#: Whether Numba's CUDA simulator is on (tests_cuda turns it on): small shapes then.
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

#: (m, k, n): m the batch, k the in-features, n the outputs or classes.  In the
#: simulator (tiles of 4, blocks of 16 threads) the small shapes cross tile, block
#: and grid-stride edges while each launch stays at a few hundred simulated threads.
ODD_SHAPES = [(1, 1, 1), (1, 7, 33), (7, 33, 1), (33, 1, 7), (64, 784, 30), (3, 784, 128),
              (65, 33, 10), (256, 129, 7)]
SIM_SHAPES = [(1, 1, 1), (5, 9, 6), (9, 3, 2), (2, 6, 9), (20, 3, 5)]
SHAPES = SIM_SHAPES if SIMULATOR else ODD_SHAPES


# ------------------------------------------------------------------ backends
def backend_params(device=True):
    """Every backend as a pytest param: a host backend that is unavailable is skipped with
    its reason; a device backend (cuda) is a param only where it is available."""
    params = []
    for name, status in backends.available().items():
        if status is not True and name == "cuda":
            continue
        if status is True and backends.get(name).arrays.device and not device:
            continue
        reason = None if status is True else f"{name} unavailable: {status}"
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(name, marks=marks, id=name))
    return params


def fused_backends(device=False):
    """Every backend with a fused train_epoch kernel as a param; the others are skipped."""
    params = []
    for param in backend_params(device):
        name, marks = param.values[0], list(param.marks)
        if not marks and not backends.get(name).supports("train_epoch"):
            marks = [pytest.mark.skip(reason=f"{name} has no fused train_epoch kernel")]
        params.append(pytest.param(name, id=name, marks=marks))
    return params


def to_backend(backend, x):
    """A NumPy array as an array of ``backend`` (a copy); other values as they are."""
    if isinstance(x, np.ndarray):
        return backend.asarray(x.copy(), dtype=x.dtype)
    return x


def to_host(backend, x):
    """A backend array as a NumPy array; other values (floats, None) as they are."""
    if x is None or isinstance(x, (float, int, np.floating)):
        return x
    return backend.to_numpy(x)


# ------------------------------------------------------------ kernel inputs
F32_EPS = float(np.finfo(np.float32).eps)


def assert_matches(actual, expected, reduction=1, scale=1.0):
    """float32 result vs float64 reference: |a - e| <= tol * (scale + |e|), tol ~ eps * n."""
    tol = 8 * F32_EPS * (reduction + 4)
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)


def f32(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def make_case(name, rng, m, k, n, scale=1.0):
    """(args, reduction length, magnitude of the summed terms) for kernel ``name``.

    m is the batch (B / M), k the in-features (I / K), n the outputs or classes (O / N / C).
    """
    if name == "matmul":
        return (f32(rng, m, k, scale=scale), f32(rng, k, n, scale=scale)), k, scale**2 * k
    if name == "matmul_backward_input":
        return (f32(rng, m, n, scale=scale), f32(rng, k, n, scale=scale)), n, scale**2 * n
    if name == "matmul_backward_weight":
        return (f32(rng, m, k, scale=scale), f32(rng, m, n, scale=scale)), m, scale**2 * m
    if name == "bias_backward":
        return (f32(rng, m, n, scale=scale),), m, scale * m
    if name == "linear_forward":
        return (f32(rng, m, k, scale=scale), f32(rng, k, n, scale=scale),
                f32(rng, n, scale=scale)), k, scale**2 * k + scale
    if name == "linear_backward":
        return (f32(rng, m, k, scale=scale), f32(rng, k, n, scale=scale),
                f32(rng, m, n, scale=scale)), max(m, n), scale**2 * max(m, n)
    if name in ("sigmoid_forward", "relu_forward", "tanh_forward"):
        return (f32(rng, m, n, scale=scale),), 1, 1.0
    if name == "sigmoid_backward":
        return (rng.uniform(0, 1, (m, n)).astype(np.float32), f32(rng, m, n, scale=scale)), 1, scale
    if name == "tanh_backward":
        return (rng.uniform(-1, 1, (m, n)).astype(np.float32), f32(rng, m, n, scale=scale)), 1, scale
    if name in ("mse_forward", "mse_backward"):
        return (f32(rng, m, n, scale=scale), f32(rng, m, n, scale=scale)), m * n, scale ** 2
    if name == "relu_backward":
        return (f32(rng, m, n, scale=scale), f32(rng, m, n, scale=scale)), 1, scale
    if name in ("mnist_loss_forward", "mnist_loss_backward", "binary_accuracy"):
        return (f32(rng, m, scale=scale), rng.integers(0, 2, m).astype(np.float32)), m, 1.0
    if name in ("cross_entropy_forward", "cross_entropy_backward", "multiclass_accuracy"):
        return (f32(rng, m, n, scale=scale), rng.integers(0, n, m)), n, 1.0 + scale
    if name == "sgd_update":
        return (f32(rng, m, n), f32(rng, m, n, scale=scale), 0.05, 0.9, 0.01, f32(rng, m, n)), 1, 1.0 + scale
    raise KeyError(name)


# ---------------------------------------------------------------- bad input
def f32_0(*shape):
    """A float32 array of ``shape`` from a fixed seed."""
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def with_nan(x):
    x = x.copy()
    x.flat[0] = np.nan
    return x


def read_only(x):
    x = x.copy()
    x.flags.writeable = False
    return x


A, B, OUT = f32_0(4, 5), f32_0(5, 3), f32_0(4, 3)
P, T = f32_0(4), np.array([1, 0, 1, 0], np.float32)
Z, L = f32_0(4, 3), np.array([0, 2, 1, 0], np.int64)

# (kernel, args, kwargs, exception, text the message must contain)
CASES = [
    ("matmul", (A[0], B), {}, ValueError, "a: expected a 2-D array"),
    ("matmul", (A, f32_0(4, 3)), {}, ValueError, "b.shape[0] is 4 but a.shape[1] is 5"),
    ("matmul", (A.astype(np.int32), B), {}, TypeError, "a: expected dtype"),
    ("matmul", (A, B.astype(np.float16)), {}, TypeError, "b: expected dtype"),
    ("matmul", (A.tolist(), B), {}, TypeError, "a: expected a numpy.ndarray"),
    ("matmul", (f32_0(4, 10)[:, ::2], B), {}, ValueError, "a: expected a C-contiguous"),
    ("matmul", (f32_0(0, 5), B), {}, ValueError, "a: empty array"),
    ("matmul", (with_nan(A), B), {}, ValueError, "a: contains NaN or Inf"),
    ("matmul", (A, B * np.float32(np.inf)), {}, ValueError, "b: contains NaN or Inf"),
    ("matmul", (A, B), {"out": f32_0(3, 4)}, ValueError, "out: expected shape (4, 3)"),
    ("matmul", (A, B), {"out": read_only(OUT)}, ValueError, "out: expected a writable"),
    ("matmul", (A, B), {"out": OUT.astype(np.float64)}, TypeError, "out: expected dtype float32"),
    ("matmul", (A, B), {"out": A[:, :3]}, ValueError, "out: expected a C-contiguous"),
    ("matmul_backward_input", (OUT, f32_0(5, 4)), {}, ValueError, "w.shape[1] is 4 but dy.shape[1] is 3"),
    ("matmul_backward_input", (OUT, B), {"dx": f32_0(4, 4)}, ValueError, "dx: expected shape (4, 5)"),
    ("matmul_backward_weight", (A, f32_0(3, 3)), {}, ValueError, "dy.shape[0] is 3 but x.shape[0] is 4"),
    ("matmul_backward_weight", (A, with_nan(OUT)), {}, ValueError, "dy: contains NaN"),
    ("bias_backward", (P,), {}, ValueError, "dy: expected a 2-D array"),
    ("bias_backward", (OUT,), {"db": f32_0(4)}, ValueError, "db: expected shape (3,)"),
    ("linear_forward", (A, B, f32_0(4)), {}, ValueError, "b.shape[0] is 4 but w.shape[1] is 3"),
    ("linear_forward", (A, B, f32_0(1, 3)), {}, ValueError, "b: expected a 1-D array"),
    ("linear_forward", (A, f32_0(6, 3), f32_0(3)), {}, ValueError, "w.shape[0] is 6 but x.shape[1] is 5"),
    ("linear_backward", (A, B, f32_0(4, 2)), {}, ValueError, "dy.shape[1] is 2 but w.shape[1] is 3"),
    ("linear_backward", (A, B, f32_0(2, 3)), {}, ValueError, "dy.shape[0] is 2 but x.shape[0] is 4"),
    ("linear_backward", (A, B, OUT), {"dw": f32_0(3, 5)}, ValueError, "dw: expected shape (5, 3)"),
    ("sigmoid_forward", (A.astype(np.int64),), {}, TypeError, "x: expected dtype"),
    ("sigmoid_forward", (f32_0(0),), {}, ValueError, "x: empty array"),
    ("sigmoid_forward", (A,), {"out": read_only(A)}, ValueError, "out: expected a writable"),
    ("sigmoid_backward", (A, f32_0(4, 4)), {}, ValueError, "dy.shape is (4, 4) but y.shape is (4, 5)"),
    ("relu_forward", (with_nan(A),), {}, ValueError, "x: contains NaN"),
    ("tanh_forward", (A.astype(np.float16),), {}, TypeError, "x: expected dtype"),
    ("tanh_forward", (A,), {"out": f32_0(4, 4)}, ValueError, "out: expected shape (4, 5)"),
    ("tanh_backward", (A, f32_0(5, 4)), {}, ValueError, "dy.shape is (5, 4) but y.shape is (4, 5)"),
    ("mse_forward", (P, f32_0(5)), {}, ValueError, "targets: expected shape (4,) to match preds"),
    ("mse_forward", (Z, f32_0(4)), {}, ValueError, "targets: expected shape (4, 3) to match preds"),
    ("mse_forward", (f32_0(2, 2, 2), f32_0(2, 2, 2)), {}, ValueError, "preds: expected shape (B,) or (B, O)"),
    ("mse_forward", (P, with_nan(P)), {}, ValueError, "targets: contains NaN"),
    ("mse_backward", (Z, Z), {"dpreds": f32_0(4)}, ValueError, "dpreds: expected shape (4, 3)"),
    ("relu_forward", (A.T,), {}, ValueError, "x: expected a C-contiguous"),
    ("relu_backward", (A, f32_0(5, 4)), {}, ValueError, "dy.shape is (5, 4) but x.shape is (4, 5)"),
    ("mnist_loss_forward", (P, np.array([1, 0, 2, 0], np.float32)), {}, ValueError,
     "targets: expected every target to be 0 or 1"),
    ("mnist_loss_forward", (P, T[:3]), {}, ValueError, "targets: expected 4 targets"),
    ("mnist_loss_forward", (f32_0(4, 3), T), {}, ValueError, "preds: expected shape (B,) or (B, 1)"),
    ("mnist_loss_forward", (P, T.astype(np.int64)), {}, TypeError, "targets: expected dtype"),
    ("mnist_loss_forward", (with_nan(P), T), {}, ValueError, "preds: contains NaN"),
    ("mnist_loss_backward", (P, T), {"dpreds": f32_0(3)}, ValueError, "dpreds: expected shape (4,)"),
    ("cross_entropy_forward", (Z, np.array([0, 3, 1, 0], np.int64)), {}, ValueError,
     "labels: labels must lie in [0, 3)"),
    ("cross_entropy_forward", (Z, np.array([0, -1, 1, 0], np.int64)), {}, ValueError,
     "labels: labels must lie in [0, 3)"),
    ("cross_entropy_forward", (Z, L.astype(np.float32)), {}, TypeError, "labels: expected dtype int64"),
    ("cross_entropy_forward", (Z, L[:3]), {}, ValueError, "labels: expected shape (4,)"),
    ("cross_entropy_forward", (Z, [0, 1, 2, 0]), {}, TypeError, "labels: expected a numpy.ndarray"),
    ("cross_entropy_backward", (Z[0], L), {}, ValueError, "logits: expected a 2-D array"),
    ("cross_entropy_backward", (Z * np.float32(np.inf), L), {}, ValueError, "logits: contains NaN or Inf"),
    ("sgd_update", (f32_0(3), f32_0(3), 0.1), {"momentum": 0.9}, ValueError, "velocity is required"),
    ("sgd_update", (f32_0(3), f32_0(4), 0.1), {}, ValueError, "grad.shape is (4,) but param.shape is (3,)"),
    ("sgd_update", (f32_0(3), f32_0(3), -0.1), {}, ValueError, "lr: expected a finite number"),
    ("sgd_update", (f32_0(3), f32_0(3), "fast"), {}, TypeError, "lr: expected a number"),
    ("sgd_update", (f32_0(3), f32_0(3), 0.1), {"momentum": 1.5, "velocity": f32_0(3)}, ValueError,
     "momentum: expected a finite number in [0.0, 1.0]"),
    ("sgd_update", (read_only(f32_0(3)), f32_0(3), 0.1), {}, ValueError, "param: expected a writable"),
    ("sgd_update", (f32_0(3), with_nan(f32_0(3)), 0.1), {}, ValueError, "grad: contains NaN"),
    ("sgd_update", (f32_0(3), f32_0(3), 0.1), {"momentum": 0.5, "velocity": f32_0(2)}, ValueError,
     "velocity.shape is (2,) but param.shape is (3,)"),
    ("binary_accuracy", (P, np.array([1, 0, 1, 5], np.float32)), {}, ValueError, "targets: expected every"),
    ("multiclass_accuracy", (Z, np.array([0, 1, 2, 3], np.int64)), {}, ValueError, "labels: labels must lie"),
]



# ------------------------------------------------------------------ learners
def separable(n=600, features=20, seed=0, classes=None):
    """A linearly separable problem: binary 0/1 targets, or integer labels for ``classes``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    w = rng.standard_normal((features, classes or 1))
    scores = x @ w
    y = scores.argmax(1) if classes else (scores[:, 0] > 0).astype(np.float32)
    return x, y


def make_learner(backend, x, y, model=None, loss=fs.mnist_loss, bs=32, lr=0.5, seed=0,
                 momentum=0.0, n_valid=100):
    """A Learner on ``x, y`` (the first ``n_valid`` rows for validation), silent."""
    fs.set_seed(seed)
    dls = fs.DataLoaders.from_arrays(x[n_valid:], y[n_valid:], x[:n_valid], y[:n_valid],
                                     bs=bs, seed=seed)
    model = model or fs.simple_net(x.shape[1], 16, 1)
    return fs.Learner(dls, model, loss, fs.SGD(lr, momentum=momentum), [fs.batch_accuracy],
                      backend=backend, show=False)


#: (kernel, expected text) -> (error, text) where a device backend answers differently on
#: purpose: outputs and in-place arrays must be device arrays, so a read-only or strided
#: NumPy output (which stays on the host) is refused by type.
DEVICE_ERRORS = {
    ("matmul", "out: expected a writable"): (TypeError, "out: expected a numba CUDA device array"),
    ("matmul", "out: expected a C-contiguous"): (TypeError, "out: expected a numba CUDA device array"),
    ("sigmoid_forward", "out: expected a writable"):
        (TypeError, "out: expected a numba CUDA device array"),
    ("sgd_update", "param: expected a writable"):
        (TypeError, "param: expected a numba CUDA device array"),
}


def bad_input_arg(backend, x):
    """A bad-input argument for ``backend``: C-contiguous writable NumPy arrays become backend
    arrays; read-only and strided views stay NumPy arrays, to reach the host checks."""
    if isinstance(x, np.ndarray) and x.flags.c_contiguous and x.flags.writeable:
        return backend.asarray(x.copy(), dtype=x.dtype)
    return x


# ------------------------------------------------------------- fused epochs
def epoch_inputs(loss_kind=prog.CROSS_ENTROPY, n=20, bs=8):
    """Arguments of ``Backend.train_epoch`` for Linear(5, 4)-ReLU-Linear(4, 3)."""
    layers, n_params = prog.layer_table([("linear", 5, 4), ("relu", 4, 4), ("linear", 4, 3)])
    rng = np.random.default_rng(0)
    targets = {prog.CROSS_ENTROPY: rng.integers(0, 3, n),
               prog.MSE: rng.standard_normal((n, 3)).astype(np.float32)}[loss_kind]
    steps = -(-n // bs)
    return dict(layers=layers, loss_kind=loss_kind, x=rng.standard_normal((n, 5)).astype(np.float32),
                targets=targets, order=rng.permutation(n), bs=bs,
                lrs=np.full(steps, 0.1, np.float32), params=rng.standard_normal(n_params).astype(np.float32),
                grads=np.zeros(n_params, np.float32), velocities=np.zeros(n_params, np.float32),
                momentum=0.9, weight_decay=0.0)


def changed(**changes):
    args = epoch_inputs()
    for key, value in changes.items():
        args[key] = value(args) if callable(value) else value
    return args


BAD_EPOCHS = [
    (dict(order=lambda a: np.where(a["order"] == 0, 20, a["order"])), ValueError, "order: indices must lie in [0, 20)"),
    (dict(order=lambda a: a["order"] - 1), ValueError, "order: indices must lie in [0, 20)"),
    (dict(order=lambda a: a["order"].reshape(4, 5)), ValueError,
     "order: expected int64 row indices of shape (R,), got int64 of shape (4, 5)"),
    (dict(order=lambda a: a["order"][:12]), ValueError, "lrs: expected shape (2,) = (ceil(R / bs),)"),
    (dict(order=lambda a: a["order"].astype(np.int32)), ValueError, "order: expected int64"),
    (dict(targets=lambda a: np.where(a["targets"] == 2, 3, a["targets"])), ValueError,
     "targets: labels must lie in [0, 3)"),
    (dict(targets=lambda a: a["targets"].astype(np.float32)), ValueError, "targets: cross_entropy expects int64"),
    (dict(loss_kind=prog.MNIST_LOSS, targets=np.zeros(20, np.float32)), ValueError,
     "mnist_loss needs a program with one output"),
    (dict(loss_kind=7), ValueError, "loss_kind: expected one of"),
    (dict(layers=lambda a: a["layers"][:, :3].copy()), ValueError, "layers: expected shape (L, 4)"),
    (dict(layers=lambda a: a["layers"].astype(np.int32)), TypeError, "layers: expected an int64"),
    (dict(layers=lambda a: np.where(np.arange(4) == 3, 50, a["layers"])), ValueError,
     "but the parameter block holds 39 floats"),
    (dict(layers=lambda a: np.array([[0, 5, 4, 0], [1, 4, 4, -1], [0, 5, 3, 24]], np.int64)), ValueError,
     "layers[2]: n_in is 5 but the layer before gives 4"),
    (dict(layers=lambda a: np.array([[0, 5, 4, 0], [9, 4, 4, -1], [0, 4, 3, 24]], np.int64)), ValueError,
     "layers[1]: unknown kind 9"),
    (dict(layers=lambda a: np.array([[1, 5, 5, -1]], np.int64)), ValueError, "at least one LINEAR"),
    (dict(x=lambda a: a["x"][:, :4].copy()), ValueError, "x.shape[1] is 4 but layers[0] n_in is 5"),
    (dict(params=lambda a: a["params"][:-1].copy()), ValueError, "parameter block holds 38 floats"),
    (dict(grads=lambda a: a["grads"][:-1].copy()), ValueError, "grads: expected shape (39,)"),
    (dict(velocities=None), ValueError, "velocities are required when momentum != 0"),
    (dict(velocities=lambda a: a["params"]), ValueError, "velocities: must not overlap"),
    (dict(lrs=lambda a: a["lrs"][:2].copy()), ValueError, "lrs: expected shape (3,)"),
    (dict(lrs=lambda a: np.array([0.1, -1, 0.1], np.float32)), ValueError, "lrs[1]: expected a finite number in [0.0, 3.4e38 (the float32 limit)], got -1.0"),
    (dict(lrs=lambda a: np.array([0.1, np.nan, 0.1], np.float32)), ValueError, "lrs[1]: expected a finite number in [0.0, 3.4e38 (the float32 limit)], got nan"),
    (dict(bs=0), ValueError, "bs: expected a positive integer"),
    (dict(momentum=2.0), ValueError, "momentum: expected a finite number in [0.0, 1.0]"),
]
