"""Callbacks: events in order on both paths, cancelling, early stopping, saving the best."""
import numpy as np
import pytest

import fastsgd as fs

from .helpers import make_learner, separable

PATHS = [pytest.param(True, id="fused"), pytest.param(False, id="layered")]


def learner(fused=True, cbs=()):
    """A small binary Learner: 200 training rows in batches of 32 (7 steps), 100 to validate."""
    x, y = separable(n=300)
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(x[100:], y[100:], x[:100], y[:100], bs=32, seed=0)
    return fs.Learner(dls, fs.simple_net(20, 16, 1), fs.mnist_loss, fs.SGD(0.5), [fs.batch_accuracy],
                      backend="numpy", show=False, fused=fused, cbs=cbs)


def weights(learn):
    return [learn.backend.to_numpy(p.value).copy() for p in learn.model.parameters()]


class Log(fs.Callback):
    """Writes (name, event, epoch) to a shared list."""

    def __init__(self, name, order, log):
        self.label, self.order, self.log = name, order, log

    def before_fit(self):
        self.log.append((self.label, "before_fit", self.learn.epoch, self.learn.n_epochs))

    def before_epoch(self):
        self.log.append((self.label, "before_epoch", self.learn.epoch))

    def after_epoch(self):
        self.log.append((self.label, "after_epoch", self.learn.last_row["epoch"]))

    def after_fit(self):
        self.log.append((self.label, "after_fit", self.learn.epoch))


class CountBatches(fs.Callback):
    def __init__(self):
        self.steps = []

    def after_batch(self):
        self.steps.append((self.learn.epoch, self.learn.iter, self.learn.loss))


class Snapshots(fs.Callback):
    """The weights at the end of each epoch, by epoch number."""
    order = 50

    def __init__(self):
        self.at = {}

    def after_epoch(self):
        self.at[self.learn.last_row["epoch"]] = weights(self.learn)


class Raise(fs.Callback):
    """Raises ``exception`` in ``event`` when ``when(learn)`` holds."""

    def __init__(self, event, exception, when):
        setattr(self, event, self._maybe_raise)
        self.exception, self.when, self.after_fit_ran = exception, when, False

    def _maybe_raise(self):
        if self.when(self.learn):
            raise self.exception

    def after_fit(self):
        self.after_fit_ran = True


# --------------------------------------------------------------------- events
@pytest.mark.parametrize("fused", PATHS)
def test_callbacks_run_in_order_on_both_paths(fused):
    log = []
    late, early, middle = Log("late", 7, log), Log("early", -3, log), Log("middle", 0, log)
    learn = learner(fused, cbs=[late])
    learn.fit(2, cbs=[middle, early])
    assert learn.fused == (True if fused else "turned off")
    order = ["early", "middle", "late"]
    expected = [(name, "before_fit", 0, 2) for name in order]
    for epoch in (0, 1):
        expected += [(name, "before_epoch", epoch) for name in order]
        expected += [(name, "after_epoch", epoch) for name in order]
    expected += [(name, "after_fit", 2) for name in order]
    assert log == expected
    log.clear()
    learn.fit(1)  # fit's callbacks were for that fit only; the Learner's stay
    assert [entry[:2] for entry in log] == [("late", "before_fit"), ("late", "before_epoch"),
                                            ("late", "after_epoch"), ("late", "after_fit")]


def test_a_callback_of_the_default_order_sees_the_row_recorded():
    seen = []

    class Look(fs.Callback):
        def after_epoch(self):
            learn = self.learn
            seen.append((learn.recorder.history[-1] is learn.last_row, sorted(learn.last_row),
                         len(learn.lrs)))

    learn = learner()
    learn.fit(1, cbs=[Look()])
    assert seen == [(True, ["batch_accuracy", "epoch", "seconds", "train_loss", "valid_loss"], 7)]


