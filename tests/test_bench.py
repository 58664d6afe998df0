"""``fastsgd bench`` and the plots, end to end on tiny selections (timings are never asserted)."""
import importlib.util
import json

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import bench
from fastsgd.cli import main

from .mnist_fixtures import make_mnist_folder

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROW_KEYS = {"kernel", "shape", "group", "size", "batch", "backend", "device", "status", "median_s",
            "mean_s", "min_s", "rounds", "iterations", "flop", "bytes", "rate", "unit", "pct_peak",
            "speedup_vs_numpy", "speedup_vs_torch", "max_error"}


def usable(*names):
    status = bench.runners()
    return [n for n in names if n in status]


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    """One tiny ``fastsgd bench --json`` run: two kernels at batch 64 on numpy and numba."""
    path = tmp_path_factory.mktemp("bench") / "bench.json"
    backends = ",".join(usable("numpy", "numba"))
    code = main(["bench", "--kernels", "matmul,relu_forward", "--sizes", "64",
                 "--backends", backends, "--json", str(path), "--no-progress"])
    return code, json.loads(path.read_text()), backends.split(",")


def test_bench_json_has_one_row_per_kernel_shape_backend(bench_json, capsys):
    code, result, backends = bench_json
    assert code == 0
    assert set(result) == {"machine", "rows"}
    rows = result["rows"]
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    groups = {r["group"] for r in rows}
    assert groups == {"matmul 64x784x30", "matmul 64x30x1", "matmul 64x784x128", "matmul 64x128x10",
                      "relu_forward 64x30", "relu_forward 64x128"}
    assert sorted((r["group"], r["backend"]) for r in rows) == sorted(
        (g, b) for g in groups for b in backends)
    for r in rows:
        assert r["status"] == "ok" and r["device"] == "cpu"
        assert r["median_s"] > 0 and r["rounds"] >= 5
        assert r["rate"] > 0 and r["pct_peak"] > 0
        assert r["unit"] == ("GFLOP/s" if r["kernel"] == "matmul" else "GB/s")
        assert r["speedup_vs_numpy"] > 0
        assert r["max_error"] < 1e-4
    assert all(r["speedup_vs_numpy"] == 1.0 for r in rows if r["backend"] == "numpy")


def test_bench_json_machine_says_where_the_peak_comes_from(bench_json):
    machine = bench_json[1]["machine"]
    assert machine["peak_gflops"] > 0 and machine["peak_source"].startswith("measured")
    assert machine["bandwidth_gbs"] > 0 and machine["bandwidth_source"].startswith("measured")
    assert machine["cores"] >= 1 and machine["numpy"] == np.__version__


def test_bench_prints_one_table(tmp_path, capsys):
    code = main(["bench", "--kernels", "sgd_update", "--sizes", "64", "--backends", "numpy",
                 "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("kernel"))
    assert header.split()[:6] == ["kernel", "shape", "backend", "median", "rate", "%"]
    assert "vs numpy" in header and "GFLOP/s" in out and "GB/s" in out
    assert sum(line.startswith("sgd_update") for line in out.splitlines()) == 2


@pytest.mark.parametrize("args, words", [
    (["--kernels", "nope"], "--kernels"),
    (["--kernels", "matmul,"], "--kernels"),
    (["--backends", "nope"], "--backends"),
    (["--sizes", "0"], "--sizes"),
    (["--sizes", "huge"], "--sizes"),
    (["--sizes", "large", "--kernels", "epoch"], "selects no case"),
    (["--frobnicate"], "unrecognized"),
])
def test_bench_bad_options_exit_2_with_one_line(args, words, capsys):
    assert main(["bench", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


def test_bench_unavailable_backend_is_a_usage_error(capsys):
    missing = [n for n, s in bench.runners(include_unavailable=True).items() if s is not True]
    if not missing:
        pytest.skip("every backend is available here")
    assert main(["bench", "--backends", missing[0], "--no-progress"]) == 2
    assert "unavailable" in capsys.readouterr().err


def test_bench_reports_a_mismatch_and_exits_1(monkeypatch, capsys):
    def wrong(case, runner, validate=True):
        raise bench.ValidationError(f"{case.group} on {runner}: differs")
    monkeypatch.setattr(bench, "prepare", wrong)
    assert main(["bench", "--kernels", "relu_forward", "--sizes", "64", "--backends", "numpy",
                 "--no-progress"]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_every_case_validates_on_the_reference_shapes():
    """Each kernel's smallest case runs and matches on numpy (the others: benchmarks/)."""
    seen = set()
    for case in bench.cases(sizes=[2]):
        if case.kernel in seen or case.kernel == "epoch":
            continue
        seen.add(case.kernel)
        job = bench.prepare(case, "numpy")
        assert job.max_error < 1e-5
        with bench.timing("numpy"):
            assert bench.time_call(job.fn, budget=0.0, min_rounds=2)["median_s"] > 0
    assert seen == set(bench.KERNEL_NAMES) - {"epoch"}


def test_epoch_case_validates_and_runs_one_epoch():
    case = bench.epoch_case("784-30-1", 64, samples=256)
    job = bench.prepare(case, "numpy")
    assert job.max_error == 0.0
    assert np.isfinite(job.fn()[0]["train_loss"])


@needs_matplotlib
def test_bench_plot_writes_a_png(tmp_path):
    path = tmp_path / "speedups.png"
    code = main(["bench", "--kernels", "relu_forward", "--sizes", "64",
                 "--backends", ",".join(usable("numpy", "numba")), "--plot", str(path),
                 "--no-progress"])
    assert code == 0
    assert path.read_bytes()[:8] == PNG_MAGIC


@needs_matplotlib
def test_train_plot_writes_a_png(tmp_path):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=300, n_valid=100, seed=0)
    path = tmp_path / "plots" / "loss.png"
    code = main(["train", "--data", str(folder), "--epochs", "2", "--quiet", "--no-progress",
                 "--backend", "numpy", "--plot", str(path)])
    assert code == 0
    assert path.read_bytes()[:8] == PNG_MAGIC


@needs_matplotlib
def test_recorder_plot_loss(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((128, 8), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype(np.float32)
    dls = fs.DataLoaders.from_arrays(x, y, x, y, bs=32, seed=0)
    learn = fs.Learner(dls, fs.simple_net(8, 4, 1, np.random.default_rng(0)), fs.mnist_loss,
                       fs.SGD(0.5), [fs.batch_accuracy], backend="numpy", show=False)
    learn.fit(1)
    assert learn.recorder.plot_loss(tmp_path / "loss.png").read_bytes()[:8] == PNG_MAGIC


def test_plots_without_matplotlib_fail_with_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)   # import fails
    assert main(["bench", "--kernels", "relu_forward", "--sizes", "64", "--backends", "numpy",
                 "--plot", str(tmp_path / "p.png"), "--no-progress"]) == 2
    assert main(["train", "--plot", str(tmp_path / "l.png"), "--no-progress"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("pip install 'fastsgd[plot]'" in e for e in errors)
