"""The layer-program kernel (``train_epoch``) against the NumPy reference program.

Each case trains one epoch of a small program (widths <= 8, a few dozen samples,
a short last batch) through ``backends.get("cuda").train_epoch`` on device arrays
and through ``numpy_ref.train_epoch`` on host copies, then compares the losses of
every step and the parameter, gradient and velocity blocks.
"""
import numpy as np
import pytest

from fastsgd import backends
from fastsgd.backends import cuda as cuda_backend
from fastsgd.backends import program as prog
from tests.helpers import BAD_EPOCHS, changed

#: name -> (layers as (kind, n_in, n_out), loss kind): every layer kind and every loss.
PROGRAMS = {
    "linear-mnist": ([("linear", 5, 1)], prog.MNIST_LOSS),
    "relu-cross_entropy": ([("linear", 5, 6), ("relu", 6, 6), ("linear", 6, 3)], prog.CROSS_ENTROPY),
    "sigmoid-mse": ([("linear", 5, 4), ("sigmoid", 4, 4), ("linear", 4, 2)], prog.MSE),
    "tanh-mnist": ([("linear", 5, 8), ("tanh", 8, 8), ("linear", 8, 1)], prog.MNIST_LOSS),
    "tanh-first-mse": ([("tanh", 5, 5), ("linear", 5, 1)], prog.MSE),
    "deep-cross_entropy": ([("linear", 5, 7), ("tanh", 7, 7), ("linear", 7, 4), ("relu", 4, 4),
                            ("linear", 4, 8), ("sigmoid", 8, 8), ("linear", 8, 3)], prog.CROSS_ENTROPY),
}
#: (momentum, weight decay)
OPTIMISERS = {"plain": (0.0, 0.0), "momentum": (0.9, 0.0), "decay": (0.0, 0.05), "both": (0.5, 0.01)}


def epoch_args(spec, loss_kind, n=27, bs=8, momentum=0.0, weight_decay=0.0, lr=0.3, seed=0):
    """Host arguments of ``Backend.train_epoch`` (27 rows in batches of 8: the last has 3)."""
    layers, n_params = prog.layer_table(spec)
    rng = np.random.default_rng(seed)
    n_in, n_out = int(layers[0, prog.N_IN]), int(layers[-1, prog.N_OUT])
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    if loss_kind == prog.CROSS_ENTROPY:
        targets = rng.integers(0, n_out, n)
    elif loss_kind == prog.MNIST_LOSS:
        targets = rng.integers(0, 2, n).astype(np.float32)
    else:  # mse: (N,) when there is one output, as the Learner passes it
        targets = rng.standard_normal((n, n_out) if n_out > 1 else n).astype(np.float32)
    steps = -(-n // bs)
    return dict(layers=layers, loss_kind=loss_kind, x=x, targets=targets, order=rng.permutation(n),
                bs=bs, lrs=np.linspace(lr, lr / 3, steps).astype(np.float32),
                params=(rng.standard_normal(n_params) * 0.5).astype(np.float32),
                grads=np.zeros(n_params, np.float32),
                velocities=rng.standard_normal(n_params).astype(np.float32) * 0.1,
                momentum=momentum, weight_decay=weight_decay)


HOST_ONLY = ("layers", "lrs", "losses")  # train_epoch takes these as NumPy arrays


def on_device(cu, args):
    """``args`` with every array but the host-only ones on the device (one copy per array object)."""
    copies = {}
    moved = {}
    for key, value in args.items():
        if isinstance(value, np.ndarray) and key not in HOST_ONLY:
            if id(value) not in copies:
                copies[id(value)] = cu.asarray(value, dtype=value.dtype)
            value = copies[id(value)]
        moved[key] = value
    return moved


def copied(args):
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in args.items()}


def run_both(cu, args):
    """(cuda losses, cuda blocks, reference losses, reference blocks) of one epoch."""
    ref_args, dev = copied(args), on_device(cu, args)
    got = cu.train_epoch(**dev)
    want = backends.get("numpy").train_epoch(**ref_args)
    blocks = {k: cu.to_numpy(dev[k]) for k in ("params", "grads", "velocities")}
    return got, blocks, want, {k: ref_args[k] for k in blocks}


def assert_same_epoch(cu, args):
    got, blocks, want, ref_blocks = run_both(cu, args)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    assert len(got) == len(want) == len(args["lrs"]) and np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    for key in blocks:
        np.testing.assert_allclose(blocks[key], ref_blocks[key], rtol=1e-4, atol=2e-6, err_msg=key)


def test_the_program_kernel_is_the_fused_path(cu):
    assert cu.supports("train_epoch")
    assert "_train_program_kernel" in cuda_backend.kernels()


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_program_matches_the_reference(cu, name):
    spec, loss_kind = PROGRAMS[name]
    momentum, weight_decay = OPTIMISERS["both"] if "deep" in name else OPTIMISERS["plain"]
    assert_same_epoch(cu, epoch_args(spec, loss_kind, momentum=momentum, weight_decay=weight_decay))