def test_an_after_batch_callback_turns_fusion_off_and_says_which():
    counter = CountBatches()
    learn = learner(True, cbs=[counter])
    assert learn.fused == "callback CountBatches needs after_batch"
    learn.fit(2)
    steps = len(learn.dls.train)
    assert [(e, i) for e, i, _ in counter.steps] == [(e, i) for e in (0, 1) for i in range(steps)]
    assert [loss for _, _, loss in counter.steps] == learn.recorder.losses
    plain = learner(True)  # the same training, fused
    plain.fit(2)
    assert plain.fused is True
    np.testing.assert_allclose(plain.recorder.losses, learn.recorder.losses, rtol=1e-5)
    for a, b in zip(weights(plain), weights(learn)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_an_after_batch_callback_of_one_fit_turns_fusion_off_for_that_fit_only():
    during = []

    class Path(fs.Callback):
        def before_epoch(self):
            during.append(self.learn.fused)

    counter = CountBatches()
    learn = learner(True)
    learn.fit(1, cbs=[counter, Path()])
    assert during == ["callback CountBatches needs after_batch"]
    assert len(counter.steps) == len(learn.dls.train)
    assert learn.fused is True
    learn.fit(1, cbs=[Path()])
    assert during[-1] is True


def test_callbacks_must_be_callbacks():
    with pytest.raises(TypeError, match="cbs: expected fastsgd.Callback"):
        learner(cbs=[object()])
    learn = learner()
    with pytest.raises(TypeError, match="cbs: expected fastsgd.Callback"):
        learn.fit(1, cbs=[print])
    learn.fit(1, cbs=CountBatches())  # one callback alone is fine
    assert len(learn.recorder.history) == 1


# ----------------------------------------------------------------- cancelling
@pytest.mark.parametrize("fused", PATHS)
def test_cancel_fit_after_an_epoch_ends_the_fit_and_keeps_the_history(fused):
    stop = Raise("after_epoch", fs.CancelFitException(), lambda learn: learn.epoch == 1)
    learn = learner(fused)
    history = learn.fit(5, cbs=[stop])
    assert [row["epoch"] for row in history] == [0, 1]
    assert learn.recorder.history == history
    assert stop.after_fit_ran and learn.epoch == 2
    assert len(learn.recorder.losses) == 2 * len(learn.dls.train)
    assert [row["epoch"] for row in learn.fit(1)] == [2]  # the next fit goes on from there


def test_cancel_fit_in_the_middle_of_a_layered_epoch():
    stop = Raise("after_batch", fs.CancelFitException(),
                 lambda learn: learn.epoch == 1 and learn.iter == 3)
    learn = learner(True)
    history = learn.fit(4, cbs=[stop])
    assert [row["epoch"] for row in history] == [0]
    assert stop.after_fit_ran
    assert len(learn.recorder.losses) == len(learn.dls.train)  # the recorded epoch's steps


def test_cancel_epoch_in_before_epoch_skips_a_fused_epoch_entirely():
    snapshots = Snapshots()
    at_start = {}

    class Start(fs.Callback):
        def before_epoch(self):
            at_start[self.learn.epoch] = weights(self.learn)

    skip = Raise("before_epoch", fs.CancelEpochException(), lambda learn: learn.epoch == 1)
    learn = learner(True)
    history = learn.fit(3, cbs=[Start(), skip, snapshots])
    assert [row["epoch"] for row in history] == [0, 2]
    assert sorted(snapshots.at) == [0, 2]
    for a, b in zip(snapshots.at[0], at_start[2]):  # epoch 1 trained nothing
        np.testing.assert_array_equal(a, b)
    assert len(learn.recorder.losses) == 2 * len(learn.dls.train)


def test_cancel_epoch_in_after_batch_skips_the_rest_of_a_layered_epoch():
    skip = Raise("after_batch", fs.CancelEpochException(), lambda learn: learn.iter == 1)
    counter = CountBatches()
    learn = learner(True)
    history = learn.fit(3, cbs=[skip, counter])
    assert history == [] and learn.epoch == 3
    assert [(e, i) for e, i, _ in counter.steps] == [(0, 0), (1, 0), (2, 0)]  # counter runs later


# -------------------------------------------------------------- early stopping
def flipped(n=300, seed=0):
    """Validation rows are training rows with the opposite label: the better the fit,
    the worse the validation loss."""
    x, y = separable(n=n, seed=seed)
    fs.set_seed(0)
    dls = fs.DataLoaders.from_arrays(x, y, x[:100], 1 - y[:100], bs=32, seed=0)
    return fs.Learner(dls, fs.simple_net(20, 8, 1), fs.mnist_loss, fs.SGD(0.5),
                      [fs.batch_accuracy], backend="numpy", show=False)


@pytest.mark.parametrize("fused", PATHS)
def test_early_stopping_stops_a_run_whose_valid_loss_stops_improving(fused):
    learn = flipped()
    learn.fused = fused
    stopper = fs.EarlyStopping(patience=2)
    history = learn.fit(20, cbs=[stopper])
    valid = [row["valid_loss"] for row in history]
    assert valid[1] > valid[0] and valid[2] > valid[0]  # the run this test is about
    assert len(history) == 3 and learn.epoch == 3
    assert (stopper.best_epoch, stopper.stopped_epoch) == (0, 2)
    assert stopper.best == valid[0]


def test_early_stopping_lets_an_improving_run_finish_and_starts_afresh_each_fit():
    learn = learner()
    stopper = fs.EarlyStopping(patience=1)
    learn.cbs.append(stopper)
    history = learn.fit(5)
    assert all(b["valid_loss"] < a["valid_loss"] for a, b in zip(history, history[1:]))
    assert len(history) == 5 and stopper.stopped_epoch is None and stopper.best_epoch == 4
    assert len(learn.fit(2)) == 2 and stopper.best_epoch == 6   # a fresh best each fit


def test_early_stopping_min_delta_and_max_mode():
    learn = learner()
    history = learn.fit(10, cbs=[fs.EarlyStopping(patience=2, min_delta=1.0)])
    assert len(history) == 3       # nothing improves by 1.0 on the first epoch
    always_right = fs.EarlyStopping(patience=2, monitor="batch_accuracy")
    assert always_right.mode == "max"
    learner().fit(3, cbs=[always_right])
    assert always_right.best == max(row["batch_accuracy"] for row in always_right.learn.recorder.history)


def test_early_stopping_restores_the_best_weights_only_when_asked():
    for restore in (False, True):
        learn = flipped()
        snapshots = Snapshots()
        snapshots.order = 1     # before EarlyStopping, which ends the fit in its after_epoch
        learn.fit(20, cbs=[fs.EarlyStopping(patience=2, restore_best=restore), snapshots])
        want = snapshots.at[0] if restore else snapshots.at[2]
        for a, b in zip(weights(learn), want):
            np.testing.assert_array_equal(a, b)


def test_monitors_reject_bad_settings_and_unknown_columns():
    assert fs.EarlyStopping().mode == "min" and fs.SaveBest("x.npz").mode == "min"
    assert fs.SaveBest("x.npz", monitor="batch_accuracy").mode == "max"
    assert fs.SaveBest("x.npz", monitor="valid_loss", mode="max").mode == "max"
    with pytest.raises(ValueError, match="mode: expected 'min' or 'max'"):
        fs.EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="patience: expected a positive integer"):
        fs.EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        fs.EarlyStopping(min_delta=-1)
    learn = learner()
    with pytest.raises(ValueError, match="monitor 'f1' is not a column.*valid_loss, batch_accuracy"):
        learn.fit(1, cbs=[fs.EarlyStopping(monitor="f1")])


