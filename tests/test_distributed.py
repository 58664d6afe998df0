"""Data-parallel training (fastsgd.distributed): the pieces in one process, a world of
threads standing in for MPI ranks, and real ``mpiexec -n 2`` jobs of ``fastsgd train``
(skipped when mpi4py or Open MPI's mpiexec is missing)."""
import importlib.util
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import data, distributed
from fastsgd import fused as fused_path

from .mnist_fixtures import make_mnist_folder, synthetic_digits, write_idx

BACKEND = "numpy"


# --------------------------------------------------------------------- pieces
@pytest.mark.parametrize("rows", [1, 2, 5, 31, 64, 65])
@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_batch_share_splits_evenly_and_weights_sum_the_mean(rows, size):
    rng = np.random.default_rng(rows * 10 + size)
    values = rng.normal(size=(rows, 3))
    parts = [distributed.batch_share(rows, rank, size) for rank in range(size)]
    covered = np.concatenate([np.arange(rows)[part] for part, _ in parts])
    assert np.array_equal(covered, np.arange(rows))
    lengths = [part.stop - part.start for part, _ in parts]
    assert max(lengths) - min(lengths) <= 1
    assert sum(weight for _, weight in parts) == pytest.approx(1.0)
    weighted = sum(weight * values[part].mean(axis=0) for part, weight in parts if weight)
    np.testing.assert_allclose(weighted, values.mean(axis=0), rtol=1e-12, atol=1e-12)


def _digits(n, seed=0):
    images, labels = synthetic_digits(n, seed=seed)
    return images.reshape(n, -1).astype(np.float32) / 255, labels.astype(np.int64)


def _model(seed=0, hidden=16):
    fs.set_seed(seed)
    return fs.Sequential(fs.Linear(784, hidden), fs.ReLU(), fs.Linear(hidden, 10))


def _learner(dls, model, dist=None, backend=BACKEND, momentum=0.9, wd=1e-3):
    return fs.Learner(dls, model, fs.cross_entropy, fs.SGD(0.1, momentum, wd),
                      [fs.batch_accuracy], backend=backend, show=False, progress=False,
                      distributed=dist)


def _compiled_backends():
    return [name for name, ok in fs.backends.available().items() if ok is True and name != "cuda"]


@pytest.mark.parametrize("backend", _compiled_backends())
def test_a_zero_rate_step_gives_the_gradient_and_leaves_the_weights(backend):
    x, y = _digits(40)
    dls = fs.DataLoaders.from_arrays(x, y, x, y, bs=40, seed=0)
    learn = _learner(dls, _model(), backend=backend)
    program = fused_path.plan(learn.model, learn.loss_func, learn.opt, learn.dls.train)
    before = program.params.copy()
    rows = np.arange(3, 40, 2, dtype=np.int64)
    grads = np.zeros_like(program.grads)
    loss = distributed._Steps(program, learn.dls.train, 40).run(rows, 0.0, grads)
    assert np.array_equal(program.params, before)
    # the same gradient layer by layer
    preds = learn.model.forward(learn.dls.train.x[rows])
    expected_loss = learn.loss_func(preds, learn.dls.train.y[rows], learn.backend)
    learn.model.backward(learn.loss_func.backward(preds, learn.dls.train.y[rows], learn.backend))
    layer_grads = np.concatenate([np.asarray(p.grad).reshape(-1) for p in learn.model.parameters()])
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grads, layer_grads, rtol=1e-4, atol=1e-6)


# ------------------------------------------------------------ a world of threads
class _World:
    """Collectives of ``size`` threads: each contributes, all wait, all read the result."""

    def __init__(self, size):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots = [None] * size

    def exchange(self, rank, value) -> list:
        self.slots[rank] = value
        self.barrier.wait()
        values = list(self.slots)
        self.barrier.wait()
        return values


class _Comm:
    def __init__(self, rank, size):
        self.rank, self.size = rank, size

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size


class ThreadRank(distributed.MPI):
    """A rank of a ``_World``: MPI's collectives done with a barrier."""

    def __init__(self, world, rank, sync_every=None):
        super().__init__(sync_every, comm=_Comm(rank, world.size))
        self.world = world

    def _sum(self, buf):
        values = self.world.exchange(self.rank, buf.copy())
        total = values[0].copy()
        for value in values[1:]:
            total += value
        buf[...] = total

    def _bcast(self, buf):
        buf[...] = self.world.exchange(self.rank, buf.copy())[0]

    def _allgather(self, obj):
        return self.world.exchange(self.rank, obj)

    def abort(self, code):
        raise AssertionError(f"abort({code})")


