"""The benchmark wing (``fastsgd.bench``) and ``fastsgd bench``, on real values.

Statistics are checked on known samples, the peak probe and the epoch workers run
for real (tiny sizes), and the command runs end to end in-process.  No test
asserts on how fast anything is.
"""
import importlib.util
import json
import math
import subprocess
import sys

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import bench
from fastsgd.bench import cases, epochs, lockstep, machine, report, run, stats
from fastsgd.cli import main

from .mnist_fixtures import make_mnist_folder

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="matplotlib is not installed")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = ["--budget", "0.002", "--no-progress"]


def usable(*names):
    status = bench.runners()
    return [n for n in names if n in status]


# ---------------------------------------------------------------- statistics
def test_stats_of_known_samples():
    s = stats.Stats(tuple(range(1, 11)), iterations=4)   # 1..10 seconds
    assert (s.rounds, s.iterations, s.min, s.max) == (10, 4, 1.0, 10.0)
    assert s.median == 5.5 and s.mean == 5.5
    assert s.q(0.1) == pytest.approx(1.9) and s.q(0.9) == pytest.approx(9.1)
    assert s.q(0.25) == pytest.approx(3.25) and s.q(0.75) == pytest.approx(7.75)
    assert s.spread == pytest.approx(9.1 / 1.9)
    assert s.wide and not s.stalled and s.flags() == ["wide"]
    d = s.as_dict()
    assert d["p10_s"] == pytest.approx(1.9) and d["q3_s"] == pytest.approx(7.75)
    assert d["rounds"] == 10 and d["median_s"] == 5.5


def test_quantiles_match_numpy():
    values = np.random.default_rng(0).lognormal(size=37)
    s = stats.Stats(tuple(values))
    for q in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
        assert s.q(q) == pytest.approx(np.quantile(values, q))


def test_a_stalled_round_is_flagged_even_when_the_spread_is_narrow():
    s = stats.Stats((1.0,) * 19 + (20.0,))
    assert s.spread == pytest.approx(1.0) and not s.wide
    assert s.stalled and s.noisy and s.flags() == ["stalled"]
    one = stats.Stats((0.5,))
    assert one.median == one.q(0.1) == one.q(0.9) == 0.5 and not one.noisy
    with pytest.raises(ValueError, match="samples"):
        stats.Stats(())


def test_measure_retries_a_noisy_measurement_once():
    clean, noisy = stats.Stats((1.0, 1.1, 1.05)), stats.Stats((1.0, 3.0, 1.0, 1.2))
    takes = iter([noisy, clean])
    kept, notes = stats.measure(lambda: next(takes))
    assert kept is clean and notes["remeasured"] and notes["flags"] == []
    assert notes["first_spread"] == pytest.approx(noisy.spread)
    takes = iter([noisy, noisy])
    kept, notes = stats.measure(lambda: next(takes))
    assert notes["remeasured"] and notes["flags"] == ["wide"]
    kept, notes = stats.measure(lambda: clean)
    assert not notes["remeasured"] and notes["flags"] == []
    kept, notes = stats.measure(lambda: noisy, retry=False)
    assert not notes["remeasured"] and notes["flags"] == ["wide"]


def test_time_call_groups_fast_calls_into_rounds():
    calls = []
    s = stats.time_call(lambda: calls.append(1), budget=0.01, min_rounds=5, min_round_s=1e-3)
    assert s.rounds >= 5 and s.iterations > 1 and s.min > 0
    assert len(calls) == 1 + s.rounds * s.iterations
    s = stats.time_call(lambda: None, min_rounds=3, calibrate=False)
    assert (s.rounds, s.iterations) == (3, 1)


# ------------------------------------------------------------------- machine
def test_peak_is_measured_in_a_child_process():
    peak = machine.numpy_sgemm_peak(n=256, repeats=2)
    assert peak.gflops > 0 and math.isfinite(peak.gflops)
    assert "child process without OPENBLAS_CORETYPE" in peak.source
    fma = machine.c_fma_peak(seconds=0.05)
    if bench.runners().get("c") is True:
        assert fma.gflops > 0 and "FMA" in fma.source
    else:
        assert fma is None


