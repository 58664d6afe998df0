"""The registry of layer and loss kinds (``backends/program.py``) and what is derived from it."""
import re
from pathlib import Path

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import fused, layers
from fastsgd.backends import program as prog
from fastsgd.commands.options import ACTIVATIONS

HEADER = Path(__file__).resolve().parents[1] / "csrc" / "kernels.h"


def _enum(name: str) -> dict[str, int]:
    """``FS_NAME = code`` pairs of ``enum name { ... }`` in kernels.h."""
    body = re.search(r"enum\s+" + name + r"\s*\{([^}]*)\}", HEADER.read_text()).group(1)
    return {key: int(value) for key, value in re.findall(r"(FS_\w+)\s*=\s*(\d+)", body)}


def test_the_c_header_enums_are_the_registry_kinds():
    layers_h, losses_h = _enum("fs_layer_kind"), _enum("fs_loss_kind")
    assert layers_h == {f"FS_{prog.LAYERS[c].name.upper()}": c for c in prog.BUILT_IN_LAYERS}
    assert losses_h == {f"FS_{prog.LOSSES[c].name.upper()}": c for c in prog.BUILT_IN_LOSSES}


def test_every_record_names_kernels_of_the_contract_and_a_layer_class():
    from fastsgd.backends import KERNELS
    for kind in (*prog.LAYERS.values(), *prog.LOSSES.values()):
        assert kind.forward in KERNELS and kind.backward in KERNELS, kind
    for kind in prog.LAYERS.values():
        cls = getattr(layers, kind.layer)
        assert cls is fs.Linear or cls.kind == kind.name