def run_ranks(size, work, sync_every=None):
    """``work(dist)`` on ``size`` thread ranks; returns their results (exceptions included)."""
    world = _World(size)
    results = [None] * size

    def run(rank):
        try:
            results[rank] = work(ThreadRank(world, rank, sync_every))
        except BaseException as exc:          # noqa: BLE001 - handed back to the test
            results[rank] = exc
    threads = [threading.Thread(target=run, args=(rank,)) for rank in range(size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return results


def _weights(learn):
    return np.concatenate([np.asarray(p.value).reshape(-1) for p in learn.model.parameters()])


def _single(x, y, vx, vy, bs, epochs, **kwargs):
    learn = _learner(fs.DataLoaders.from_arrays(x, y, vx, vy, bs=bs, seed=3), _model(), **kwargs)
    return learn.fit(epochs), _weights(learn)


@pytest.mark.parametrize("sharded", [False, True], ids=["same-data", "sharded"])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_synchronous_ranks_train_as_one_process(size, sharded):
    x, y = _digits(251)                  # 251 rows, bs 32: a last batch of 27 rows
    vx, vy = _digits(61, seed=1)
    expected, weights = _single(x, y, vx, vy, 32, 2)
    models = [_model() for _ in range(size)]     # here: threads share the global generator

    def work(dist):
        model = models[dist.rank]
        if sharded:
            part, valid = dist.rows(len(x)), dist.rows(len(vx))
            dls = dist.dataloaders(x[part], y[part], vx[valid], vy[valid], bs=32, seed=3)
        else:
            dls = fs.DataLoaders.from_arrays(x, y, vx, vy, bs=32, seed=3)
        learn = _learner(dls, model, dist)
        return learn.fit(2), _weights(learn)

    for result in run_ranks(size, work):
        assert not isinstance(result, BaseException), result
        history, got = result
        for row, want in zip(history, expected):
            assert row["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)
            assert row["valid_loss"] == pytest.approx(want["valid_loss"], rel=1e-5)
            assert row["batch_accuracy"] == pytest.approx(want["batch_accuracy"], abs=1e-9)
        np.testing.assert_allclose(got, weights, rtol=1e-4, atol=1e-6)


def test_local_sgd_keeps_the_ranks_equal_and_learns():
    x, y = _digits(400)
    vx, vy = _digits(200, seed=1)
    expected, _ = _single(x, y, vx, vy, 32, 3)
    models = [_model(), _model(seed=1)]

    def work(dist):
        learn = _learner(fs.DataLoaders.from_arrays(x, y, vx, vy, bs=32, seed=3),
                         models[dist.rank], dist)
        return learn.fit(3), _weights(learn)

    results = run_ranks(2, work, sync_every=4)
    assert not any(isinstance(r, BaseException) for r in results), results
    (history, first), (_, second) = results
    assert np.array_equal(first, second)
    assert history[-1]["batch_accuracy"] >= expected[-1]["batch_accuracy"] - 0.05


def test_an_error_on_one_rank_is_raised_on_every_rank_naming_it():
    def work(dist):
        with dist.agreed():
            if dist.rank == 1:
                raise ValueError("bad file\non rank one")
        return "no error"

    results = run_ranks(3, work)
    assert all(isinstance(r, distributed.DistributedError) for r in results), results
    assert {str(r) for r in results} == {"rank 1: bad file on rank one"}


@pytest.mark.parametrize("sync_every", [None, 3])
def test_a_failing_step_on_one_rank_stops_every_rank(monkeypatch, sync_every):
    x, y = _digits(128)
    models = [_model(), _model()]
    gather = distributed._Steps._gather   # every step gathers its rows first
    calls = {0: 0, 1: 0}

    def failing(self, rows):
        rank = int(threading.current_thread().name)
        calls[rank] += 1
        if rank == 1 and calls[rank] == 3:
            raise MemoryError("no memory for step 3")
        return gather(self, rows)
    monkeypatch.setattr(distributed._Steps, "_gather", failing)

    def work(dist):
        threading.current_thread().name = str(dist.rank)
        dls = fs.DataLoaders.from_arrays(x, y, x, y, bs=16, seed=0)
        _learner(dls, models[dist.rank], dist).fit(2)

    results = run_ranks(2, work, sync_every=sync_every)
    assert [str(r) for r in results] == ["rank 1: no memory for step 3"] * 2, results
    assert all(isinstance(r, distributed.DistributedError) for r in results)


def test_different_settings_on_the_ranks_are_refused():
    x, y = _digits(64)
    models = [_model(), _model()]

    def work(dist):
        dls = fs.DataLoaders.from_arrays(x, y, x, y, bs=16 * (dist.rank + 1), seed=0)
        return _learner(dls, models[dist.rank], dist)

    results = run_ranks(2, work)
    assert all(isinstance(r, distributed.DistributedError) for r in results), results
    assert str(results[0]) == str(results[1]) == (
        "ranks disagree on bs: 16 on rank 0; 32 on rank 1; every rank needs the same")


def test_a_setting_that_differs_names_each_value_and_its_ranks():
    settings = [{"bs": 16, "seed": 0}, {"bs": 16, "seed": 1}, {"bs": 16, "seed": 0}]
    results = run_ranks(3, lambda dist: dist.check_same(settings[dist.rank]))
    assert [str(r) for r in results] == ["ranks disagree on seed: 0 on ranks 0, 2; 1 on rank 1; "
                                         "every rank needs the same"] * 3
    assert run_ranks(2, lambda dist: dist.check_same({"bs": 16, "seed": 0})) == [None, None]


def _fit_on_ranks(sync_every=(None, None), activation=(fs.ReLU, fs.ReLU), epochs=(1, 1),
                  schedule=("constant", "constant")):
    """Fit on two thread ranks given per-rank settings; returns each rank's result."""
    x, y = _digits(64)

    def work(dist):
        rank = dist.rank
        dist.sync_every = sync_every[rank]
        fs.set_seed(0)
        model = fs.Sequential(fs.Linear(784, 8), activation[rank](), fs.Linear(8, 10))
        learn = _learner(fs.DataLoaders.from_arrays(x, y, x, y, bs=16, seed=0), model, dist)
        return learn.fit(epochs[rank], schedule=schedule[rank])

    return run_ranks(2, work)


@pytest.mark.parametrize("change, text", [
    (dict(sync_every=(None, 4)), "ranks disagree on sync_every: None on rank 0; 4 on rank 1"),
    (dict(activation=(fs.ReLU, fs.Tanh)), "ranks disagree on model: Sequential( Linear(784, 8), "
                                          "ReLU(), Linear(8, 10) ) on rank 0; Sequential( "
                                          "Linear(784, 8), Tanh(), Linear(8, 10) ) on rank 1"),
    (dict(epochs=(1, 3)), "ranks disagree on epochs: 1 on rank 0; 3 on rank 1"),
    (dict(schedule=("constant", "cosine")),
     "ranks disagree on the epoch's learning rates (the schedule): 4 steps at 0.1..0.1"),
], ids=["sync_every", "activation", "epochs", "schedule"])
def test_ranks_that_differ_in_a_setting_stop_before_the_first_step(change, text):
    results = _fit_on_ranks(**change)
    assert all(isinstance(r, distributed.DistributedError) for r in results), results
    assert str(results[0]) == str(results[1])
    assert str(results[0]).startswith(text), results[0]


def test_ranks_that_agree_on_every_setting_train():
    results = _fit_on_ranks(epochs=(2, 2), schedule=("cosine", "cosine"))
    assert [len(r) for r in results] == [2, 2], results


def test_layer_by_layer_fits_are_refused():
    x, y = _digits(64)
    models = [_model(), _model()]

    def work(dist):
        learn = _learner(fs.DataLoaders.from_arrays(x, y, x, y, bs=16, seed=0),
                         models[dist.rank], dist)
        learn.fused = False
        learn.fit(1)

    for result in run_ranks(2, work):
        assert isinstance(result, distributed.DistributedError)
        assert "fused path" in str(result)


# ------------------------------------------------------------------ row reads
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_read_idx_rows_reads_a_range(tmp_path, gz):
    images = np.random.default_rng(0).integers(0, 256, size=(50, 4, 3), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.idx.gz" if gz else "x.idx"), images, gz=gz)
    for start, stop in [(0, 0), (0, 50), (7, 19), (49, 50), (45, 1000), (60, 70)]:
        rows, n = data.read_idx_rows(path, start, stop)
        assert n == 50 and rows.dtype == np.uint8
        assert np.array_equal(rows, images[start:stop])


def test_read_idx_rows_refuses_bad_input(tmp_path):
    images = np.zeros((10, 2, 2), np.uint8)
    path = write_idx(tmp_path / "x.idx", images)
    with pytest.raises(ValueError, match="stop"):
        data.read_idx_rows(path, 5, 2)
    with pytest.raises(ValueError, match="start"):
        data.read_idx_rows(path, -1, 2)
    (tmp_path / "short.idx").write_bytes(path.read_bytes()[:-5])
    with pytest.raises(data.DataError, match="truncated"):
        data.read_idx_rows(tmp_path / "short.idx", 0, 3)
    with pytest.raises(data.DataError, match="not found"):
        data.read_idx_rows(tmp_path / "missing.idx", 0, 3)


# ------------------------------------------------------------- mpiexec jobs
def _mpiexec() -> list[str] | None:
    """The command that starts Open MPI jobs here, or None."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    path = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
    found = shutil.which("mpiexec", path=path)
    if not found:
        return None
    try:
        version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if "Open MPI" not in version.stdout + version.stderr:
        return None
    root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
    return [found, *root, "--oversubscribe"]


MPIEXEC = _mpiexec()
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpi4py or Open MPI's mpiexec missing "
                               "(pip install -e '.[mpi]')")
#: Ten digits, momentum 0.9: a run both modes and one process train alike.
TRAIN = ["--digits", "all", "--hidden", "32", "--epochs", "2", "--bs", "32", "--momentum", "0.9",
         "--backend", BACKEND, "--no-progress"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("mnist"), n_train=800, n_valid=200, gz=False)


def _job(ranks, *args, stdout=subprocess.PIPE):
    """Start ``fastsgd train --distributed ARGS`` on ``ranks`` ranks."""
    command = [*MPIEXEC, "-n", str(ranks), sys.executable, "-m", "fastsgd", "train",
               "--distributed", *args]
    return subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True,
                            errors="replace",
                            start_new_session=True)


def _finish(proc, timeout):
    """(exit code, stdout, stderr, seconds) of ``proc``; its process group is killed on timeout."""
    t0 = time.monotonic()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the job did not end within {timeout} s:\n{out}\n{err}")
    return proc.returncode, out or "", err or "", time.monotonic() - t0


def _our_lines(text):
    """fastsgd's own error lines, from where they start: Open MPI's relay of the ranks'
    output may run its notices, or a stray byte, into the start of a line."""
    found = (re.search(r"fastsgd( train)?:.*|^\s*error:.*", line) for line in text.splitlines())
    return [match.group(0).strip() for match in found if match]


@pytest.fixture(scope="module")
def single_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    code = subprocess.run([sys.executable, "-m", "fastsgd", "train", "--data", str(folder), *TRAIN,
                           "--json", str(out / "run.json"), "--save", str(out / "net.npz"),
                           "--quiet"], capture_output=True, text=True, timeout=120).returncode
    assert code == 0
    return json.loads((out / "run.json").read_text()), out / "net.npz"


@pytest.fixture(scope="module")
def sync_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("sync")
    code, stdout, stderr, _ = _finish(_job(2, "--data", str(folder), *TRAIN, "--json",
                                           str(out / "run.json"), "--save", str(out / "net.npz")),
                                      120)
    assert code == 0, stderr
    return json.loads((out / "run.json").read_text()), out / "net.npz", stdout


@needs_mpi
def test_two_ranks_train_as_one_process_with_the_global_batch(single_run, sync_run):
    (single, single_net), (sync, sync_net, stdout) = single_run, sync_run
    assert sync["settings"]["distributed"] == {"world_size": 2, "mode": "sync", "sync_every": None}
    assert sync["settings"]["n_train"] == single["settings"]["n_train"] == 800
    for mine, theirs in zip(sync["history"], single["history"]):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)
        assert abs(mine["accuracy"] - theirs["accuracy"]) <= 0.001
    for mine, theirs in zip(fs.load_model(sync_net).parameters(),
                            fs.load_model(single_net).parameters()):
        np.testing.assert_allclose(mine.value, theirs.value, rtol=1e-4, atol=1e-5)
    lines = stdout.splitlines()                                   # rank 0 alone prints
    assert sum(line.startswith("accuracy ") for line in lines) == 1
    assert sum(line.startswith("epoch ") for line in lines) == 1


@needs_mpi
def test_local_sgd_every_8_steps_is_within_a_point(folder, sync_run, tmp_path):
    code, _, stderr, _ = _finish(_job(2, "--data", str(folder), *TRAIN, "--sync-every", "8",
                                      "--json", str(tmp_path / "run.json")), 120)
    assert code == 0, stderr
    local = json.loads((tmp_path / "run.json").read_text())
    assert local["settings"]["distributed"]["mode"] == "local sgd"
    assert abs(local["accuracy"] - sync_run[0]["accuracy"]) <= 0.01


@needs_mpi
def test_a_missing_folder_ends_the_job_with_one_line(tmp_path):
    code, out, err, seconds = _finish(_job(2, "--data", str(tmp_path / "nonexistent"), *TRAIN), 30)
    assert code != 0 and seconds < 30
    lines = _our_lines(out + err)
    assert len(lines) == 1, out + err
    assert lines[0].startswith("fastsgd train: error: rank 0: ") and "nonexistent" in lines[0]


@needs_mpi
def test_a_bad_file_on_one_rank_ends_the_job(folder, tmp_path):
    """A gzip file cut at 3/4: rank 0 reads its rows, rank 1 alone finds the end missing."""
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    images = bad / "train-images-idx3-ubyte"
    packed = write_idx(bad / "train-images-idx3-ubyte.gz", data.read_idx(images)).read_bytes()
    images.unlink()
    (bad / "train-images-idx3-ubyte.gz").write_bytes(packed[:len(packed) * 3 // 4])
    code, out, err, seconds = _finish(_job(2, "--data", str(bad), *TRAIN), 30)
    assert code != 0 and seconds < 30
    lines = _our_lines(out + err)
    assert len(lines) == 1 and lines[0].startswith("fastsgd train: error: rank 1: "), out + err


@needs_mpi
def test_divergence_ends_the_job_with_one_line(folder):
    args = [a if a != "0.9" else "0" for a in TRAIN]
    code, out, err, seconds = _finish(_job(2, "--data", str(folder), *args, "--lr", "1e30"), 30)
    assert code != 0 and seconds < 30
    lines = _our_lines(out + err)
    assert len(lines) == 1 and "diverged" in lines[0], out + err


def _ranks_of(pid) -> list[int]:
    """The processes ``pid`` started (the ranks ``mpiexec`` runs)."""
    children = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


@needs_mpi
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_a_signal_to_one_rank_ends_the_job(folder, tmp_path, sig):
    printed = tmp_path / "stdout.txt"
    with open(printed, "w") as stdout:
        proc = _job(2, "--data", str(folder), *[a if a != "2" else "500" for a in TRAIN],
                    stdout=stdout)
    deadline = time.monotonic() + 60
    while "train_loss" not in printed.read_text() and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)                              # until the table's header: training
    ranks = sorted(_ranks_of(proc.pid))
    assert len(ranks) == 2 and proc.poll() is None, proc.communicate()
    os.kill(ranks[1], sig)
    code, _, err, seconds = _finish(proc, 30)
    assert code != 0 and seconds < 30
    if sig == signal.SIGINT:
        assert len(_our_lines(err)) == 1, err


def _job_each(first, second):
    """``fastsgd train --distributed`` on two ranks, rank 0 with the options ``first`` and
    rank 1 with ``second`` (an MPMD job)."""
    command = [*MPIEXEC]
    for args in (first, second):
        command += ["-n", "1", sys.executable, "-m", "fastsgd", "train", "--distributed", *args,
                    ":"]
    return subprocess.Popen(command[:-1], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, errors="replace", start_new_session=True)


@needs_mpi
@pytest.mark.parametrize("option, mine, theirs, text", [
    ("--sync-every", [], ["4"], "--sync-every: None on rank 0; 4 on rank 1"),
    ("--epochs", ["2"], ["3"], "--epochs: 2 on rank 0; 3 on rank 1"),
    ("--digits", ["7,3"], ["3,7"], "--digits: [7, 3] on rank 0; [3, 7] on rank 1"),
    ("--schedule", ["constant"], ["cosine"], "--schedule: constant on rank 0; cosine on rank 1"),
    ("--activation", ["relu"], ["tanh"], "--activation: relu on rank 0; tanh on rank 1"),
], ids=["sync-every", "epochs", "digits", "schedule", "activation"])
def test_ranks_started_with_one_option_different_end_the_job(folder, option, mine, theirs, text):
    common = ["--data", str(folder), "--hidden", "16", "--bs", "32", "--no-progress",
              "--backend", BACKEND]
    options = [[option, *mine] if mine else [], [option, *theirs]]
    if option != "--epochs":
        common += ["--epochs", "2"]
    if option != "--digits":
        common += ["--digits", "all"]
    code, out, err, seconds = _finish(_job_each(common + options[0], common + options[1]), 30)
    assert code != 0 and seconds < 10, (code, seconds, err)
    lines = _our_lines(out + err)
    assert lines == [f"fastsgd train: error: ranks disagree on {text}; every rank needs the same"], \
        out + err