def test_child_env_drops_the_openblas_overrides_and_leaves_the_parent_alone():
    parent = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "HOME": "/root"}
    child = machine.child_env(env=parent)
    assert "OPENBLAS_CORETYPE" not in child and "OPENBLAS_L2_SIZE" not in child
    assert child["HOME"] == "/root" and "PYTHONPATH" in child
    assert parent["OPENBLAS_CORETYPE"] == "Haswell"
    kept = machine.child_env(strip_openblas=False, env=parent)
    assert kept["OPENBLAS_CORETYPE"] == "Haswell"


def test_openblas_warning_names_the_variables_and_the_kernels():
    env = {"OPENBLAS_CORETYPE": "Haswell"}
    text = machine.openblas_warning("Haswell", "SkylakeX", env)
    assert "OPENBLAS_CORETYPE=Haswell" in text and "SkylakeX" in text
    assert "OPENBLAS_L2_SIZE" in machine.openblas_warning("Zen", "Zen", {"OPENBLAS_L2_SIZE": "1"})
    assert machine.openblas_warning("SkylakeX", "SkylakeX", {}) is None


def test_the_best_peak_probe_wins_and_a_broken_one_is_recorded():
    def broken():
        raise OSError("no such probe")
    best, results = machine.measure_peak({
        "slow": lambda: machine.Peak(10.0, "slow"), "fast": lambda: machine.Peak(20.0, "fast"),
        "absent": lambda: None, "broken": broken})
    assert best.gflops == 20.0 and best.source == "fast"
    assert [r["probe"] for r in results] == ["slow", "fast", "broken"]
    assert "no such probe" in results[-1]["error"]


@pytest.mark.parametrize("vendor, family, llvm, features, expected", [
    ("AuthenticAMD", "25", "znver4", ["avx2", "fma", "avx512f"], 32),
    ("AuthenticAMD", "26", "znver5", ["avx2", "fma", "avx512f"], 64),
    ("GenuineIntel", "6", "sapphirerapids", ["avx2", "fma", "avx512f"], 64),
    ("AuthenticAMD", "25", "znver3", ["avx", "avx2", "fma"], 32),
    ("GenuineIntel", "6", "sandybridge", ["avx"], 16),
])
def test_flops_per_cycle(vendor, family, llvm, features, expected):
    assert machine.flops_per_cycle(vendor, family, llvm, features)[0] == expected


