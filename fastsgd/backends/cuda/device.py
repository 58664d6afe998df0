"""Device functions shared by the kernels (sigmoid, a row's max and sum of exp, a block sum),
inlined into each before code generation.

``inline=True`` makes Numba paste them into every kernel that calls them, so each
kernel still compiles to PTX on its own (``numba.cuda.compile_ptx``) without a GPU.
"""
import math

from numba import cuda, float32

from .launch import BLOCK


@cuda.jit(device=True, inline=True)
def sigmoid(v):
    """1 / (1 + exp(-v)) via exp(-|v|), which never overflows: a float32 in [0, 1]."""
    e = math.exp(-abs(v))
    r = float32(1.0) / (float32(1.0) + e)
    return r if v >= float32(0.0) else e * r


@cuda.jit(device=True, inline=True)
def row_max_sum_exp(z, start, n):
    """(m, sum_c exp(z[start + c] - m)) over c < n, m the row maximum: exp never overflows.

    logsumexp is ``log(total) + m``; softmax is ``exp(z - m) / total``.
    """
    m = z[start]
    for c in range(1, n):
        m = max(m, z[start + c])
    total = float32(0.0)
    for c in range(n):
        total += math.exp(z[start + c] - m)
    return m, total


@cuda.jit(device=True, inline=True)
def block_sum(partial, t, value, result):
    """result[0] = the sum of ``value`` over the block's BLOCK threads (t the thread).

    Pairwise in ``partial``, a (BLOCK,) shared array of the result's dtype; every
    thread of the block must call it.
    """
    partial[t] = value
    cuda.syncthreads()
    step = BLOCK // 2
    while step > 0:
        if t < step:
            partial[t] += partial[t + step]
        cuda.syncthreads()
        step //= 2
    if t == 0:
        result[0] = partial[0]
