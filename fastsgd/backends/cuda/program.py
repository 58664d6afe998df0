"""The layer program: one epoch of SGD in one cooperative kernel.

The kernel walks the layer table of ``fastsgd/backends/program.py`` on the device.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64

from .. import program
from .device import row_max_sum_exp, sigmoid
from .elementwise import activation_backward, activation_forward
from .launch import F1, F2, I1, I2, KERNEL_SIGNATURES, SIMULATED, empty_vector, kernel

# ------------------------------------------------------------ the layer program
# One epoch of SGD over a layer program (program.py) in one cooperative launch.
# The table is read on the device; every phase below is a grid-stride loop over
# its outputs, and a grid sync separates each phase from the next, so any grid
# size is correct.  Per step of B rows:
#
#   gather a[0] | forward layer 0 | ... | forward layer L-1 | loss, d[L] per row |
#   (all threads stop here if the step's loss is not finite) |
#   backward layer L-1 | ... | backward the first LINEAR | update the whole block
#
# The activations a[0..L] and their gradients d[0..L] live in two flat scratch
# arrays: a[l] is (B, W_l) row-major at acts[offsets[l]:], d[l] at the same
# offset of deltas, with room for bs rows each (W_0 = I, W_{l+1} = N_OUT of row l).

# cuda.cg.this_grid().sync() reaches the device runtime through device functions
# that numba-cuda compiles for the current GPU, so compile_ptx fails without a
# driver; the two intrinsics behind them, called directly, compile anywhere.
_cg_grid = _cg_sync = None
if not SIMULATED:
    try:
        from numba.cuda import cg as _cg
        _cg_grid, _cg_sync = _cg._this_grid, _cg._grid_group_sync
    except (ImportError, AttributeError):  # a numba-cuda that keeps them elsewhere: the public API
        _cg_grid = _cg_sync = None

#: Whether ``compile_ptx`` can build the grid-sync kernel without a driver.
_GRID_SYNC_OFFLINE = SIMULATED or _cg_sync is not None

#: Kernels that ``compile_ptx`` cannot build without a GPU, and why (their signatures
#: are left out of ``KERNEL_SIGNATURES``); the GPU check (``benchmarks/gpu_check.sh``) runs them.
DEVICE_ONLY_KERNELS: dict[str, str] = {}

if _cg_sync is None:
    @cuda.jit(device=True, inline=True)
    def _grid_sync():
        """Wait until every thread of the cooperative grid gets here."""
        cuda.cg.this_grid().sync()
else:
    @cuda.jit(device=True, inline=True)
    def _grid_sync():
        """Wait until every thread of the cooperative grid gets here."""
        _cg_sync(_cg_grid())


@cuda.jit(device=True, inline=True)
def _row_col(idx, n):
    """(idx // n, idx % n): the row and column of flat index idx into rows of n (one division)."""
    r = idx // n
    return r, idx - r * n


@cuda.jit(device=True, inline=True)
def _dot(acc, u, i, di, v, j, dj, n):
    """acc + sum_k u[i + k * di] * v[j + k * dj] over k < n, added to acc in order of k."""
    for k in range(n):
        acc += u[i + k * di] * v[j + k * dj]
    return acc


@cuda.jit(device=True, inline=True)
def _gather(x, order, start, B, acts, tid, stride):
    """a[0] = x[order[start:start + B]].   x (N, I) -> a[0] (B, I) at acts[0:]."""
    I = x.shape[1]
    for idx in range(tid, B * I, stride):
        r, c = _row_col(idx, I)
        acts[idx] = x[order[start + r], c]


@cuda.jit(device=True, inline=True)
def _layer_forward(layers, l, B, params, acts, offsets, tid, stride):
    """a[l+1] = layer l of a[l].   a[l] (B, N_IN) -> a[l+1] (B, N_OUT).

    LINEAR: a[l] @ w + b with w (N_IN, N_OUT), b (N_OUT,) at params[PARAM:];
    an activation: elementwise (N_IN == N_OUT).
    """
    kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
    src, dst = offsets[l], offsets[l + 1]
    for idx in range(tid, B * n_out, stride):
        if kind == program.LINEAR:  # the bias, then a[l][r] . w[:, j]
            r, j = _row_col(idx, n_out)
            acts[dst + idx] = _dot(params[at + n_in * n_out + j], acts, src + r * n_in, 1,
                                   params, at + j, n_out, n_in)
        else:
            acts[dst + idx] = activation_forward(kind, acts[src + idx])


@cuda.jit(device=True, inline=True)
def _row_loss(loss_kind, z, O, scale, targets, labels, row, acts, deltas):
    """Loss of one output row z = a[L][r] (O,) at acts[z:], and dL/dz into deltas[z:].

    ``row`` is the sample's row in targets (N, O) / labels (N,); ``scale`` the
    divisor of the batch mean (B, or B * O for mse).  Returns the row's loss,
    not yet divided by ``scale``.
    """
    if loss_kind == program.MNIST_LOSS:  # O == 1
        s = sigmoid(acts[z])
        slope = s * (float32(1.0) - s) / scale
        if targets[row, 0] == float32(1.0):
            deltas[z] = -slope
            return float32(1.0) - s
        deltas[z] = slope
        return s
    if loss_kind == program.CROSS_ENTROPY:  # shifted by the row max: exp never overflows
        label = labels[row]
        m, total = row_max_sum_exp(acts, z, O)
        lse = math.log(total) + m
        for o in range(O):
            deltas[z + o] = math.exp(acts[z + o] - lse) / scale
        deltas[z + label] -= float32(1.0) / scale
        return lse - acts[z + label]
    loss = float32(0.0)  # MSE: targets shaped like the output
    for o in range(O):
        e = acts[z + o] - targets[row, o]
        loss += e * e
        deltas[z + o] = float32(2.0) * e / scale
    return loss


@cuda.jit(device=True, inline=True)
def _loss_phase(loss_kind, L, B, start, s, layers, targets, labels, order, acts, deltas, offsets,
                losses, tid, stride):
    """losses[s] += the batch's mean loss; d[L] = its gradient w.r.t. a[L] (B, O)."""
    O = layers[L - 1, 2]
    scale = float32(B * O) if loss_kind == program.MSE else float32(B)
    for r in range(tid, B, stride):
        z = offsets[L] + r * O
        loss = _row_loss(loss_kind, z, O, scale, targets, labels, order[start + r], acts, deltas)
        cuda.atomic.add(losses, s, float64(loss) / float64(scale))


@cuda.jit(device=True, inline=True)
def _layer_backward(layers, l, need_dx, B, params, grads, acts, deltas, offsets, tid, stride):
    """Gradients of layer l from d[l+1] (B, N_OUT).

    LINEAR: grad w = a[l].T @ d[l+1] (N_IN, N_OUT) and grad b = sum_rows d[l+1]
    (N_OUT,) into grads[PARAM:], and d[l] = d[l+1] @ w.T (B, N_IN) when
    ``need_dx``, all in one grid-stride loop; an activation: d[l] elementwise
    (ReLU from its input a[l], Sigmoid and Tanh from their output a[l+1]).
    """
    kind, n_in, n_out, at = layers[l, 0], layers[l, 1], layers[l, 2], layers[l, 3]
    src, dst = offsets[l], offsets[l + 1]
    if kind == program.LINEAR:
        n_w = n_in * n_out
        total = n_w + n_out + (B * n_in if need_dx else 0)
        for idx in range(tid, total, stride):
            if idx < n_w:  # grad w[i, j] = a[l][:, i] . d[l+1][:, j]
                i, j = _row_col(idx, n_out)
                grads[at + idx] = _dot(float32(0.0), acts, src + i, n_in, deltas, dst + j, n_out, B)
            elif idx < n_w + n_out:  # grad b[j] = sum_r d[l+1][r, j]
                j = idx - n_w
                acc = float32(0.0)
                for r in range(B):
                    acc += deltas[dst + r * n_out + j]
                grads[at + idx] = acc
            else:  # d[l][r, i] = d[l+1][r] . w[i]
                e = idx - n_w - n_out
                r, i = _row_col(e, n_in)
                deltas[src + e] = _dot(float32(0.0), deltas, dst + r * n_out, 1,
                                       params, at + i * n_out, 1, n_out)
    else:
        for idx in range(tid, B * n_in, stride):
            deltas[src + idx] = activation_backward(kind, acts[src + idx], acts[dst + idx],
                                                    deltas[dst + idx])


@cuda.jit(device=True, inline=True)
def _sgd_step(params, grads, velocities, lr, momentum, weight_decay, tid, stride):
    """One SGD update of the whole block, as ``sgd_update``.   params, grads (P,); velocities (P,) or (0,)."""
    use_momentum = velocities.shape[0] > 0
    for i in range(tid, params.shape[0], stride):
        g = grads[i] + weight_decay * params[i]
        if use_momentum:
            g = momentum * velocities[i] + g
            velocities[i] = g
        params[i] -= lr * g


# layers, loss_kind, x, targets, labels, order, bs, lrs, momentum, weight_decay,
# params, grads, velocities, acts, deltas, offsets, losses
@kernel(f"void({I2}, int64, {F2}, {F2}, {I1}, {I1}, int64, {F1}, float32, float32, "
        f"{F1}, {F1}, {F1}, {F1}, {F1}, {I1}, float64[::1])")
def _train_program_kernel(layers, loss_kind, x, targets, labels, order, bs, lrs, momentum,
                          weight_decay, params, grads, velocities, acts, deltas, offsets, losses):
    """A whole epoch of SGD over a layer program; launch cooperatively (grid syncs).

    layers (L, 4) int64, the table of program.py; x (N, I); targets (N, O) float
    (mnist_loss, mse) or (0, 1), labels (N,) int64 (cross_entropy) or (0,);
    order (R,) the rows the steps take; lrs (steps,); params, grads (P,); velocities (P,),
    or (0,) without momentum; acts, deltas (bs * sum of widths,) scratch at
    offsets (L + 2,); losses (steps,) float64, zeroed, filled here.  Stops, every
    thread together, after the first step whose loss is not finite, before its
    update.
    """
    tid = cuda.grid(1)
    stride = cuda.gridsize(1)
    N = order.shape[0]  # the rows the steps take
    L = layers.shape[0]
    first = 0  # the first LINEAR: nothing before it needs a gradient
    while layers[first, 0] != program.LINEAR:
        first += 1
    for s in range(losses.shape[0]):
        start = s * bs
        B = min(bs, N - start)
        # the previous step's update and this gather touch different memory: one sync covers both
        _gather(x, order, start, B, acts, tid, stride)
        _grid_sync()
        for l in range(L):
            _layer_forward(layers, l, B, params, acts, offsets, tid, stride)
            _grid_sync()
        _loss_phase(loss_kind, L, B, start, s, layers, targets, labels, order, acts, deltas,
                    offsets, losses, tid, stride)
        _grid_sync()
        if not math.isfinite(losses[s]):
            return
        for l in range(L - 1, first - 1, -1):
            _layer_backward(layers, l, l > first, B, params, grads, acts, deltas, offsets,
                            tid, stride)
            _grid_sync()
        _sgd_step(params, grads, velocities, lrs[s], momentum, weight_decay, tid, stride)


#: Threads per block of the program kernel; its grid is one block per SM (all co-resident).
EPOCH_BLOCK = 16 if SIMULATED else 256

def _epoch_grid() -> int:
    """Blocks of the cooperative launch: the simulator runs cooperative grids of one block."""
    return 1 if SIMULATED else cuda.get_current_device().MULTIPROCESSOR_COUNT


def _scratch_offsets(layers, bs: int) -> np.ndarray:
    """Offsets of a[0] .. a[L] in the scratch, then its length: bs rows of each width.   (L + 2,) int64."""
    return np.concatenate([[0], np.cumsum(program.widths(layers))]).astype(np.int64) * bs


def train_epoch(layers, loss_kind, x, targets, order, bs, lrs, params, grads, velocities,
                momentum, weight_decay, losses):
    """One epoch of SGD over a layer program in one launch; returns the steps done.

    Arguments as ``contract.Backend.train_epoch`` passes them: layers (L, 4) and
    lrs (steps,) host arrays, copied over; x, targets (labels (N,) int64 for a
    "labels" loss, else floats (N, O)), order, params,
    grads, velocities (None without momentum) device arrays; losses (steps,) a
    host float64 array, filled from the device at the end (one transfer per
    epoch).  Returns ``steps``, or s when the loss of step s is not finite.
    """
    program.check_compiled_kinds(layers, loss_kind, "cuda")
    if program.LOSSES[loss_kind].targets == "labels":   # the kernel takes them apart
        labels, targets = targets, cuda.device_array((0, 1), np.float32)
    else:
        labels = cuda.device_array(0, np.int64)
    offsets = _scratch_offsets(layers, min(bs, max(order.shape[0], 1)))  # one batch
    acts = cuda.device_array(int(offsets[-1]), np.float32)
    deltas = cuda.device_array(int(offsets[-1]), np.float32)
    device_losses = cuda.to_device(np.zeros(losses.shape[0], np.float64))
    _train_program_kernel[_epoch_grid(), EPOCH_BLOCK](
        cuda.to_device(np.ascontiguousarray(layers, np.int64)), np.int64(loss_kind), x, targets,
        labels, order, np.int64(bs), cuda.to_device(np.ascontiguousarray(lrs, np.float32)),
        np.float32(momentum), np.float32(weight_decay), params, grads,
        empty_vector() if velocities is None else velocities, acts, deltas,
        cuda.to_device(offsets), device_losses)
    losses[:] = device_losses.copy_to_host()
    bad = np.flatnonzero(~np.isfinite(losses))
    return int(bad[0]) if bad.size else losses.shape[0]


if not _GRID_SYNC_OFFLINE:
    DEVICE_ONLY_KERNELS["_train_program_kernel"] = (
        "its grid sync goes through cuda.cg's device functions, which this numba-cuda "
        "compiles only with a driver present")
    del KERNEL_SIGNATURES["_train_program_kernel"]
