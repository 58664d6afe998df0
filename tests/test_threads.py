"""The NaN/Inf check switch belongs to one thread: Learners fitting in threads leave it on."""
import threading

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import backends

from .helpers import backend_params, make_learner, separable


@pytest.mark.parametrize("backend", backend_params())
def test_learners_fitting_in_four_threads_leave_value_checks_on(backend):
    x, y = separable(n=300, features=10)
    learners = [make_learner(backend, x, y, fs.simple_net(10, 6, 1), seed=i) for i in range(4)]
    for i, learn in enumerate(learners):
        learn.fused = i % 2 == 0  # both paths enter skip_value_checks blocks
    errors = []

    def fit(learn):
        try:
            learn.fit(3)
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=fit, args=(learn,)) for learn in learners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with pytest.raises(ValueError, match="x: contains NaN"):
        backends.get(backend).relu_forward(np.array([np.nan, 1], np.float32))


def test_a_skip_block_in_one_thread_does_not_reach_another():
    inside, go_on, seen = threading.Event(), threading.Event(), []

    def skipper():
        with backends.skip_value_checks():
            inside.set()
            go_on.wait(5)
            seen.append(backends.contract.value_checks_enabled())

    thread = threading.Thread(target=skipper)
    thread.start()
    inside.wait(5)
    assert backends.contract.value_checks_enabled()
    with pytest.raises(ValueError, match="contains NaN"):
        backends.get("numpy").relu_forward(np.array([np.nan], np.float32))
    go_on.set()
    thread.join()
    assert seen == [False] and backends.contract.value_checks_enabled()


def test_nested_skip_blocks_restore_exactly():
    with backends.skip_value_checks():
        with backends.skip_value_checks():
            pass
        assert not backends.contract.value_checks_enabled()
    assert backends.contract.value_checks_enabled()
