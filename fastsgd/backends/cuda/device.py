"""Device functions shared by the kernels (sigmoid, a row's max and sum of exp, block sums),
inlined into each before code generation, and the decorators that make a kernel of a
per-element term (``elementwise_kernel``, ``reduction_kernel``).

``inline=True`` makes Numba paste them into every kernel that calls them, so each
kernel still compiles to PTX on its own (``numba.cuda.compile_ptx``) without a GPU.
"""
import inspect
import math

from numba import cuda, float32

from .launch import BLOCK, kernel


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
def tree_sum(partial, t, c, value):
    """The sum of ``value`` over the n threads t < n that share column c of ``partial`` (n, m).

    Pairwise down that column of a shared array, n a power of 2; every one of
    the n threads must call it, and each gets the total.
    """
    partial[t, c] = value
    cuda.syncthreads()
    step = partial.shape[0] // 2
    while step > 0:
        if t < step:
            partial[t, c] += partial[t + step, c]
        cuda.syncthreads()
        step //= 2
    return partial[0, c]


@cuda.jit(device=True, inline=True)
def block_sum(term, a, b, zero, result):
    """result[0] = the sum of ``term(a, b, i)`` over i < a.shape[0], by the BLOCK threads of one block.

    Thread t takes i = t, t + BLOCK, ... from ``zero`` (0 in the dtype of
    ``result``, a (1,) array), then ``tree_sum`` adds the BLOCK partial sums and
    thread 0 writes the total.  Every thread of the block must call it.
    """
    partial = cuda.shared.array((BLOCK, 1), result.dtype)
    t = cuda.threadIdx.x
    acc = zero
    for i in range(t, a.shape[0], BLOCK):
        acc += term(a, b, i)
    total = tree_sum(partial, t, 0, acc)
    if t == 0:
        result[0] = total


def _term_kernel(fn, signature, run):
    """``run`` (closing over ``fn`` as an inline device function) as the kernel named and documented as ``fn``."""
    run.__name__, run.__qualname__, run.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    return kernel(signature)(run)


def elementwise_kernel(signature):
    """Decorator: ``term(x, i)`` or ``term(a, b, i)`` -> the kernel (x, out) or (a, b, out), out (n,).

    One thread per element: thread i < n (n the length of the first array) writes
    out[i] = term(..., i).  The kernel keeps the name and docstring of ``term``.
    """
    def build(fn):
        term = cuda.jit(device=True, inline=True)(fn)
        if len(inspect.signature(fn).parameters) == 2:
            def run(x, out):
                i = cuda.grid(1)
                if i < x.shape[0]:
                    out[i] = term(x, i)
        else:
            def run(a, b, out):
                i = cuda.grid(1)
                if i < a.shape[0]:
                    out[i] = term(a, b, i)
        return _term_kernel(fn, signature, run)
    return build


def reduction_kernel(signature, zero):
    """Decorator: ``term(a, b, i)`` -> the one-block kernel (a, b, result) of ``block_sum``.

    result[0] = the sum of term(a, b, i) over i < a.shape[0] from ``zero`` (0 in
    the dtype of result); launch it with one block of BLOCK threads.  The kernel
    keeps the name and docstring of ``term``.
    """
    def build(fn):
        term = cuda.jit(device=True, inline=True)(fn)

        def run(a, b, result):
            block_sum(term, a, b, zero, result)
        return _term_kernel(fn, signature, run)
    return build
