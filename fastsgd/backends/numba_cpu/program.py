"""The fused training epoch: one ``@njit`` loop over a layer program (``program.py``)."""
import math

import numpy as np
from numba import njit, prange

from .. import program as prog
from ..spec import check_epoch
from . import config
from .config import _PLAIN
from .gemm import _add_bias, _backward_input_product, _product, bias_backward
from .pointwise import _layer_backward, _layer_forward, _program_loss, _step_slice
from .split import first_forward_product, first_gradient_product, half_of


@njit(inline="always")
def _gather_rows_body(x, order, start, xb):
    """xb[r] = x[order[start + r]] for every row r of xb, the rows spread over the threads
    (in a ``parallel=True`` caller).   x (N, I), xb (B, I)."""
    for r in prange(xb.shape[0]):
        xb[r, :] = x[order[start + r], :]


@njit(cache=True, parallel=True, error_model="numpy")
def _gather_rows(x, order, start, xb):
    """``_gather_rows_body`` on the threads.   x (N, I), xb (B, I)."""
    _gather_rows_body(x, order, start, xb)


@njit(**_PLAIN)
def _gather_rows_one_thread(x, order, start, xb):
    """``_gather_rows_body`` on the calling thread.   x (N, I), xb (B, I)."""
    _gather_rows_body(x, order, start, xb)


@njit(inline="always")
def _linears_tile(layers, P):
    """Whether the LINEARs' parameters, in layer order, tile the block [0, P): then each
    takes its own SGD step in the backward pass, once its input gradient (which needs
    the weights before the step) is computed."""
    end = 0
    for l in range(layers.shape[0]):
        if layers[l, 0] == prog.LINEAR:
            if layers[l, 3] != end:
                return False
            end += layers[l, 1] * layers[l, 2] + layers[l, 2]
    return end == P


