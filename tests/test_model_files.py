"""Model files: every malformed file is one ValueError naming it, sizes are checked
before anything is allocated, and loads change all weights or none."""
from __future__ import annotations

import io
import json
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import layers, model_files
from fastsgd.layers import load_model, load_weights, read_checkpoint, read_model_file, save_model
from fastsgd.npz import write_npz

LINEAR = {"type": "Linear", "n_in": 3, "n_out": 2}
GOOD = {"type": "Sequential", "layers": [LINEAR, {"type": "ReLU"},
                                         {"type": "Linear", "n_in": 2, "n_out": 1}]}


def good_arrays():
    rng = np.random.default_rng(0)
    return {"p0": rng.standard_normal((3, 2)).astype(np.float32),
            "p1": rng.standard_normal(2).astype(np.float32),
            "p2": rng.standard_normal((2, 1)).astype(np.float32),
            "p3": rng.standard_normal(1).astype(np.float32)}


def write_model(path, config=GOOD, arrays=None, raw_config=None):
    """A model file holding ``config`` (or the bytes ``raw_config``) and ``arrays``."""
    text = raw_config if raw_config is not None else json.dumps(config).encode()
    arrays = good_arrays() if arrays is None else arrays
    np.savez(path, config=np.frombuffer(text, dtype=np.uint8), **arrays)
    return path


def with_arrays(**changes):
    """The good arrays with some replaced (a value of None removes that array)."""
    arrays = {**good_arrays(), **changes}
    return {k: v for k, v in arrays.items() if v is not None}


def nested(depth):
    config = {"type": "Sequential", "layers": [LINEAR]}
    for _ in range(depth):
        config = {"type": "Sequential", "layers": [config]}
    return config


