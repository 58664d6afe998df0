"""Compile, or load from Numba's disk cache, every function the numba backend runs.

``warm_up()`` calls each kernel once on small arrays of the types the contract and the
trainer pass (float32 C-contiguous arrays, int64 labels), both sides of every dispatch
(narrow and wide products, the one-thread and the threaded matmuls) and the fused
epoch for each loss, so that a later process finds everything in the cache.
``CompileCounter`` counts what Numba really compiled (a load from the cache is no
compile).
"""
from __future__ import annotations

import time

import numpy as np

from . import program as prog

__all__ = ["CompileCounter", "warm_up", "cache_dir"]


class CompileCounter:
    """Counts the functions Numba compiles (not those it loads from its cache) while open.

        with CompileCounter() as counter:
            ...
        counter.compiled   # names of the functions compiled for a call (not the ones
                           # compiled inside those compiles)
    """

    def __init__(self):
        self.compiled: list[str] = []
        self._depth = 0

    def __enter__(self) -> "CompileCounter":
        from numba.core import event

        counter = self

        class _Listener(event.Listener):
            def on_start(self, ev):
                if counter._depth == 0:
                    counter.compiled.append(ev.data["dispatcher"].py_func.__qualname__)
                counter._depth += 1

            def on_end(self, ev):
                counter._depth -= 1

        self._listener = _Listener()
        event.register("numba:compile", self._listener)
        return self

    def __exit__(self, *exc):
        from numba.core import event
        event.unregister("numba:compile", self._listener)


def cache_dir() -> str:
    """The folder Numba keeps the numba backend's compiled functions in."""
    from . import numba_cpu
    return numba_cpu._gemm._cache.cache_path


def _kernels(nb, rng) -> None:
    """Every kernel of the contract, through the contract, on small arrays."""
    f32 = np.float32

    def rand(*shape):
        return rng.standard_normal(shape).astype(f32)

    x, w, b = rand(8, 20), rand(20, 32), rand(32)
    w_narrow, b_narrow = rand(20, 10), rand(10)
    for weights, bias in ((w, b), (w_narrow, b_narrow)):   # wide and narrow products
        y = nb.linear_forward(x, weights, bias)
        dy = rand(*y.shape)
        nb.matmul(x, weights)
        nb.matmul_backward_input(dy, weights)
        nb.matmul_backward_weight(x, dy)
        nb.bias_backward(dy)
        nb.linear_backward(x, weights, dy)
        nb.linear_backward(x, weights, dy, need_dx=False)
    for name in ("sigmoid", "relu", "tanh"):
        out = getattr(nb, f"{name}_forward")(x)
        getattr(nb, f"{name}_backward")(out if name != "relu" else x, rand(*x.shape))
    preds, bits = rand(8), (rng.random(8) < 0.5).astype(f32)
    logits, labels = rand(8, 10), rng.integers(0, 10, 8).astype(np.int64)
    nb.mnist_loss_forward(preds, bits)
    nb.mnist_loss_backward(preds, bits)
    nb.cross_entropy_forward(logits, labels)
    nb.cross_entropy_backward(logits, labels)
    nb.mse_forward(preds, bits)
    nb.mse_backward(preds, bits)
    nb.binary_accuracy(preds, bits)
    nb.multiclass_accuracy(logits, labels)
    param, grad = rand(8, 4), rand(8, 4)
    nb.sgd_update(param, grad, 0.1)
    nb.sgd_update(param, grad, 0.1, momentum=0.9, velocity=np.zeros_like(param))


def _threaded(rng) -> None:
    """The threaded twins, which the dispatch runs only on large products."""
    from . import numba_cpu as impl
    a, w = rng.standard_normal((8, 20)).astype(np.float32), \
        rng.standard_normal((20, 32)).astype(np.float32)
    with impl._PARALLEL:
        impl._gemm(a, w, np.empty((8, 32), np.float32), False)
        impl._gemm(a, np.empty((8, 32), np.float32), np.empty((20, 32), np.float32), True)
        impl._backward_input(np.empty((8, 32), np.float32), w, np.empty((8, 20), np.float32))
        impl._gather_rows(a, np.arange(8, dtype=np.int64), 0, np.empty((4, 20), np.float32))


def _epochs(nb, rng) -> None:
    """The fused epoch for each loss, through every layer kind, with and without momentum."""
    n, n_in, hidden = 12, 6, 5
    x = rng.standard_normal((n, n_in)).astype(np.float32)
    by_targets = {"binary": (1, (rng.random(n) < 0.5).astype(np.float32)),
                  "labels": (3, rng.integers(0, 3, n).astype(np.int64)),
                  "real": (2, rng.standard_normal((n, 2)).astype(np.float32))}
    hidden_layers = [layer for kind in prog.activations() if kind.code in prog.BUILT_IN_LAYERS
                     for layer in (("linear", hidden, hidden), (kind.name, hidden, hidden))]
    for loss_kind in sorted(prog.BUILT_IN_LOSSES):
        n_out, targets = by_targets[prog.LOSSES[loss_kind].targets]
        layers, n_params = prog.layer_table(
            [("linear", n_in, hidden), *hidden_layers[1:], ("linear", hidden, n_out)])
        params = (0.1 * rng.standard_normal(n_params)).astype(np.float32)
        for momentum in (0.0, 0.9):
            bs = 5
            steps = -(-n // bs)
            nb.train_epoch(layers, loss_kind, x, targets, rng.permutation(n).astype(np.int64),
                           bs, np.full(steps, 0.01, np.float32), params,
                           np.zeros_like(params), np.zeros_like(params), momentum, 0.0)


def warm_up() -> dict:
    """Compile or load every numba function the kernels and the trainer run.

    Returns ``{"compiled": names of the functions compiled (empty when all came from
    the cache), "seconds": time taken, "cache_dir": where the cache lives}``.
    """
    from . import get
    nb = get("numba")
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    with CompileCounter() as counter:
        _kernels(nb, rng)
        _threaded(rng)
        _epochs(nb, rng)
    return {"compiled": counter.compiled, "seconds": time.perf_counter() - start,
            "cache_dir": cache_dir()}