@njit(**_PLAIN)
def _train_epoch(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
                 params, grads, velocities, use_momentum, losses, min_macs, min_gather):
    """One pass of SGD over a layer program in one call (see ``program.py``).

    layers (L, 4); x (N, I); targets (N, T) float32 (mnist_loss, mse) or labels (N,)
    int64 (cross-entropy); order (R,) the rows of x the steps take; params, grads,
    velocities (P,) flat blocks; lrs, losses (steps,).  The activations a[l] (B, width_l) and their gradients
    d[l] live in two scratch arrays laid out once.  Products of at least ``min_macs``
    multiply-adds, and gathers of at least ``min_gather`` elements, run on the threads.
    A program that starts with a LINEAR gathers its batch inside that layer's forward,
    which with its weight gradient and SGD step is split by input features (``split``).
    Returns the steps done.
    """
    N = order.shape[0]  # the rows the steps take
    L = layers.shape[0]
    offsets = np.zeros(L + 2, np.int64)  # a[l] starts at offsets[l] * bs
    offsets[1] = layers[0, 1]
    for l in range(L):
        offsets[l + 2] = offsets[l + 1] + layers[l, 2]
    acts = np.empty(offsets[L + 1] * bs, np.float32)
    deltas = np.empty(offsets[L + 1] * bs, np.float32)
    T = targets.shape[1]
    tb_all = np.empty((bs, T), np.float32)
    yb_all = np.empty(bs if labels.size else 0, np.int64)
    first_linear = 0
    while layers[first_linear, 0] != prog.LINEAR:
        first_linear += 1
    split_first = layers[0, 0] == prog.LINEAR
    partial_all = np.empty(bs * layers[0, 2] if split_first else 0, np.float32)
    half = half_of(layers[0, 1])
    stepwise = _linears_tile(layers, params.size)
    no_velocity = np.empty((0, 0), np.float32)
    steps = (N + bs - 1) // bs
    for s in range(steps):
        start = s * bs
        B = min(bs, N - start)
        lr = np.float32(lrs[s])
        a0 = acts[:B * layers[0, 1]].reshape((B, layers[0, 1]))
        if split_first:
            pass  # gathered by the first layer's forward
        elif B * a0.shape[1] < min_gather:
            _gather_rows_one_thread(x, order, start, a0)
        else:
            _gather_rows(x, order, start, a0)
        tb, yb = tb_all[:B], yb_all[:B if labels.size else 0]
        if loss_kind == prog.CROSS_ENTROPY:
            for r in range(B):
                yb[r] = labels[order[start + r]]
        else:
            for r in range(B):
                tb[r, :] = targets[order[start + r], :]
        for l in range(L):  # forward
            kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            a_in = acts[offsets[l] * bs:offsets[l] * bs + B * n_in].reshape((B, n_in))
            a_out = acts[offsets[l + 1] * bs:offsets[l + 1] * bs + B * n_out].reshape((B, n_out))
            if kind == prog.LINEAR and l == 0:
                w = params[at:at + n_in * n_out].reshape((n_in, n_out))
                bias = params[at + n_in * n_out:at + n_in * n_out + n_out]
                partial = partial_all[:B * n_out].reshape((B, n_out))
                first_forward_product(x, order, start, a_in, w, bias, a_out, partial, half,
                                      min_macs)
            elif kind == prog.LINEAR:
                w = params[at:at + n_in * n_out].reshape((n_in, n_out))
                _product(a_in, w, a_out, False, min_macs)
                _add_bias(a_out, params[at + n_in * n_out:at + n_in * n_out + n_out])
            else:
                _layer_forward(kind, a_in.reshape(-1), a_out.reshape(-1))
        O = layers[L - 1, 2]
        z = acts[offsets[L] * bs:offsets[L] * bs + B * O].reshape((B, O))
        dz = deltas[offsets[L] * bs:offsets[L] * bs + B * O].reshape((B, O))
        loss = _program_loss(loss_kind, z, tb, yb, dz)
        losses[s] = loss
        if not math.isfinite(loss):
            return s
        for l in range(L - 1, first_linear - 1, -1):  # backward
            kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
            a_in = acts[offsets[l] * bs:offsets[l] * bs + B * n_in].reshape((B, n_in))
            a_out = acts[offsets[l + 1] * bs:offsets[l + 1] * bs + B * n_out].reshape((B, n_out))
            d_out = deltas[offsets[l + 1] * bs:offsets[l + 1] * bs + B * n_out].reshape((B, n_out))
            d_in = deltas[offsets[l] * bs:offsets[l] * bs + B * n_in].reshape((B, n_in))
            if kind == prog.LINEAR and l == 0:
                w_end = at + n_in * n_out
                bias_backward(d_out, grads[w_end:w_end + n_out])
                if stepwise:
                    _step_slice(params, grads, velocities, w_end, w_end + n_out, lr, momentum,
                                weight_decay, use_momentum)
                v = velocities[at:w_end].reshape((n_in, n_out)) if use_momentum else no_velocity
                first_gradient_product(a_in, d_out, grads[at:w_end].reshape((n_in, n_out)),
                                       params[at:w_end].reshape((n_in, n_out)), v, half, lr,
                                       momentum, weight_decay, stepwise, use_momentum, min_macs)
            elif kind == prog.LINEAR:
                w_end = at + n_in * n_out
                _product(a_in, d_out, grads[at:w_end].reshape((n_in, n_out)), True, min_macs)
                bias_backward(d_out, grads[w_end:w_end + n_out])
                if l > first_linear:
                    _backward_input_product(d_out, params[at:w_end].reshape((n_in, n_out)),
                                            d_in, min_macs)
                if stepwise:
                    _step_slice(params, grads, velocities, at, w_end + n_out, lr, momentum,
                                weight_decay, use_momentum)
            else:
                _layer_backward(kind, a_in.reshape(-1), a_out.reshape(-1), d_out.reshape(-1),
                                d_in.reshape(-1))
        if not stepwise:
            _step_slice(params, grads, velocities, 0, params.size, lr, momentum, weight_decay,
                        use_momentum)
    return steps


def train_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads, velocities,
                momentum, weight_decay, losses):
    """One epoch of SGD over a layer program (``program.py``); returns the steps done.

    Arguments as ``contract.Backend.train_epoch`` passes them; velocities None when
    momentum is 0.  Numba has no bounds checks of its own: ``spec.check_epoch``, the one
    memory-safety check of the compiled epochs, runs first.
    """
    sizes = check_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads,
                        velocities, momentum, weight_decay, losses, "numba")
    if prog.LOSSES[int(loss_kind)].targets == "labels":   # the loop takes them apart
        labels, targets = targets, np.empty((0, 1), np.float32)
    else:
        labels = np.empty(0, np.int64)
    use_momentum = velocities is not None
    if not use_momentum:
        velocities = np.empty(0, np.float32)
    rows = min(sizes.bs, max(sizes.n_order, 1))   # the scratch holds one batch, never more rows
    with config._PARALLEL:
        return _train_epoch(layers, int(loss_kind), x, targets, labels, order, rows, lrs,
                            np.float32(sizes.momentum), np.float32(sizes.weight_decay), params,
                            grads, velocities, use_momentum, losses,
                            config.EPOCH_PARALLEL_MIN_MACS, config.PARALLEL_MIN_GATHER)
