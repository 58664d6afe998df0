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
from fastsgd import layers
from fastsgd.layers import load_model, load_weights, read_model_file, save_model

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

    monkeypatch.setattr(layers, "Linear", NotToBeBuilt)
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
        with pytest.raises(ValueError, match="unexpected p9"):
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