@pytest.mark.parametrize("optimiser", ["momentum", "decay", "both"])
@pytest.mark.parametrize("name", ["relu-cross_entropy", "sigmoid-mse", "tanh-mnist"])
def test_program_with_momentum_and_weight_decay_matches_the_reference(cu, name, optimiser):
    spec, loss_kind = PROGRAMS[name]
    momentum, weight_decay = OPTIMISERS[optimiser]
    assert_same_epoch(cu, epoch_args(spec, loss_kind, momentum=momentum, weight_decay=weight_decay,
                                     seed=3))


@pytest.mark.parametrize("n, bs", [(5, 8), (9, 1), (16, 8)], ids=["one-short-batch", "bs-1", "exact"])
def test_batch_edges_match_the_reference(cu, n, bs):
    spec, loss_kind = PROGRAMS["relu-cross_entropy"]
    assert_same_epoch(cu, epoch_args(spec, loss_kind, n=n, bs=bs, momentum=0.9))


def test_mse_with_several_outputs_takes_targets_shaped_like_the_output(cu):
    spec = [("linear", 3, 4), ("tanh", 4, 4), ("linear", 4, 4)]
    assert_same_epoch(cu, epoch_args(spec, prog.MSE, n=12, bs=5, lr=0.05))


def test_numpy_inputs_are_copied_and_device_blocks_are_updated(cu):
    args = epoch_args(*PROGRAMS["sigmoid-mse"])
    ref = copied(args)
    params, grads = cu.asarray(args["params"]), cu.asarray(args["grads"])
    args.update(params=params, grads=grads, velocities=None)  # momentum 0: no velocities needed
    got = cu.train_epoch(**args)  # x, targets and order stay NumPy arrays
    want = backends.get("numpy").train_epoch(**{**ref, "velocities": None})
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(cu.to_numpy(params), ref["params"], rtol=1e-4, atol=2e-6)


# ------------------------------------------------------------ a step that is not finite
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_the_epoch_stops_at_the_first_non_finite_loss_before_its_update(cu):
    spec = [("linear", 5, 3), ("relu", 3, 3), ("linear", 3, 2)]
    args = epoch_args(spec, prog.MSE, n=24, bs=8, momentum=0.9)
    args["order"] = np.arange(24)
    args["x"][8:16] *= np.float32(1e30)  # step 1's outputs, squared, overflow float32
    before = args["params"].copy()
    got, blocks, want, ref_blocks = run_both(cu, args)
    assert len(got) == len(want) == 2
    assert np.isfinite(got[0]) and not np.isfinite(got[1])
    np.testing.assert_allclose(got[0], want[0], rtol=2e-5)
    assert not np.array_equal(blocks["params"], before)  # step 0 was applied ...
    np.testing.assert_allclose(blocks["params"], ref_blocks["params"], rtol=1e-4, atol=2e-6)
    np.testing.assert_allclose(blocks["velocities"], ref_blocks["velocities"], rtol=1e-4, atol=2e-6)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
def test_a_first_step_that_is_not_finite_changes_nothing(cu):
    args = epoch_args([("linear", 5, 2)], prog.MSE, momentum=0.9)
    args["x"] *= np.float32(1e30)  # every squared error overflows
    dev = on_device(cu, args)
    losses = cu.train_epoch(**dev)
    assert len(losses) == 1 and not np.isfinite(losses[0])
    for key in ("params", "velocities"):
        np.testing.assert_array_equal(cu.to_numpy(dev[key]), args[key], err_msg=key)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("changes, error, text", BAD_EPOCHS, ids=[c[2][:40] for c in BAD_EPOCHS])
def test_bad_input_raises_a_clear_error_before_the_kernel_runs(cu, changes, error, text):
    args = on_device(cu, changed(**changes))
    before = cu.to_numpy(args["params"]) if cuda_backend.is_device_array(args["params"]) else None
    with pytest.raises(error) as info:
        backends.get("cuda").train_epoch(**args)
    assert text in str(info.value)
    if before is not None:
        np.testing.assert_array_equal(cu.to_numpy(args["params"]), before)  # nothing ran


@pytest.mark.parametrize("change, error, text", [
    (dict(targets=np.array([0, 1, 0.5] + [0] * 24, np.float32)), ValueError,
     "targets: expected every target to be 0 or 1"),
    (dict(targets=np.zeros((27, 2), np.float32)), ValueError, "targets: expected shape (27, 1)"),
    (dict(params=np.zeros(6, np.float32)), TypeError, "params: expected a numba CUDA device array"),
], ids=["not-binary", "targets-shape", "params-on-the-host"])
def test_bad_mnist_targets_and_host_blocks_are_rejected(cu, change, error, text):
    args = on_device(cu, epoch_args(*PROGRAMS["linear-mnist"]))
    args.update(change)
    with pytest.raises(error) as info:
        cu.train_epoch(**args)
    assert text in str(info.value)


def test_an_order_index_out_of_range_names_the_values(cu):
    args = on_device(cu, epoch_args(*PROGRAMS["tanh-mnist"]))
    args["order"] = cu.asarray(np.r_[np.arange(26), 99], dtype=np.int64)
    with pytest.raises(ValueError, match=r"order: indices must lie in \[0, 27\), got values from 0 to 99"):
        cu.train_epoch(**args)
