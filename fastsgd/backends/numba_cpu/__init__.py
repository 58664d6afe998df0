"""The Numba backend: every kernel of the contract as ``@njit`` loops on the CPU.

No BLAS: the matmuls are written out here.  Each function writes into the
preallocated output(s) passed last; arguments arrive validated by
``contract.Backend`` (C-contiguous float32, shapes checked, labels in range).
Dimension letters as in ``contract.py``.

``parallel=True`` is used only on the matmul family, and only for products large
enough for threads to pay (``PARALLEL_MIN_MACS``); ``fastmath=True`` where it lets
LLVM vectorise a reduction.

Threads: unless ``NUMBA_THREADING_LAYER`` is set (or the process already chose a
layer), importing this module selects Numba's ``tbb`` layer when the ``tbb`` package
is installed (a dependency on x86-64 Linux; its runtime library is loaded by path,
where Numba alone would not find it), else ``workqueue``, instead of Numba's
default, GNU OpenMP: OpenMP's workers spin after each kernel, stalling NumPy's BLAS
and other busy processes, and a process that forks after an OpenMP region cannot run
parallel code in the child.  TBB's and workqueue's workers sleep between kernels and
both survive a fork.  With TBB the calling thread works too and the threads take
chunks of rows as they come free, so two threads pay from ~4e6 multiply-adds (the
training shapes) and a busy second core costs its share; workqueue splits the work
evenly up front, so the products use it only from ~7e7 (``PARALLEL_MIN_MACS``).
Workqueue must not be entered by two threads at once, so the parallel kernels here
take a lock (kernels from several Python threads run one at a time); a forked child
makes a new one, since a thread of the parent may have held it inside a kernel at the
fork.  ``numba.set_num_threads`` sets their thread count.

Cache: every compiled function here is kept in Numba's on-disk cache, so only the
first process compiles (``warm_up`` compiles or loads them all; ``cache_dir`` says
where they live).  Numba keeps them next to this file (``__pycache__``) when that is
writable, else in the user's cache folder (``~/.cache/numba``); ``NUMBA_CACHE_DIR``
overrides both.  When neither is writable (a read-only install and home), this module
points Numba at a folder in the temporary directory before anything is compiled.

Compile time: ``watch_compiles`` (``compile_watch.py``) counts the seconds Numba spends
compiling and notes the first compile; every fit's ``Recorder`` runs one while numba is
loaded, so that the compile time stays out of the epochs' times.
"""
# config first: the threading layer and the cache folder, before anything is compiled.
from .. import program as _registry
from . import config
from . import pointwise as _pointwise
from .compile_watch import CompileWatch, watch_compiles
from .config import PARALLEL_MIN_MACS, fallback_cache_dir
from .gemm import (
    NARROW_MAX_N,
    _backward_input,
    _gemm,
    bias_backward,
    linear_backward,
    linear_forward,
    matmul,
    matmul_backward_input,
    matmul_backward_weight,
)
from .pointwise import binary_accuracy, multiclass_accuracy, sgd_update, threading_layer
from .program import _gather_rows, train_epoch

#: The activations' and losses' entries, by their registry records' kernel names.
_BY_RECORD = {name: getattr(_pointwise, name) for kind in (
    *(k for k in _registry.activations() if k.code in _registry.BUILT_IN_LAYERS),
    *(k for k in _registry.LOSSES.values() if k.code in _registry.BUILT_IN_LOSSES))
    for name in (kind.forward, kind.backward)}
globals().update(_BY_RECORD)

__all__ = [
    "fallback_cache_dir", "NARROW_MAX_N", "PARALLEL_MIN_MACS", "matmul", "matmul_backward_input",
    "matmul_backward_weight", "bias_backward", "linear_forward", "linear_backward",
    *_BY_RECORD, "sgd_update", "binary_accuracy",
    "multiclass_accuracy", "threading_layer", "train_epoch", "CompileWatch", "watch_compiles",
    "_gemm", "_backward_input", "_gather_rows"]


def __getattr__(name):
    if name == "_PARALLEL":  # the lock of the moment: a forked child makes a new one
        return config._PARALLEL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