BAD_CONFIGS = {
    "config is a list": ([1, 2], "Sequential at the top"),
    "top level is a Linear": (LINEAR, "Sequential at the top"),
    "layers is a dict": ({"type": "Sequential", "layers": {"a": 1}}, "non-empty list"),
    "no layers": ({"type": "Sequential", "layers": []}, "non-empty list"),
    "layer is a string": ({"type": "Sequential", "layers": ["Linear"]}, "layer object"),
    "type is a list": ({"type": "Sequential", "layers": [{"type": ["Linear"]}]}, "unknown layer type"),
    "unknown type": ({"type": "Sequential", "layers": [{"type": "Conv2d"}]}, "unknown layer type"),
    "n_in is text": ({"type": "Sequential", "layers": [{**LINEAR, "n_in": "3"}]}, "n_in must be"),
    "n_in is a float": ({"type": "Sequential", "layers": [{**LINEAR, "n_in": 3.0}]}, "n_in must be"),
    "n_out is a bool": ({"type": "Sequential", "layers": [{**LINEAR, "n_out": True}]}, "n_out must be"),
    "n_out is 0": ({"type": "Sequential", "layers": [{**LINEAR, "n_out": 0}]}, "n_out must be"),
    "n_in missing": ({"type": "Sequential", "layers": [{"type": "Linear", "n_out": 2}]}, "keys"),
    "extra key": ({"type": "Sequential", "layers": [{"type": "ReLU", "inplace": True}]}, "keys"),
    "sizes do not chain": ({"type": "Sequential", "layers": [LINEAR, LINEAR]}, "feeds one with 3"),
    "no Linear": ({"type": "Sequential", "layers": [{"type": "ReLU"}]}, "no Linear"),
    "nested too deep": (nested(20), "nested more than"),
    "too many parameters": ({"type": "Sequential", "layers": [
        {"type": "Linear", "n_in": 20000, "n_out": 20000}]}, "more than the"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configs_are_one_value_error_naming_the_file(tmp_path, case):
    config, message = BAD_CONFIGS[case]
    path = write_model(tmp_path / "m.npz", config)
    with pytest.raises(ValueError, match=message) as e:
        load_model(path)
    assert type(e.value) is ValueError and str(path) in str(e.value)


BAD_FILES = {
    "empty": (lambda p: p.write_bytes(b""), "not a fastsgd model"),
    "bad JSON": (lambda p: write_model(p, raw_config=b'{"type": "Seq'), "not valid JSON"),
    "bad UTF-8": (lambda p: write_model(p, raw_config=b"\xff\xfe"), "not valid JSON"),
    "deep JSON": (lambda p: write_model(p, raw_config=b"[" * 200_000), "not valid JSON"),
    "config of floats": (lambda p: np.savez(p, config=np.zeros(3), **good_arrays()), "uint8"),
    "no config": (lambda p: np.savez(p, **good_arrays()), "no config"),
    "missing array": (lambda p: write_model(p, arrays=with_arrays(p2=None)), "missing p2"),
    "extra array": (lambda p: write_model(p, arrays=with_arrays(p4=np.zeros(1, np.float32))),
                    "unexpected p4"),
    "stray array": (lambda p: write_model(p, arrays=with_arrays(w=np.zeros(1, np.float32))),
                    "unexpected w"),
    "int weights": (lambda p: write_model(p, arrays=with_arrays(p0=np.zeros((3, 2), np.int32))),
                    "expected floats"),
    "wrong shape": (lambda p: write_model(p, arrays=with_arrays(p2=np.zeros((1, 2), np.float32))),
                    r"p2 has shape \(1, 2\)"),
    "NaN weights": (lambda p: write_model(p, arrays=with_arrays(p1=np.array([0, np.nan], np.float32))),
                    "NaN or infinite"),
    "infinite weights": (lambda p: write_model(p, arrays=with_arrays(p3=np.array([np.inf], np.float32))),
                         "NaN or infinite"),
    "object array": (lambda p: np.savez(p, config=np.frombuffer(json.dumps(GOOD).encode(), np.uint8),
                                        **with_arrays(p0=np.array([None, 1], dtype=object))),
                     "Python objects"),
    "a text member": (lambda p: zipfile.ZipFile(p, "w").writestr("config.txt", "{}"), "non-.npy"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_malformed_files_are_one_value_error_naming_the_file(tmp_path, case):
    make, message = BAD_FILES[case]
    path = tmp_path / "m.npz"
    make(path)
    for load in (load_model, read_model_file):
        with pytest.raises(ValueError, match=message) as e:
            load(path)
        assert type(e.value) is ValueError and str(path) in str(e.value)


def test_every_truncation_and_many_corruptions_are_value_errors(tmp_path):
    good = write_model(tmp_path / "good.npz").read_bytes()
    rng = np.random.default_rng(0)
    variants = [good[:n] for n in range(0, len(good), 7)]
    for _ in range(100):
        raw = bytearray(good)
        for i in rng.integers(0, len(raw), size=rng.integers(1, 4)):
            raw[i] = int(rng.integers(0, 256))
        variants.append(bytes(raw))
    path = tmp_path / "m.npz"
    for raw in variants:
        path.write_bytes(raw)
        try:
            load_model(path)
        except ValueError as e:
            assert type(e) is ValueError and str(path) in str(e)


def test_a_tiny_file_declaring_a_huge_linear_is_refused_before_building(tmp_path, monkeypatch):
    config = {"type": "Sequential", "layers": [{"type": "Linear", "n_in": 20000, "n_out": 20000}]}
    only_config = write_model(tmp_path / "a.npz", config, arrays={})
    small_arrays = write_model(tmp_path / "b.npz", config, arrays={
        "p0": np.zeros((1, 1), np.float32), "p1": np.zeros(1, np.float32)})
    assert only_config.stat().st_size < 400

    class NotToBeBuilt:
        def __init__(self, *args):
            raise AssertionError("Linear constructed before the file was checked")

    monkeypatch.setattr(model_files, "Linear", NotToBeBuilt)
    for path in (only_config, small_arrays):
        with pytest.raises(ValueError, match="20000"):
            load_model(path)


def test_refusing_a_huge_declared_linear_is_fast_and_small(tmp_path):
    config = {"type": "Sequential", "layers": [{"type": "Linear", "n_in": 20000, "n_out": 20000}]}
    path = write_model(tmp_path / "a.npz", config, arrays={})
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=str(path)):
            load_model(path)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0 and peak < 200 << 20


def test_a_huge_array_header_is_refused_before_its_data_is_read(tmp_path):
    path = tmp_path / "m.npz"
    write_model(path, GOOD)
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as z:   # 40 MB of zeros, deflated
        with z.open("p9.npy", "w", force_zip64=True) as member:
            head = io.BytesIO()
            np.lib.format.write_array_header_1_0(
                head, {"descr": "<f4", "fortran_order": False, "shape": (10_000_000,)})
            member.write(head.getvalue())
            for _ in range(40):
                member.write(bytes(1_000_000))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="decompression bomb"):
            load_model(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20


def test_load_model_draws_no_random_numbers_and_linear_still_does(tmp_path, monkeypatch):
    a = fs.Linear(4, 3, np.random.default_rng(1)).w.value
    b = fs.Linear(4, 3, np.random.default_rng(1)).w.value
    np.testing.assert_array_equal(a, b)
    assert a.std() > 0 and np.abs(a).max() <= 0.5
    model = fs.simple_net(3, 2, 1, rng=np.random.default_rng(5))
    path = save_model(model, tmp_path / "m.npz")

    def no_random(*args, **kwargs):
        raise AssertionError("random numbers drawn for weights that are overwritten")

    monkeypatch.setattr(np.random, "default_rng", no_random)
    monkeypatch.setattr(layers, "global_rng", no_random)
    monkeypatch.setattr(model_files, "global_rng", no_random)
    loaded = load_model(path)
    for a, b in zip(model.parameters(), loaded.parameters()):
        np.testing.assert_array_equal(a.value, b.value)
        assert b.value.dtype == np.float32


def test_float64_weights_load_as_float32(tmp_path):
    arrays = {k: v.astype(np.float64) for k, v in good_arrays().items()}
    path = write_model(tmp_path / "m.npz", arrays=arrays)
    assert [w.dtype for w in read_model_file(path)[1]] == [np.float32] * 4
    model = load_model(path)
    assert [p.value.dtype for p in model.parameters()] == [np.float32] * 4
    np.testing.assert_array_equal(model.parameters()[0].value, good_arrays()["p0"])


# --------------------------------------------------------------------------- all or nothing

def snapshot(learn):
    return ([p.value for p in learn.model.parameters()],
            [p.value.copy() for p in learn.model.parameters()],
            [None if v is None else v.copy() for v in learn.opt.velocities()])


def assert_unchanged(learn, before):
    objects, values, velocities = before
    for p, obj, value in zip(learn.model.parameters(), objects, values):
        assert p.value is obj
        np.testing.assert_array_equal(p.value, value)
    for v, old in zip(learn.opt.velocities(), velocities):
        np.testing.assert_array_equal(v, old)


@pytest.fixture
def learner():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(x[50:], y[50:], x[:50], y[:50], bs=16, seed=0)
    model = fs.Sequential(fs.Linear(3, 2), fs.ReLU(), fs.Linear(2, 1))
    learn = fs.Learner(dls, model, fs.mnist_loss, fs.SGD(0.5, momentum=0.9), backend="numpy",
                       show=False)
    learn.fit(1)
    return learn


def test_learner_load_of_a_bad_third_array_changes_nothing(learner, tmp_path):
    path = write_model(tmp_path / "m.npz", arrays=with_arrays(p2=np.zeros((2, 2), np.float32)))
    before = snapshot(learner)
    assert any(v is not None and v.any() for v in before[2])     # momentum is in flight
    with pytest.raises(ValueError, match="p2"):
        learner.load(path)
    assert_unchanged(learner, before)


@pytest.mark.parametrize("bad", ["shape", "dtype"])
def test_load_weights_checks_everything_before_assigning(learner, bad):
    weights = list(good_arrays().values())
    weights[2] = np.zeros((2, 2), np.float32) if bad == "shape" else np.zeros((2, 1), np.int64)
    before = snapshot(learner)
    with pytest.raises(ValueError, match="array 2"):
        load_weights(learner.model, weights)
    assert_unchanged(learner, before)


# --------------------------------------------------------------------------- checkpoints

def test_a_weights_only_file_of_the_old_format_still_loads(learner, tmp_path):
    path = write_model(tmp_path / "old.npz")                 # config and p0..p3, nothing else
    epoch, history = learner.epoch, list(learner.recorder.history)
    learner.load(path)
    for p, w in zip(learner.model.parameters(), good_arrays().values()):
        np.testing.assert_array_equal(p.value, w)
    assert all(not v.any() for v in learner.opt.velocities())     # momentum restarts
    assert learner.epoch == epoch and learner.recorder.history == history
    assert learner.classes == [1, 0]
    assert read_checkpoint(path).state is None


def test_load_model_reads_a_checkpoint(learner, tmp_path):
    path = learner.save(tmp_path / "ckpt.npz")
    model = load_model(path)
    assert model.config() == GOOD
    for p, q in zip(model.parameters(), learner.model.parameters()):
        np.testing.assert_array_equal(p.value, q.value)
    assert read_model_file(path)[0] == GOOD


def rewrite(path, out, **changes):
    """The archive at ``path`` with members replaced (None removes one), written to ``out``
    with a checksum of its new content (the content is what is tested)."""
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files if k != "checksum"}
    for name, value in changes.items():
        if value is None:
            arrays.pop(name, None)
        elif isinstance(value, dict):
            arrays[name] = np.frombuffer(json.dumps(value).encode(), np.uint8)
        else:
            arrays[name] = value
    return write_npz(out, arrays)


def saved_state(path):
    return read_checkpoint(path).state


BAD_CHECKPOINT_FILES = {
    "velocities without a state": (lambda s: {"state": None}, "unexpected losses, v0"),
    "some velocities": (lambda s: {"v3": None}, "missing v3"),
    "a velocity of the wrong shape": (lambda s: {"v2": np.zeros((1, 2), np.float32)},
                                      r"v2 has shape \(1, 2\)"),
    "int velocities": (lambda s: {"v0": np.zeros((3, 2), np.int32)}, "v0 holds int32"),
    "NaN velocity": (lambda s: {"v1": np.array([0, np.nan], np.float32)}, "v1 holds NaN"),
    "a state of numbers": (lambda s: {"state": np.zeros(3)}, "state must be at most"),
    "a state that is a list": (lambda s: {"state": np.frombuffer(b"[1]", np.uint8)},
                               "state must be a JSON object"),
    "bad state JSON": (lambda s: {"state": np.frombuffer(b'{"epoch": ', np.uint8)},
                       "state is not valid JSON"),
    "2-D losses": (lambda s: {"losses": np.zeros((2, 2))}, "losses must be"),
    "infinite loss": (lambda s: {"losses": np.array([np.inf])}, "losses holds NaN or infinite"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINT_FILES))
def test_malformed_checkpoints_are_one_value_error_and_change_nothing(learner, tmp_path, case):
    change, message = BAD_CHECKPOINT_FILES[case]
    good = learner.save(tmp_path / "good.npz")
    path = rewrite(good, tmp_path / "bad.npz", **change(saved_state(good)))
    before, state = snapshot(learner), learner_state(learner)
    for load in (load_model, read_model_file, learner.load):
        with pytest.raises(ValueError, match=message) as e:
            load(path)
        assert type(e.value) is ValueError and str(path) in str(e.value)
    assert_unchanged(learner, before)
    assert learner_state(learner) == state


def learner_state(learn):
    return (learn.epoch, [dict(r) for r in learn.recorder.history], list(learn.recorder.losses),
            learn.dls.train.rng_state, learn.classes, learn.opt.lr, learn.opt.momentum)


def with_state(**changes):
    """A state change: keys replaced, or removed where the value is None."""
    def change(state):
        state = {**state, **changes}
        return {"state": {k: v for k, v in state.items() if v is not None}}
    return change


BAD_STATES = {
    "unknown format": (with_state(format=99), "unknown format 99"),
    "other targets": (with_state(targets="labels"), "saved from a model with 'labels' targets"),
    "three classes": (with_state(classes=[3, 7, 9]), "state.classes: the model has 2 classes"),
    "momentum 2": (with_state(opt={"lr": 0.1, "momentum": 2.0, "weight_decay": 0}),
                   "state.opt: SGD: momentum must be"),
    "opt without lr": (with_state(opt={"momentum": 0.9, "weight_decay": 0}), "state.opt: expected lr"),
    "negative epoch": (with_state(epoch=-1), r"state.epoch: expected an integer >= 0"),
    "history of numbers": (with_state(history=[1, 2]), r"state.history\[0\]: expected an object"),
    "unknown generator": (with_state(rng={"bit_generator": "Xorshift"}), "state.rng: expected a bit"),
    "broken PCG64 state": (with_state(rng={"bit_generator": "PCG64", "state": {"state": "x"}}),
                           "state.rng: not a valid PCG64 state"),
    "settings a list": (with_state(settings=[1]), "state.settings: expected an object"),
}


@pytest.mark.parametrize("case", list(BAD_STATES))
def test_a_bad_state_changes_nothing(learner, tmp_path, case):
    change, message = BAD_STATES[case]
    good = learner.save(tmp_path / "good.npz")
    path = rewrite(good, tmp_path / "bad.npz", **change(saved_state(good)))
    assert load_model(path).config() == GOOD            # the model itself is fine
    learner.fit(1)                                      # move on from the saved point
    before, state = snapshot(learner), learner_state(learner)
    with pytest.raises(ValueError, match=message) as e:
        learner.load(path)
    assert str(path) in str(e.value)
    assert_unchanged(learner, before)
    assert learner_state(learner) == state


def test_a_good_checkpoint_restores_every_part(learner, tmp_path):
    learner.classes = ["yes", "no"]
    path = learner.save(tmp_path / "ckpt.npz")
    saved, weights = learner_state(learner), [p.value.copy() for p in learner.model.parameters()]
    velocities = [v.copy() for v in learner.opt.velocities()]
    learner.fit(2)
    learner.classes = None
    learner.opt.lr = 0.01
    learner.load(path)
    assert learner_state(learner) == saved
    for p, w in zip(learner.model.parameters(), weights):
        np.testing.assert_array_equal(p.value, w)
    for v, w in zip(learner.opt.velocities(), velocities):
        np.testing.assert_array_equal(v, w)


def test_every_truncation_of_a_checkpoint_is_a_value_error(learner, tmp_path):
    good = learner.save(tmp_path / "good.npz").read_bytes()
    path = tmp_path / "m.npz"
    for n in range(0, len(good), 37):
        path.write_bytes(good[:n])
        with pytest.raises(ValueError, match=str(path)):
            learner.load(path)
