"""Gathering rows and the device-side checks of the contract (counts read back as one number)."""
import math

import numpy as np
from numba import cuda, float32, int32

from .device import block_sum
from .launch import F1, F2, I1, I2, N1, flat, kernel, launch_threads, one_block


@kernel(f"void({F2}, {I1}, {F2})", f"void({I2}, {I1}, {I2})")
def _take_rows_kernel(src, idx, out):
    """out[r, f] = src[idx[r], f], one thread per output element.   src (N, F), idx (R,) -> out (R, F).

    An index outside [0, N) yields a zero row instead of a read out of bounds
    (the contract checks indices first unless value checks are skipped).
    """
    i = cuda.grid(1)
    R, F = out.shape
    if i < R * F:
        r = i // F
        f = i - r * F
        row = idx[r]
        if row >= 0 and row < src.shape[0]:
            out[r, f] = src[row, f]
        else:
            out[r, f] = 0


def take_rows(src, idx, out):
    """out[r] = src[idx[r]].   src (N, F), idx (R,) int64 -> out (R, F), validated by the contract."""
    launch_threads(_take_rows_kernel, out.shape[0] * out.shape[1], src, idx, out)


# ------------------------------------------------------ device-side checks
@cuda.jit(device=True, inline=True)
def _outside(values, bounds, i):
    """1 if values[i] lies outside [low, high) = ``bounds``, else 0 (int32)."""
    low, high = bounds
    return int32(1) if values[i] < low or values[i] >= high else int32(0)


@kernel(f"void({I1}, int64, int64, {N1})")
def _count_outside_kernel(values, low, high, result):
    """result[0] = #{i : not low <= values[i] < high}, in one block.   values (n,) int64 -> (1,)."""
    block_sum(_outside, values, (low, high), int32(0), result)


@cuda.jit(device=True, inline=True)
def _not_binary(targets, unused, i):
    """1 if targets[i] is neither 0 nor 1, else 0 (int32); the second argument is unused."""
    return int32(1) if targets[i] != float32(0.0) and targets[i] != float32(1.0) else int32(0)


@kernel(f"void({F1}, {N1})")
def _count_not_binary_kernel(targets, result):
    """result[0] = #{i : targets[i] not 0 and not 1}, in one block.   targets (n,) float32 -> (1,)."""
    block_sum(_not_binary, targets, 0, int32(0), result)


@kernel(f"void({F1}, {N1})")
def _flag_non_finite_kernel(x, flag):
    """flag[0] = 1 if some x[i] is NaN or +-Inf (flag zeroed by the caller).   x (n,)."""
    i = cuda.grid(1)
    if i < x.shape[0] and not math.isfinite(x[i]):
        flag[0] = 1


def count_outside(values, low: int, high: int) -> int:
    """How many of the int64 device ``values`` lie outside [low, high) (waits for the device)."""
    return int(one_block(_count_outside_kernel, flat(values), np.int64(low), np.int64(high),
                          dtype=np.int32))


def count_not_binary(targets) -> int:
    """How many float32 device ``targets`` are neither 0 nor 1 (waits for the device)."""
    return int(one_block(_count_not_binary_kernel, flat(targets), dtype=np.int32))


def all_finite(x) -> bool:
    """Whether the float32 device array ``x`` holds no NaN or Inf (waits for the device)."""
    x = flat(x)
    flag = cuda.to_device(np.zeros(1, np.int32))
    launch_threads(_flag_non_finite_kernel, x.shape[0], x, flag)
    return int(flag.copy_to_host()[0]) == 0

