"""Progress bars on both paths, none when asked or off a terminal, and the numba compile note."""
import io
import sys
import time

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends
from fastsgd.cli import main

from .helpers import separable
from .mnist_fixtures import make_mnist_folder

NOTE = "compiling numba kernels (first run only) ..."


def learner(progress, backend="numpy", fused=True, metrics=(fs.batch_accuracy,), show=False):
    """200 training rows in batches of 32 (7 steps), 100 to validate."""
    x, y = separable(n=300)
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(x[100:], y[100:], x[:100], y[:100], bs=32, seed=0)
    return fs.Learner(dls, fs.simple_net(20, 8, 1), fs.mnist_loss, fs.SGD(0.5), list(metrics),
                      backend=backend, show=show, progress=progress, fused=fused)


def test_the_fused_path_shows_one_bar_over_the_epochs(capsys):
    learn = learner(progress=True)
    assert learn.fused is True
    learn.fit(3)
    err = capsys.readouterr().err
    assert "fit:" in err and "0/3" in err and "3/3" in err and "epoch/s" in err
    assert "<" in err                                  # elapsed<remaining: the time estimate
    assert "valid_loss=" in err
    assert "batch" not in err                          # a fused epoch is one call


def test_the_layer_path_also_shows_a_bar_over_each_epochs_batches(capsys):
    learn = learner(progress=True, fused=False)
    learn.fit(2)
    err = capsys.readouterr().err
    assert "fit:" in err and "2/2" in err
    assert "epoch 0:" in err and "epoch 1:" in err and "/7" in err and "batch/s" in err


def test_bars_go_to_the_stream_given(capsys):
    stream = io.StringIO()
    learn = learner(progress=False)
    learn.fit(2, cbs=[fs.ProgressCallback(file=stream)])
    assert "2/2" in stream.getvalue()
    assert capsys.readouterr().err == ""


def test_no_bars_when_turned_off_or_off_a_terminal(capsys, monkeypatch):
    learner(progress=False).fit(2)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    learn = learner(progress=None)
    assert learn.progress is False
    learn.fit(2)
    assert capsys.readouterr().err == ""


def test_the_table_reads_the_same_with_bars_on(capsys):
    tables = []
    for progress in (False, True):
        learner(progress=progress, show=True).fit(2)
        out = capsys.readouterr().out.splitlines()
        tables.append([line.split()[:-1] for line in out])   # all but the time column
    assert tables[0] == tables[1]
    assert tables[0][0] == ["epoch", "train_loss", "valid_loss", "batch_accuracy"]
    assert [row[0] for row in tables[0][1:]] == ["0", "1"]


def test_the_command_with_no_progress_writes_nothing_to_stderr(tmp_path, capsys):
    folder = make_mnist_folder(tmp_path, n_train=300, n_valid=100, seed=0)
    assert main(["train", "--no-progress", "--data", str(folder), "--epochs", "2",
                 "--backend", "numpy"]) == 0
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ compile note
numba_only = pytest.mark.skipif(backends.available().get("numba") is not True,
                                reason=f"numba unavailable: {backends.available().get('numba')}")


def fresh_metric():
    """A metric calling a just-made numba function: its first call compiles it."""
    from numba import njit

    @njit
    def total(values):
        result = 0.0
        for v in values:
            result += v
        return result

    def zero(preds, targets, kernels):
        return 0.0 * total(np.asarray(preds, np.float64).reshape(-1))

    return zero


@numba_only
def test_a_note_while_numba_compiles_and_the_time_kept_apart(capsys):
    learn = learner(progress=False, backend="numba", metrics=[fresh_metric()], show=True)
    t0 = time.perf_counter()
    learn.fit(2)
    wall = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert err.count(NOTE) == 1
    compiled = learn.recorder.compile_seconds
    assert compiled > 0
    seconds = sum(row["seconds"] for row in learn.recorder.history)
    assert seconds + compiled <= wall         # each epoch's time leaves the compile time out
    assert set(learn.recorder.history[0]) == {"epoch", "train_loss", "valid_loss", "zero",
                                              "seconds"}
    learn.fit(1)                              # compiled now: no note, no more compile time
    assert NOTE not in capsys.readouterr().err
    assert learn.recorder.compile_seconds == compiled


@numba_only
def test_no_note_from_a_quiet_learner_or_when_nothing_compiles(capsys):
    learn = learner(progress=False, backend="numba", metrics=[fresh_metric()], show=False)
    learn.fit(1)
    assert capsys.readouterr().err == "" and learn.recorder.compile_seconds > 0
    loud = learner(progress=False, backend="numba", show=True)
    loud.fit(1)                               # the training kernels: compiled, cached or new
    loud.fit(1)
    assert capsys.readouterr().err.count(NOTE) == (1 if loud.recorder.compile_seconds > 0 else 0)