# ------------------------------------------------------------------ save best
def stored_weights(path):
    return [np.asarray(p.value) for p in fs.load_model(path).parameters()]


@pytest.mark.parametrize("fused", PATHS)
def test_save_best_keeps_the_best_epochs_weights_on_disk(tmp_path, fused):
    scores = [0.5, 0.8, 0.7, 0.9, 0.6]

    def scripted_accuracy(preds, targets, kernels):
        return scores[learn.epoch]

    x, y = separable(n=300)
    learn = make_learner("numpy", x, y)
    learn.fused = fused
    learn.metrics = [scripted_accuracy]
    path = tmp_path / "best.npz"
    saver, snapshots = fs.SaveBest(path, monitor="scripted_accuracy"), Snapshots()
    assert saver.mode == "max"
    learn.fit(5, cbs=[saver, snapshots])
    assert (saver.best, saver.best_epoch) == (0.9, 3)
    for a, b in zip(stored_weights(path), snapshots.at[3]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(snapshots.at[3][0], snapshots.at[4][0])


def test_save_best_on_valid_loss_keeps_the_first_epoch_of_a_worsening_run(tmp_path):
    learn, snapshots = flipped(), Snapshots()
    saver = fs.SaveBest(tmp_path / "best.npz")
    learn.fit(4, cbs=[saver, snapshots])
    assert saver.best_epoch == 0
    for a, b in zip(stored_weights(tmp_path / "best.npz"), snapshots.at[0]):
        np.testing.assert_array_equal(a, b)
