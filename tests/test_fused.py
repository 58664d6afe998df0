"""The fused path: layer programs of any depth train exactly like the layer-by-layer loop."""
import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends
from fastsgd.backends import program as prog
from fastsgd.fused import NotFusable, plan

from .helpers import BAD_EPOCHS, changed, epoch_inputs, fused_backends

ACTIVATIONS = (fs.ReLU, fs.Sigmoid, fs.Tanh)


def regression(n, features, outputs, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    y = (x @ rng.standard_normal((features, outputs)) + rng.standard_normal(outputs)).astype(np.float32)
    return x, y if outputs > 1 else y[:, 0]


def task(loss, n, features, outputs, seed):
    """(x, targets) suiting ``loss``: 0/1, class labels, or real values."""
    if loss is fs.mse:
        return regression(n, features, outputs, seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, features)).astype(np.float32)
    scores = x @ rng.standard_normal((features, max(outputs, 2)))
    if loss is fs.cross_entropy:
        return x, scores[:, :outputs].argmax(1) if outputs > 1 else np.zeros(n, np.int64)
    return x, (scores[:, 0] > 0).astype(np.float32)


def train(backend, build, loss, x, y, fused, epochs=2, bs=32, lr=0.1, momentum=0.0, wd=0.0,
          seed=11, schedule="cosine"):
    """(learner, weights after ``epochs``) for a fresh model from ``build`` (same init each call)."""
    fs.set_seed(seed)
    n_valid = max(len(x) // 5, 1)
    dls = fs.DataLoaders.from_arrays(x[n_valid:], y[n_valid:], x[:n_valid], y[:n_valid], bs=bs, seed=seed)
    learn = fs.Learner(dls, build(), loss, fs.SGD(lr, momentum=momentum, weight_decay=wd),
                       backend=backend, show=False, fused=fused)
    learn.fit(epochs, schedule=schedule)
    return learn, [learn.backend.to_numpy(p.value).copy() for p in learn.model.parameters()]


def assert_same_training(backend, build, loss, x, y, atol=1e-4, **kwargs):
    """The fused and the layer path give the same weights and losses; returns the fused learner."""
    layered, w_layered = train(backend, build, loss, x, y, fused=False, **kwargs)
    fused, w_fused = train(backend, build, loss, x, y, fused=True, **kwargs)
    assert layered.fused == "turned off"
    assert fused.fused is True
    assert max(np.abs(a - b).max() for a, b in zip(w_layered, w_fused)) < atol
    np.testing.assert_allclose(fused.recorder.losses, layered.recorder.losses, rtol=1e-4, atol=1e-6)
    return fused


def random_program(rng):
    """A builder for a random Sequential (depth 1-5, widths incl. 1) with a suitable loss."""
    loss = (fs.mnist_loss, fs.cross_entropy, fs.mse)[rng.integers(3)]
    depth = int(rng.integers(1, 6))
    features = int(rng.choice([1, 3, 17, 40]))
    widths = [int(rng.choice([1, 2, 5, 9, 24])) for _ in range(depth - 1)]
    outputs = 1 if loss is fs.mnist_loss else int(rng.choice([1, 3, 10]))
    activations = [ACTIVATIONS[rng.integers(3)] for _ in widths]
    sizes = [features, *widths, outputs]

    def build():
        layers = []
        for i in range(depth):
            layers.append(fs.Linear(sizes[i], sizes[i + 1]))
            if i < depth - 1:
                layers.append(activations[i]())
        return fs.Sequential(*layers)

    return build, loss, features, outputs


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("seed", range(12))
def test_random_programs_train_fused_exactly_like_layer_by_layer(backend, seed):
    rng = np.random.default_rng(seed)
    build, loss, features, outputs = random_program(rng)
    x, y = task(loss, 215, features, outputs, seed)  # 172 train rows: a short last batch
    momentum, wd = [(0.0, 0.0), (0.9, 0.0), (0.0, 1e-2), (0.5, 1e-3)][seed % 4]
    assert_same_training(backend, build, loss, x, y, bs=int(rng.choice([1, 7, 32, 500])),
                         momentum=momentum, wd=wd, epochs=2)


@pytest.mark.parametrize("backend", fused_backends())
def test_the_named_models_train_fused_and_agree_with_the_layer_path(backend):
    x, labels = task(fs.cross_entropy, 400, 784, 10, seed=1)
    def deep():
        return fs.Sequential(fs.Linear(784, 256), fs.ReLU(), fs.Linear(256, 128), fs.Tanh(),
                             fs.Linear(128, 10))

    assert_same_training(backend, deep, fs.cross_entropy, x * 0.1, labels, momentum=0.9)
    x, y = task(fs.mnist_loss, 400, 784, 1, seed=2)
    def sigmoid_net():
        return fs.Sequential(fs.Linear(784, 30), fs.Sigmoid(), fs.Linear(30, 20), fs.Sigmoid(),
                             fs.Linear(20, 1))

    assert_same_training(backend, sigmoid_net, fs.mnist_loss, x, y, lr=1.0)
    x, y = regression(400, 13, 1, seed=3)
    assert_same_training(backend, lambda: fs.Sequential(fs.Linear(13, 1)), fs.mse, x, y, lr=0.01)


@pytest.mark.parametrize("backend", fused_backends())
def test_the_chapters_quadratic_is_recovered_by_sgd_with_mse(backend):
    """The end-to-end SGD example: fit a*t^2 + b*t + c from the features (t^2, t, 1)."""
    t = np.random.default_rng(0).permutation(np.linspace(-1, 1, 240, dtype=np.float32))
    x = np.stack([t ** 2, t, np.ones_like(t)], axis=1)
    y = 3.0 * t ** 2 - 2.0 * t + 1.5
    learn, (w, b) = train(backend, lambda: fs.Sequential(fs.Linear(3, 1)), fs.mse, x, y, fused=True,
                          epochs=60, bs=20, lr=0.2, momentum=0.9, schedule="constant")
    assert learn.fused is True
    a, b1, c = w[0, 0], w[1, 0], w[2, 0] + b[0]  # the constant feature and the bias share c
    np.testing.assert_allclose([a, b1, c], [3.0, -2.0, 1.5], rtol=0.02)
    assert learn.recorder.history[-1]["valid_loss"] < 1e-4


@pytest.mark.parametrize("backend", fused_backends())
def test_a_loss_built_from_the_mnist_loss_kernels_trains_exactly_like_mnist_loss(backend):
    mine = fs.Loss("my_mnist_loss", np.float32, "mnist_loss_forward", "mnist_loss_backward")
    assert mine.kind == "mnist_loss" and mine.targets == "binary"
    x, y = task(fs.mnist_loss, 300, 20, 1, seed=4)
    def build():
        return fs.Sequential(fs.Linear(20, 1))

    theirs, w_theirs = train(backend, build, fs.mnist_loss, x, y, fused=True, lr=1.0)
    ours, w_ours = train(backend, build, mine, x, y, fused=True, lr=1.0)
    assert ours.fused is True
    for a, b in zip(w_theirs, w_ours):
        np.testing.assert_array_equal(a, b)
    assert 0 < ours.recorder.history[-1]["train_loss"] < 0.5


def test_a_loss_of_other_kernels_trains_layer_by_layer_and_says_why():
    def forward(kernels, preds, targets):  # mean absolute error
        return float(np.abs(preds.reshape(-1) - targets).mean())

    def backward(kernels, preds, targets, out):
        out = np.empty_like(preds) if out is None else out
        out[...] = np.sign(preds.reshape(-1) - targets).reshape(preds.shape) / preds.size
        return out

    mae = fs.Loss("mae", np.float32, forward, backward)
    assert mae.kind is None and mae.targets == "real"
    x, y = regression(300, 6, 1, seed=5)
    learn, _ = train("numpy", lambda: fs.Sequential(fs.Linear(6, 1)), mae, x, y, fused=True, lr=0.1)
    assert isinstance(learn.fused, str) and "mae" in learn.fused and "fused kind" in learn.fused
    history = learn.recorder.history
    assert history[-1]["train_loss"] < history[0]["valid_loss"] * 2  # it trained, layer by layer
    with pytest.raises(NotFusable, match="mae"):
        plan(learn.model, mae, learn.opt, learn.dls.train)


def test_a_loss_whose_targets_differ_from_its_kernels_is_not_fused():
    odd = fs.Loss("odd", np.float32, "mse_forward", "mse_backward", targets="binary")
    assert odd.kind is None
    with pytest.raises(ValueError, match="target_dtype"):
        fs.Loss("labels_as_floats", np.float32, "cross_entropy_forward", "cross_entropy_backward")
    with pytest.raises(ValueError, match="forward_kernel"):
        fs.Loss("typo", np.float32, "mse_forwards", "mse_backward")


def test_learner_says_which_path_runs_and_why():
    x, y = task(fs.mnist_loss, 100, 8, 1, seed=6)
    learn, _ = train("numpy", lambda: fs.simple_net(8, 4, 1), fs.mnist_loss, x, y, fused=True)
    assert learn.fused is True
    learn.fused = False
    assert learn.fused == "turned off"
    learn.fused = True

    class Doubler(fs.layers.Module):
        def forward(self, x):
            return x * 2

        def backward(self, dy):
            return dy * 2

    odd, _ = train("numpy", lambda: fs.Sequential(fs.Linear(8, 4), Doubler(), fs.Linear(4, 1)),
                   fs.mnist_loss, x, y, fused=True)
    assert "layer 1 is a Doubler" in odd.fused


@pytest.mark.parametrize("backend", [b for b in fused_backends() if b != "cuda"])
def test_the_fused_blocks_start_on_a_cache_line(backend):
    x, y = task(fs.cross_entropy, 300, 20, 3, seed=4)
    learn, _ = train(backend, lambda: fs.simple_net(20, 16, 3), fs.cross_entropy, x, y,
                     fused=True, epochs=1, momentum=0.9)
    weight, bias = learn.model.parameters()[:2]
    for array in (weight.value, weight.grad_value):  # the first layer's views open each block
        assert array.ctypes.data % 64 == 0
    # the views are the blocks the compiled epoch updated: a fit moves the weights
    before = weight.value.copy()
    learn.fit(1)
    assert not np.array_equal(before, weight.value)


@pytest.mark.parametrize("backend", fused_backends())
def test_fused_training_that_diverges_stops_like_the_layer_path(backend):
    x, y = task(fs.cross_entropy, 300, 20, 2, seed=7)
    def build():
        return fs.Sequential(fs.Linear(20, 2))

    with pytest.raises(fs.TrainingDiverged, match="lower the learning rate"):
        train(backend, build, fs.cross_entropy, x * 1e4, y, fused=True, lr=1e38, epochs=2)


@pytest.mark.parametrize("backend", fused_backends())
def test_a_fit_after_load_or_between_fits_continues_exactly(backend, tmp_path):
    """Fused fits keep parameters and velocities in their blocks across fits and reloads."""
    x, y = task(fs.cross_entropy, 300, 12, 3, seed=8)
    def build():
        return fs.Sequential(fs.Linear(12, 7), fs.Tanh(), fs.Linear(7, 3))

    _, straight = train(backend, build, fs.cross_entropy, x, y, fused=True, epochs=4, momentum=0.9,
                        schedule="constant")
    fs.set_seed(11)
    dls = fs.DataLoaders.from_arrays(x[60:], y[60:], x[:60], y[:60], bs=32, seed=11)
    learn = fs.Learner(dls, build(), fs.cross_entropy, fs.SGD(0.1, momentum=0.9), backend=backend,
                       show=False)
    learn.fit(1)
    learn.fused = False
    learn.fit(1)  # layer by layer, on the same memory
    learn.fused = True
    learn.fit(2)
    for a, b in zip(straight, learn.model.parameters()):
        np.testing.assert_allclose(a, learn.backend.to_numpy(b.value), rtol=1e-5, atol=1e-6)
    learn.save(tmp_path / "m.npz")
    learn.load(tmp_path / "m.npz")  # new arrays: the next fit lays the blocks out again
    learn.fit(1)
    assert learn.fused is True and len(learn.recorder.history) == 5


# ---------------------------------------------------------------- the kernel's front door
@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("changes, error, text", BAD_EPOCHS, ids=[c[2][:40] for c in BAD_EPOCHS])
def test_train_epoch_rejects_bad_input_before_any_compiled_code_runs(backend, changes, error, text):
    args = changed(**changes)
    before = args["params"].copy()
    with pytest.raises(error) as info:
        backends.get(backend).train_epoch(**args)
    assert text in str(info.value)
    np.testing.assert_array_equal(args["params"], before)  # nothing ran


@pytest.mark.parametrize("backend", fused_backends())
def test_train_epoch_matches_the_reference_program(backend):
    for loss_kind in (prog.CROSS_ENTROPY, prog.MSE):
        mine, ref = epoch_inputs(loss_kind), epoch_inputs(loss_kind)
        got = backends.get(backend).train_epoch(**mine)
        want = backends.get("numpy").train_epoch(**ref)
        assert len(got) == len(want) == 3 and np.isfinite(got).all()
        np.testing.assert_allclose(got, want, rtol=1e-5)
        for key in ("params", "grads", "velocities"):
            np.testing.assert_allclose(mine[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)


def sharing(args, out, inp, offset=0):
    """``args`` with ``args[out]`` and ``args[inp]`` views of one byte buffer, ``inp``
    starting ``offset`` bytes in; ``inp`` keeps its values (written last), ``out`` is
    whatever they leave."""
    src, dst = args[inp], args[out]
    raw = np.zeros(max(dst.nbytes, offset + src.nbytes), np.uint8)
    shared_out = raw[:dst.nbytes].view(dst.dtype)
    shared_out[...] = dst
    shared_in = raw[offset:offset + src.nbytes].view(src.dtype).reshape(src.shape)
    shared_in[...] = src
    return dict(args, **{out: shared_out, inp: shared_in})


OVERLAPS = [(out, inp) for out in ("params", "grads", "velocities", "losses")
            for inp in ("layers", "x", "targets", "order", "lrs")]


@pytest.mark.parametrize("backend", fused_backends())
@pytest.mark.parametrize("out, inp", OVERLAPS, ids=[f"{o}-over-{i}" for o, i in OVERLAPS])
def test_train_epoch_refuses_a_block_sharing_memory_with_an_input_of_any_dtype(backend, out, inp):
    args = sharing(dict(epoch_inputs(), losses=np.zeros(3)), out, inp, offset=8)
    kept = {key: args[key].copy() for key in ("layers", "x", "targets", "order", "lrs")}
    with pytest.raises(ValueError, match=f"^{out}: must not overlap {inp}, an input"):
        backends.get(backend).train_epoch(**args)
    for key, value in kept.items():
        np.testing.assert_array_equal(args[key], value, err_msg=key)


@pytest.mark.parametrize("backend", fused_backends())
def test_train_epoch_refuses_blocks_sharing_memory_with_each_other(backend):
    args = sharing(dict(epoch_inputs(), losses=np.zeros(3)), "losses", "grads")
    with pytest.raises(ValueError, match="^losses: must not overlap grads, another output"):
        backends.get(backend).train_epoch(**args)


@pytest.mark.parametrize("module", ["c", "numba"])
def test_compiled_epochs_called_directly_refuse_overlap_too(module):
    if backends.available()[module] is not True:
        pytest.skip(f"{module} is unavailable")
    impl = backends.get(module).module
    args = sharing(dict(epoch_inputs(), losses=np.zeros(3)), "params", "order", offset=8)
    with pytest.raises(ValueError, match="^params: must not overlap order"):
        impl.train_epoch(**dict(args, momentum=np.float32(0.9), weight_decay=np.float32(0)))


@pytest.mark.parametrize("backend", fused_backends())
def test_a_batch_size_beyond_the_rows_takes_no_more_memory_than_the_rows(backend):
    args = dict(epoch_inputs(), bs=2 ** 31)       # one step of all 20 rows
    args["lrs"] = args["lrs"][:1].copy()
    ref = dict(epoch_inputs(), bs=20)
    ref["lrs"] = ref["lrs"][:1].copy()
    got = backends.get(backend).train_epoch(**args)
    want = backends.get(backend).train_epoch(**ref)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(args["params"], ref["params"])


@pytest.mark.parametrize("backend", fused_backends())
def test_a_part_of_an_epoch_trains_the_rows_its_order_names(backend):
    whole, first, rest = epoch_inputs(), epoch_inputs(), epoch_inputs()
    got = backends.get(backend).train_epoch(**whole)
    parts = [backends.get(backend).train_epoch(**dict(first, order=first["order"][:8],
                                                      lrs=first["lrs"][:1]))]
    for key in ("params", "grads", "velocities"):
        rest[key] = first[key]
    parts.append(backends.get(backend).train_epoch(**dict(rest, order=rest["order"][8:],
                                                          lrs=rest["lrs"][1:])))
    np.testing.assert_allclose(np.concatenate(parts), got, rtol=1e-6)
    for key in ("params", "velocities"):
        np.testing.assert_allclose(rest[key], whole[key], rtol=1e-6, atol=1e-7, err_msg=key)


def _interrupted_after_the_first_call(monkeypatch, learn):
    """Make ``learn``'s fused epoch raise KeyboardInterrupt (as Ctrl-C does) when its
    first compiled call returns; returns the list of the steps each call ran."""
    import signal
    calls, real = [], learn.backend.train_epoch

    def train_epoch(*args, **kwargs):
        losses = real(*args, **kwargs)
        calls.append(len(losses))
        signal.raise_signal(signal.SIGINT)        # pressed during this call
        return losses
    monkeypatch.setattr(learn.backend, "train_epoch", train_epoch)
    return calls


@pytest.mark.parametrize("backend", fused_backends())
def test_ctrl_c_in_a_fused_epoch_lands_after_the_call_running_not_at_the_epochs_end(
        backend, monkeypatch):
    x, y = task(fs.cross_entropy, 640, 12, 3, seed=1)
    learn = fs.Learner(fs.DataLoaders.from_arrays(x, y, x[:64], y[:64], bs=16, seed=0),
                       fs.simple_net(12, 8, 3), fs.cross_entropy, fs.SGD(0.1),
                       backend=backend, show=False, progress=False)
    assert learn.fused is True
    import fastsgd.fused as fused_module
    monkeypatch.setattr(fused_module, "_STEPS_PER_CALL", {})  # a shape not run before
    calls = _interrupted_after_the_first_call(monkeypatch, learn)
    with pytest.raises(KeyboardInterrupt):
        learn.fit(1)
    assert calls == [1]                 # one step of the epoch's 40 ran, then it stopped
    assert learn.epoch == 0 and learn.recorder.history == []


@pytest.mark.parametrize("backend", fused_backends())
def test_a_fused_epoch_in_parts_trains_like_one_call(backend, monkeypatch):
    import fastsgd.fused as fused_module
    x, y = task(fs.cross_entropy, 640, 12, 3, seed=1)

    def fit(part_seconds):
        monkeypatch.setattr(fused_module, "PART_SECONDS", part_seconds)
        monkeypatch.setattr(fused_module, "_STEPS_PER_CALL", {})
        fs.set_seed(0)
        learn = fs.Learner(fs.DataLoaders.from_arrays(x, y, x[:64], y[:64], bs=16, seed=0),
                           fs.simple_net(12, 8, 3), fs.cross_entropy, fs.SGD(0.1, 0.9),
                           backend=backend, show=False, progress=False)
        history = learn.fit(2)
        return [r["train_loss"] for r in history], [p.value for p in learn.model.parameters()]

    # 40 calls an epoch / 3 (1, 8, 31 steps), then 1
    (parts, params), (whole, whole_params) = fit(0.0), fit(1e9)
    np.testing.assert_allclose(parts, whole, rtol=1e-6)
    for a, b in zip(params, whole_params):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", fused_backends())
def test_gradient_is_the_layer_paths_gradient_and_leaves_the_parameters(backend):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((24, 6)).astype(np.float32)
    y = rng.integers(0, 3, 24).astype(np.int64)
    model = fs.Sequential(fs.Linear(6, 5, rng), fs.Tanh(), fs.Linear(5, 3, rng)).to(backend)
    program = plan(model, fs.cross_entropy, fs.SGD(model.parameters(), lr=0.1),
                   fs.DataLoader(x, y, bs=8))
    before = program.backend.to_numpy(program.params).copy()
    be = program.backend
    loss = program.gradient(be.asarray(x), be.asarray(y, np.int64))

    ref = fs.Sequential(fs.Linear(6, 5), fs.Tanh(), fs.Linear(5, 3))
    for mine, theirs in zip(model.parameters(), ref.parameters()):
        theirs.value = be.to_numpy(mine.value).copy()
    z = ref.forward(x)
    want_loss = fs.cross_entropy(z, y)
    ref.backward(fs.cross_entropy.backward(z, y))
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)
    np.testing.assert_array_equal(be.to_numpy(program.params), before)
    for mine, theirs in zip(model.parameters(), ref.parameters()):
        np.testing.assert_allclose(be.to_numpy(mine.grad_value), theirs.grad_value,
                                   rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("module", ["c", "numba"])
@pytest.mark.parametrize("change, error, match", [
    (dict(order=np.array([0, 20], np.int64)), ValueError,
     r"^order: row indices must lie in \[0, 20\), got values from 0 to 20"),
    (dict(targets=np.full(20, 3, np.int64)), ValueError, r"^targets: labels must lie in \[0, 3\)"),
    (dict(targets=np.zeros(20, np.int32)), TypeError, "^targets: expected dtype int64"),
    (dict(grads=np.zeros(5, np.float32)), ValueError, r"^grads: expected shape \(39,\) = params.shape"),
])
def test_compiled_epochs_share_one_memory_check_that_names_the_argument(module, change, error,
                                                                         match):
    if backends.available()[module] is not True:
        pytest.skip(f"{module} is unavailable")
    args = dict(epoch_inputs(), losses=np.zeros(3), momentum=0.9, weight_decay=0.0)
    args["order"] = np.asarray(args["order"], np.int64)
    args.update(change)
    steps = -(-len(args["order"]) // args["bs"])
    args["lrs"], args["losses"] = args["lrs"][:steps], args["losses"][:steps]
    with pytest.raises(error, match=match):
        backends.get(module).module.train_epoch(**args)
