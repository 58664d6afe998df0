"""The contract's checks of the matmul family for plain NumPy arguments, in one pass.

``Backend._product`` checks any backend's arrays through its adapter, one question at
a time (about 7 us a call).  What the trainer, the book's Tensor and every benchmark
pass a CPU backend are plain ``numpy.ndarray`` s of one dtype; for them ``accept``
asks the same questions with tests laid out once per kernel (``plan``), in about
2 us.  It never raises: an argument it does not accept outright (a subclass, another
dtype, a wrong shape, an overlap, NaN) sends the call down the general path, which
accepts it or raises the error naming it.

The NaN/Inf scan of the inputs may come after the product instead, of its outputs
(``c_ext.PRECHECKED``: C checks each tile of the output as it stores it), where the
product is IEEE arithmetic that skips nothing, as the C kernels are: in
every kernel of the family each input element is multiplied into (or added to) some
output element, and NaN or +-Inf times anything, 0 included, is NaN or +-Inf, so
finite outputs prove finite inputs.  The outputs are far smaller than the inputs at
training shapes (x (64, 784) and w (784, 128) against out (64, 128)), and checked in
registers they cost nothing measurable, where scanning the inputs took 7 us.  Only when an output is not finite are the inputs scanned
(``inputs_finite``), and a bad one is then reported by the general path as before (the
outputs are written).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .arrays import host_all_finite

_ndarray = np.ndarray
_empty = np.empty
_may_share_memory = np.may_share_memory


class Plan(NamedTuple):
    """A kernel's checks, from its ``spec.SIGNATURES`` parameters."""

    #: (argument index, ndim) of each array read
    reads: tuple
    #: ((i, axis), (j, axis2)): args[i].shape[axis] must equal args[j].shape[axis2]
    equal: tuple
    #: (argument index, name, ((i, axis), ...)): an output and where each of its sizes is read
    writes: tuple


def plan(params) -> Plan:
    """The ``Plan`` of a matmul-family kernel's parameters (arrays only, no scalars)."""
    reads, equal, first = [], [], {}
    for i, p in enumerate(params):
        if p.written:
            continue
        reads.append((i, len(p.dims)))
        for axis, letter in enumerate(p.dims):
            if letter in first:
                equal.append((first[letter], (i, axis)))
            else:
                first[letter] = (i, axis)
    writes = [(i, p.name, tuple(first[letter] for letter in p.dims))
              for i, p in enumerate(params) if p.written]
    return Plan(tuple(reads), tuple(equal), tuple(writes))


def accept(plan: Plan, args, skip, dtypes, value_checks: bool):
    """The outputs of a call with ``args`` (given ones checked, missing ones allocated;
    None for those named in ``skip``), or None when the general path must decide.

    Accepted: inputs are ``numpy.ndarray`` (exactly), non-empty, C-contiguous, of the
    declared ndim, of one dtype in ``dtypes``, with sizes that agree (and finite, when
    ``value_checks``); outputs likewise exact ndarrays of that dtype and of the shape
    the inputs give, writable, sharing no memory with an input or another output.
    """
    dtype = None
    for i, ndim in plan.reads:
        x = args[i]
        if type(x) is not _ndarray or x.ndim != ndim or not x.size or not x.flags.c_contiguous:
            return None
        if dtype is None:
            dtype = x.dtype
            if dtype not in dtypes:
                return None
        elif x.dtype != dtype:
            return None
    for (i, a), (j, b) in plan.equal:
        if args[i].shape[a] != args[j].shape[b]:
            return None
    if value_checks:
        for i, _ in plan.reads:
            if not host_all_finite(args[i]):
                return None
    outs = []
    for i, name, sizes in plan.writes:
        if name in skip:
            outs.append(None)
            continue
        shape = tuple([args[j].shape[axis] for j, axis in sizes])
        out = args[i]
        if out is None:
            outs.append(_empty(shape, dtype))
            continue
        flags = out.flags if type(out) is _ndarray else None
        if (flags is None or out.dtype != dtype or out.shape != shape
                or not flags.c_contiguous or not flags.writeable):
            return None
        for j, _ in plan.reads:
            if _may_share_memory(out, args[j]):
                return None
        for other in outs:
            if other is not None and _may_share_memory(out, other):
                return None
        outs.append(out)
    return outs


def inputs_finite(plan: Plan, args) -> bool:
    """Whether every input of a call is free of NaN and Inf (after a product whose
    outputs are not: an overflow from finite inputs, or a bad input)."""
    return all(host_all_finite(args[i]) for i, _ in plan.reads)