def test_tables_are_derived_from_the_registry():
    assert ACTIVATIONS == {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh"}
    assert [k.name for k in prog.activations()] == ["relu", "sigmoid", "tanh"]
    assert fs.ReLU()._keeps == "x" and fs.Sigmoid()._keeps == "y" and fs.Tanh()._keeps == "y"
    assert fs.mse.kind == "mse" and fs.cross_entropy.kind == "cross_entropy"
    assert fs.mse.targets == prog.loss_kind("mse").targets == "real"


def test_a_taken_name_or_code_is_refused():
    with pytest.raises(ValueError, match="taken"):
        prog.register_layer(prog.LayerKind("relu", 99, "X", "relu_forward", "relu_backward", "x"))
    with pytest.raises(ValueError, match="taken"):
        prog.register_loss(prog.LossKind("new", prog.MSE, "mse_forward", "mse_backward", "real"))
    with pytest.raises(ValueError, match="saves"):
        prog.register_layer(prog.LayerKind("new", 99, "X", "relu_forward", "relu_backward", "z"))
    assert 99 not in prog.LAYERS and "new" not in prog.LAYER_KINDS


def test_check_layer_table_takes_its_bounds_from_the_registry():
    table, n_params = prog.layer_table([("linear", 3, 4), ("tanh", 4, 4), ("linear", 4, 2)])
    assert prog.check_layer_table(table, n_params) == (3, 2)
    bad = table.copy()
    bad[1, prog.KIND] = max(prog.LAYERS) + 1
    with pytest.raises(ValueError, match=r"layers\[1\]: unknown kind"):
        prog.check_layer_table(bad, n_params)
    with pytest.raises(ValueError, match=r"layers\[1\]: kind 3 is not compiled into the c"):
        prog.check_compiled_kinds(table, prog.MSE, "c", {prog.LINEAR, prog.RELU})


SLOPE = 0.1


def _leaky_forward(x, out):
    """out = x where x > 0 else SLOPE * x."""
    np.multiply(x, np.where(x > 0, 1.0, SLOPE).astype(x.dtype), out=out)


def _leaky_backward(x, dy, dx):
    """dx = dy where x > 0 else SLOPE * dy, x the forward input."""
    np.multiply(dy, np.where(x > 0, 1.0, SLOPE).astype(dy.dtype), out=dx)


@pytest.fixture
def leaky_relu(monkeypatch):
    """A parameter-free activation added as the extending guide says: one record, one
    kernel pair (on the NumPy reference alone here), one Activation class."""
    from fastsgd.backends import numpy_ref
    monkeypatch.setattr(numpy_ref, "leaky_relu_forward", _leaky_forward, raising=False)
    monkeypatch.setattr(numpy_ref, "leaky_relu_backward", _leaky_backward, raising=False)
    record = prog.register_layer(prog.LayerKind(
        "leaky_relu", max(prog.LAYERS) + 1, "LeakyReLU", "leaky_relu_forward",
        "leaky_relu_backward", "x"))

    class LeakyReLU(layers.Activation):
        """``y = x`` where x > 0, else ``SLOPE * x``."""

        kind = "leaky_relu"

    yield LeakyReLU
    prog.unregister(record)


def _by_hand(w1, b1, w2, b2, x, y, lr, bs):
    """One epoch of plain SGD on Linear, leaky ReLU, Linear and cross-entropy, in float64."""
    w1, b1, w2, b2 = (a.astype(np.float64) for a in (w1, b1, w2, b2))
    losses = []
    for start in range(0, len(x), bs):
        xb, yb = x[start:start + bs].astype(np.float64), y[start:start + bs]
        h = xb @ w1 + b1
        a = np.where(h > 0, h, SLOPE * h)
        z = a @ w2 + b2
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        losses.append(-np.log(p[np.arange(len(yb)), yb]).mean())
        dz = (p - np.eye(z.shape[1])[yb]) / len(yb)
        da = dz @ w2.T
        dh = np.where(h > 0, da, SLOPE * da)
        grads = (xb.T @ dh, dh.sum(0), a.T @ dz, dz.sum(0))
        w1, b1, w2, b2 = (v - lr * g for v, g in zip((w1, b1, w2, b2), grads))
    return losses, (w1, b1, w2, b2)


def test_a_registered_activation_trains_fused_on_numpy(leaky_relu):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int64)
    model = fs.Sequential(fs.Linear(5, 8, rng), leaky_relu(), fs.Linear(8, 3, rng))
    start = [p.value.copy() for p in model.parameters()]
    dl = fs.DataLoader(x, y, bs=16)
    opt = fs.SGD(model.parameters(), lr=0.5)
    program = fused.plan(model, fs.cross_entropy, opt, dl)
    assert program.kinds == ("linear", "leaky_relu", "linear")
    assert program.layers[1, prog.KIND] == prog.LAYER_KINDS["leaky_relu"]

    losses = program.run(np.full(3, 0.5, np.float32))

    expected_losses, expected = _by_hand(*start, x, y, 0.5, 16)
    np.testing.assert_allclose(losses, expected_losses, rtol=1e-5)
    for p, want in zip(model.parameters(), expected):
        np.testing.assert_allclose(p.value, want, rtol=1e-4, atol=1e-6)


def test_a_registered_activation_is_refused_by_the_compiled_backends(leaky_relu):
    from fastsgd import backends
    table, n_params = prog.layer_table([("linear", 3, 4), ("leaky_relu", 4, 4),
                                        ("linear", 4, 2)])
    assert prog.check_layer_table(table, n_params) == (3, 2)
    for name in ("c", "numba"):
        if backends.available()[name] is not True:
            continue
        impl = backends.get(name).module
        with pytest.raises(ValueError, match=rf"layers\[1\]: kind \d+ is not compiled into the {name}"):
            impl.train_epoch(table, prog.MSE, np.zeros((2, 3), np.float32),
                             np.zeros((2, 2), np.float32), np.arange(2, dtype=np.int64), 2, np.ones(1, np.float32),
                             np.zeros(n_params, np.float32), np.zeros(n_params, np.float32),
                             None, 0.0, 0.0, np.zeros(1))


def test_a_registered_activation_runs_on_the_layer_path_of_numpy(leaky_relu):
    x = np.array([[-2.0, 0.5], [3.0, -0.25]], np.float32)
    layer = leaky_relu()
    np.testing.assert_allclose(layer.forward(x), [[-0.2, 0.5], [3.0, -0.025]], rtol=1e-6)
    np.testing.assert_allclose(layer.backward(np.ones_like(x)), [[0.1, 1.0], [1.0, 0.1]])