def test_bench_does_not_import_the_cli():
    code = ("import sys, fastsgd.bench; assert not [m for m in sys.modules if m == 'fastsgd.cli' "
            "or m.startswith('fastsgd.commands')], 'imports the command'")
    done = subprocess.run([sys.executable, "-c", code], env=machine.child_env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------- rows
def test_a_row_faster_than_the_peak_is_flagged_in_the_row_and_the_table(capsys):
    case = bench.select_cases(["matmul"], [64])[0]
    row = run._row(case, "numpy")
    row.update(stats.Stats((1e-6,) * 5).as_dict())
    fake = {"peak_gflops": 1.0}
    row = run._finish(row, case, fake)
    assert row["pct_peak"] > 100 and row["flags"] == ["over_peak"]
    report.print_table([row])
    out = capsys.readouterr().out
    assert "%!" in out and "above the measured peak" in out


def test_parse_errors_are_value_errors_about_values():
    for call, name in ((lambda: bench.parse_sizes("huge"), "sizes"),
                       (lambda: bench.parse_sizes("0"), "sizes"),
                       (lambda: bench.parse_kernels("nope"), "kernels"),
                       (lambda: bench.parse_kernels("matmul,"), "kernels"),
                       (lambda: bench.parse_backends("nope"), "backends"),
                       (lambda: bench.parse_options(epochs=0), "epochs"),
                       (lambda: bench.parse_options(budget=-1.0), "budget"),
                       (lambda: bench.parse_options(data="/no/such/folder"), "data"),
                       (lambda: bench.parse_options(kernels="epoch", sizes="large"), "sizes")):
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(f"{name}: ")
    assert bench.parse_sizes("64,small") == [64, "small"]
    assert bench.parse_kernels("matmul*") == list(bench.KERNEL_NAMES[:3])
    assert bench.parse_backends("numpy") == ["numpy"]


@pytest.mark.parametrize("args, words", [
    (["--kernels", "nope"], "--kernels: no kernel matches"),
    (["--kernels", "matmul,"], "--kernels: expected a comma-separated list"),
    (["--backends", "nope"], "--backends: unknown backend"),
    (["--sizes", "0"], "--sizes: batch size must lie"),
    (["--sizes", "huge"], "--sizes: expected batch sizes"),
    (["--sizes", "large", "--kernels", "epoch"], "--sizes: large selects no case"),
    (["--kernels", "epoch", "--sizes", "256", "--samples", "100"], "--samples: 100 is fewer"),
    (["--data", "/no/such/folder"], "--data: /no/such/folder is not a folder"),
    (["--epochs", "0"], "--epochs"),
    (["--frobnicate"], "unrecognized"),
])
def test_bench_bad_options_exit_2_with_one_line_naming_the_flag(args, words, capsys):
    assert main(["bench", "--no-progress", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err


def test_bench_unavailable_backend_is_a_usage_error(capsys):
    missing = [n for n, s in bench.runners(include_unavailable=True).items() if s is not True]
    if not missing:
        pytest.skip("every backend and peer is available here")
    assert main(["bench", "--backends", missing[0], "--no-progress"]) == 2
    assert "unavailable" in capsys.readouterr().err


# ------------------------------------------------------------------- kernels
@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    """``fastsgd bench --kernels relu_forward,matmul --sizes 64 --json`` on numpy and numba."""
    path = tmp_path_factory.mktemp("bench") / "out.json"
    backends = ",".join(usable("numpy", "numba"))
    code = main(["bench", "--kernels", "matmul,relu_forward", "--sizes", "64",
                 "--backends", backends, "--json", str(path), *FAST])
    return code, json.loads(path.read_text()), backends.split(",")


def test_bench_json_rows_carry_their_statistics(bench_json):
    code, result, backends = bench_json
    assert code == 0 and set(result) == {"machine", "rows"}
    rows = result["rows"]
    assert all(set(report.ROW_FIELDS) <= set(r) for r in rows)
    groups = {r["group"] for r in rows}
    assert groups == {"matmul 64x784x30", "matmul 64x30x1", "matmul 64x784x128",
                      "matmul 64x128x10", "relu_forward 64x30", "relu_forward 64x128"}
    assert sorted((r["group"], r["backend"]) for r in rows) == sorted(
        (g, b) for g in groups for b in backends)
    for r in rows:
        assert r["status"] == "ok" and r["device"] == "cpu"
        assert 0 < r["min_s"] <= r["p10_s"] <= r["median_s"] <= r["p90_s"] <= r["max_s"]
        assert r["q1_s"] <= r["median_s"] <= r["q3_s"] and r["rounds"] >= 5
        assert r["spread"] == pytest.approx(r["p90_s"] / r["p10_s"])
        assert set(r["flags"]) <= {"wide", "stalled", "over_peak"}
        assert r["unit"] == ("GFLOP/s" if r["kernel"] == "matmul" else "GB/s")
        assert r["max_error"] < 1e-4 and r["speedup_vs_numpy"] > 0
        if r["kernel"] == "matmul":   # % of the measured peak: at most 100, or flagged
            assert r["pct_peak"] > 0
            assert r["pct_peak"] <= 100 or "over_peak" in r["flags"]
        else:
            assert r["pct_peak"] is None
    assert all(r["speedup_vs_numpy"] == 1.0 for r in rows if r["backend"] == "numpy")


def test_bench_json_machine_says_where_the_peak_comes_from(bench_json):
    info = bench_json[1]["machine"]
    assert info["peak_gflops"] > 0 and info["peak_source"].startswith("measured: ")
    probes = {p["probe"]: p for p in info["peak_probes"]}
    assert probes["numpy-sgemm"]["gflops"] > 0
    assert info["peak_gflops"] == max(p.get("gflops", 0) for p in probes.values())
    if bench.runners().get("c") is True:   # the C extension's FMA loop
        assert probes["c-fma"]["gflops"] > 0 and "FMA" in probes["c-fma"]["source"]
    assert info["clock_ghz_estimate"] > 0 and info["flops_per_cycle"] >= 8
    assert info["bandwidth_gbs"] > 0 and info["cores"] >= 1 and info["numpy"] == np.__version__
    assert info["isa"] in ("avx512", "avx2", "avx", "neon", "sse")


def test_bench_prints_the_statistics_columns(capsys):
    code = main(["bench", "--kernels", "sgd_update", "--sizes", "64", "--backends", "numpy", *FAST])
    out = capsys.readouterr().out
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("kernel"))
    for column in ("median", "min", "p10-p90", "rounds", "rate", "% peak", "vs numpy"):
        assert column in header
    assert "peak:" in out and "GFLOP/s" in out and "GB/s" in out and "load average" in out
    assert sum(line.startswith("sgd_update") for line in out.splitlines()) == 2


def test_bench_reports_a_mismatch_and_exits_1(monkeypatch, capsys):
    def wrong(case, runner, validate=True):
        raise bench.ValidationError(f"{case.group} on {runner}: differs")
    monkeypatch.setattr(run, "prepare", wrong)
    assert main(["bench", "--kernels", "relu_forward", "--sizes", "64", "--backends", "numpy",
                 *FAST]) == 1
    assert "MISMATCH" in capsys.readouterr().out


def test_every_case_validates_on_the_reference_shapes():
    """Each kernel's smallest case runs and matches on numpy (the others: benchmarks/)."""
    seen = set()
    for case in bench.select_cases(sizes=[2]):
        if case.kernel in seen or case.kernel == "epoch":
            continue
        seen.add(case.kernel)
        job = bench.prepare(case, "numpy")
        assert job.max_error < 1e-5
        with bench.timing("numpy"):
            assert bench.time_call(job.fn, budget=0.0, min_rounds=2).median > 0
    assert seen == set(bench.KERNEL_NAMES) - {"epoch"}


def test_a_wrong_kernel_result_is_a_validation_error():
    case = bench.select_cases(["relu_forward"], [2])[0]
    _, _, expected, tol = bench.kernel_data(case)
    assert cases.check(case, "numpy", expected, expected, tol) == 0.0
    with pytest.raises(bench.ValidationError, match="differs from the reference"):
        cases.check(case, "numpy", expected + 1.0, expected, tol)
    with pytest.raises(bench.ValidationError, match="shape"):
        cases.check(case, "numpy", expected[:1], expected, tol)


# -------------------------------------------------------------------- epochs
def test_epoch_trainers_agree_with_the_reference_here():
    for runner in usable("numpy", "c", "numba"):
        assert epochs.validate(runner, 64, samples=256) <= epochs.STEP_RTOL


@pytest.mark.parametrize("peer", ["torch", "jax.jit", "jax.scan"])
def test_peers_train_the_same_epoch(peer):
    status = bench.runners(include_unavailable=True)[peer]
    if status is not True:
        pytest.skip(f"{peer}: {status}")
    assert epochs.validate(peer, 64, samples=256) <= epochs.STEP_RTOL


def test_compare_catches_a_wrong_step_and_a_wrong_epoch():
    ref = {"train_loss": 2.0, "valid_loss": 1.9, "step_losses": [2.3, 2.2, 2.1]}
    assert epochs.compare("x", dict(ref), ref) == 0.0
    with pytest.raises(bench.ValidationError, match="step 1"):
        epochs.compare("x", {**ref, "step_losses": [2.3, 2.25, 2.1]}, ref)
    with pytest.raises(bench.ValidationError, match="held-out loss"):
        epochs.compare("x", {**ref, "valid_loss": 2.1}, ref)
    with pytest.raises(bench.ValidationError, match="mean training loss"):
        epochs.compare("x", {**ref, "train_loss": float("nan")}, ref)


def test_epoch_rows_run_in_their_own_processes(tmp_path):
    names = ",".join(usable("numpy", "c"))
    rows = bench.run_bench(kernels="epoch", sizes="64", backends=names, samples=256, epochs=1,
                           progress=False, json_path=tmp_path / "epochs.json")
    assert [r["backend"] for r in rows] == names.split(",")
    for r in rows:
        assert r["status"] == "ok", r["status"]
        assert r["kernel"] == "epoch" and r["samples"] == 256 and r["rounds"] >= 1
        assert r["max_error"] <= epochs.STEP_RTOL and len(r["step_losses"]) == 4
        assert r["first_epoch_s"] > 0 and r["compile_s"] >= 0 and math.isfinite(r["train_loss"])
        assert r["pct_peak"] <= 100 or "over_peak" in r["flags"]
    saved = json.loads((tmp_path / "epochs.json").read_text())
    assert saved["rows"][0]["step_losses"] == rows[0]["step_losses"]


def test_the_runners_timed_epochs_are_taken_in_turn():
    names = usable("numpy", "c")
    specs = [epochs.EpochSpec(name, 64, samples=256, epochs=3, retry=False) for name in names]
    results = lockstep.run_interleaved(specs)
    starts = [results[name]["epoch_started_s"] for name in names]
    assert all(len(s) == 3 and results[n]["rounds"] == 3 for s, n in zip(starts, names))
    for i in range(2):   # every runner's epoch i starts before anyone's epoch i + 1
        assert max(s[i] for s in starts) < min(s[i + 1] for s in starts)
    if len(names) == 2:  # and each round starts one runner further on
        assert starts[0][0] < starts[1][0] and starts[1][1] < starts[0][1]
    for name in names:
        assert math.isfinite(results[name]["train_loss"]) and len(results[name]["step_losses"]) == 4


def test_a_runner_that_fails_ends_its_row_not_the_others():
    specs = [epochs.EpochSpec(name, 64, samples=256, epochs=1) for name in ("numpy", "nonesuch")]
    results = lockstep.run_interleaved(specs)
    assert results["numpy"]["rounds"] == 1
    assert isinstance(results["nonesuch"], RuntimeError)
    assert "nonesuch" in str(results["nonesuch"]) and "exited with code" in str(results["nonesuch"])


def test_the_epoch_server_answers_each_request_with_one_timed_epoch():
    import io
    out = io.StringIO()
    spec = epochs.EpochSpec("numpy", 64, samples=128, epochs=1)
    assert lockstep.serve(spec, io.StringIO("epoch\nepoch\nquit\nepoch\n"), out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("@epoch-ready ")
    ready = json.loads(lines[0].split(" ", 1)[1])
    assert len(ready["step_losses"]) == 2 and ready["first_epoch_s"] > 0
    for line in lines[1:]:
        assert line.startswith("@epoch-time ") and json.loads(line.split(" ", 1)[1])["seconds"] > 0


def test_epoch_data_is_learnable_and_the_same_everywhere():
    data = epochs.load_data(512)
    again = epochs.load_data.__wrapped__(512)
    assert np.array_equal(data.x, again.x) and np.array_equal(data.y, again.y)
    assert data.x.shape == (512, 784) and data.vx.shape == (cases.EPOCH_VALID, 784)
    assert data.y.dtype == np.int64 and len(np.unique(data.y)) == 10
    weights = epochs.initial_weights()
    assert [w.shape for w in weights] == [(784, 128), (128,), (128, 10), (10,)]


def test_epoch_data_from_an_mnist_folder(tmp_path):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=300, n_valid=100, seed=0)
    data = epochs.load_data.__wrapped__(200, str(folder))
    assert data.x.shape == (200, 784) and data.x.dtype == np.float32
    with pytest.raises(ValueError, match="data: "):
        epochs.load_data.__wrapped__(1000, str(folder))


# --------------------------------------------------------------------- plots
@needs_matplotlib
def test_bench_plot_writes_a_png(tmp_path):
    path = tmp_path / "speedups.png"
    code = main(["bench", "--kernels", "relu_forward", "--sizes", "64",
                 "--backends", ",".join(usable("numpy", "numba")), "--plot", str(path), *FAST])
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
    monkeypatch.setitem(sys.modules, "matplotlib", None)   # import fails
    assert main(["bench", "--kernels", "relu_forward", "--sizes", "64", "--backends", "numpy",
                 "--plot", str(tmp_path / "p.png"), "--no-progress"]) == 2
    assert main(["train", "--plot", str(tmp_path / "l.png"), "--no-progress"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and all("pip install 'fastsgd[plot]'" in e for e in errors)


def test_a_second_peak_measurement_keeps_the_best(monkeypatch):
    info = {"peak_gflops": 10.0, "peak_source": "measured: first", "peak_measurements": [10.0],
            "peak_measured_at": 0.0, "cores": 2, "flops_per_cycle": 32}
    monkeypatch.setattr(machine, "measure_peak",
                        lambda: (machine.Peak(20.0, "second"), [{"probe": "p", "gflops": 20.0}]))
    machine.remeasure_peak(info)
    assert info["peak_gflops"] == 20.0 and info["peak_measurements"] == [10.0, 20.0]
    assert info["peak_source"] == "measured: second [the best of 2 measurements]"
    assert info["clock_ghz_estimate"] == pytest.approx(20.0 / 64)
    monkeypatch.setattr(machine, "measure_peak", lambda: (machine.Peak(5.0, "third"), []))
    machine.remeasure_peak(info, after_s=0.0)
    assert info["peak_gflops"] == 20.0 and info["peak_measurements"][-1] == 5.0
    before = dict(info)
    machine.remeasure_peak(info)   # measured a moment ago: nothing to do
    assert info == before
