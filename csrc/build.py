"""cffi builder for ``fastsgd._ckernels``, the compiled half of the C backend.

``setup.py`` names it (``cffi_modules=["csrc/build.py:ffibuilder"]``), so
``pip install .`` and ``pip install -e .`` compile it; ``python csrc/build.py``
builds it in place for development.  The cdef is ``kernels.h`` itself, less its
preprocessor lines, so the header is the single list of prototypes.

Flags: ``-O3 -pthread -fopenmp-simd``, never ``-march=native``: the binary must run on any x86-64.
The compute functions carry their own AVX-512 / AVX2 versions instead, picked at run
time (``internal.h``, ``gemm.c``).  ``-ffp-contract=fast`` lets GCC fuse multiply-adds
into FMA there; ``-fno-trapping-math`` (nothing here reads floating-point exception
flags) lets it compute both sides of a select, so the branch-free loops vectorize
without masking.  No OpenMP runtime is linked (``-fopenmp-simd`` only reads the
``omp simd`` hints): the threads are the library's own pool (``pool.c``), which sleeps
soon after each job and survives ``fork()``.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.realpath(__file__))
ROOT = os.path.dirname(HERE)

SOURCES = ["gemm.c", "pack.c", "products.c", "pointwise.c", "train.c", "narrow.c", "pool.c", "peak.c"]
HEADERS = ["kernels.h", "internal.h", "gemm_kernel.h"]
COMPILE_ARGS = ["-O3", "-pthread", "-fopenmp-simd", "-ffp-contract=fast", "-fno-trapping-math"]
LINK_ARGS = ["-pthread"]


def cdef_from_header(path):
    """The header's text without preprocessor lines (cffi's cdef takes no ``#``)."""
    with open(path, encoding="utf-8") as f:
        return "".join(line for line in f if not line.lstrip().startswith("#"))


def make_builder(paths_from=None):
    """The FFI builder; source paths relative to ``paths_from`` (absolute if None)."""
    def path(name):
        full = os.path.join(HERE, name)
        return os.path.relpath(full, paths_from) if paths_from else full

    builder = FFI()
    builder.cdef(cdef_from_header(os.path.join(HERE, "kernels.h")))
    builder.set_source(
        "fastsgd._ckernels",
        '#include "kernels.h"',
        sources=[path(name) for name in SOURCES],
        depends=[path(name) for name in HEADERS],
        include_dirs=[path(".")],
        extra_compile_args=COMPILE_ARGS,
        extra_link_args=LINK_ARGS,
    )
    return builder


# setuptools runs this file from the project root and wants relative source paths.
ffibuilder = make_builder(ROOT if os.path.realpath(os.getcwd()) == ROOT else None)

if __name__ == "__main__":
    # Development build, the same module that `pip install -e .` makes: compiled under
    # build/, then moved into fastsgd/ under the name setuptools gives it (cffi modules
    # use the stable ABI).  Older copies are unlinked first, never overwritten in place:
    # a running process may have them mapped.
    import importlib.machinery
    import shutil

    built = make_builder().compile(tmpdir=os.path.join(ROOT, "build", "cffi"),
                                   verbose="-q" not in sys.argv)
    name = os.path.basename(built)
    if ".abi3.so" in importlib.machinery.EXTENSION_SUFFIXES:
        name = "_ckernels.abi3.so"
    package = os.path.join(ROOT, "fastsgd")
    for old in os.listdir(package):
        if old.startswith("_ckernels.") and old.endswith((".so", ".pyd")):
            os.remove(os.path.join(package, old))
    shutil.copy(built, os.path.join(package, name))
