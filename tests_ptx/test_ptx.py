"""Every CUDA kernel compiles to PTX for the H100 (sm_90) and assembles, with no GPU needed.

Run as its own pytest invocation, without the CUDA simulator:

    pytest tests_ptx -q

Needs numba-cuda with NVVM and NVRTC (``pip install 'fastsgd[cuda-ptx]'``); the
assembly step also needs ``ptxas`` from a CUDA toolkit on PATH, and a kernel with
a grid sync (it calls the device runtime's cooperative-groups functions) is
assembled as relocatable code and linked against ``libcudadevrt.a`` with
``nvlink``, as Numba does on a GPU.  Whatever is missing is a skip with the
reason.  The kernels and their argument types come from
``fastsgd.backends.cuda.KERNEL_SIGNATURES`` (filled by each kernel's ``@kernel``
decorator), which a test below checks against the kernels the package defines.
"""
import functools
import os
import re
import shutil
import subprocess

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
    pytest.skip("the CUDA simulator is on; PTX needs the real compiler (unset NUMBA_ENABLE_CUDASIM)",
                allow_module_level=True)
pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install 'fastsgd[cuda-ptx]')")

from fastsgd.backends import cuda as cuda_backend

CC = (9, 0)
ARCH = f"sm_{CC[0]}{CC[1]}"
CASES = [(name, signature) for name, signatures in cuda_backend.KERNEL_SIGNATURES.items()
         for signature in signatures]
MISSING_TOOLS = re.compile(r"nvrtc|nvvm|libdevice|cuda toolkit|cannot be found", re.IGNORECASE)
#: The device-runtime functions a grid sync compiles to: PTX calling them must be linked.
GRID_SYNC = ("cudaCGGetIntrinsicHandle", "cudaCGSynchronize")


@functools.lru_cache(maxsize=None)
def compile_ptx(name, signature):
    """PTX for one kernel (compiled once), or a skip when the CUDA compiler libraries are missing."""
    kernel = cuda_backend.kernels()[name]
    try:
        ptx, _ = cuda_backend.cuda.compile_ptx(kernel.py_func, signature, cc=CC)
    except Exception as exc:  # a missing NVRTC/NVVM is an environment limit, not a kernel bug
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if MISSING_TOOLS.search(str(exc)) or MISSING_TOOLS.search(type(exc).__name__):
            pytest.skip(f"the CUDA compiler is unavailable: {first_line}")
        raise
    return ptx


def test_the_signature_table_covers_every_kernel():
    """Every kernel has signatures for PTX, or is listed as device-only with the reason."""
    assert sorted(cuda_backend.kernels()) == sorted(
        [*cuda_backend.KERNEL_SIGNATURES, *cuda_backend.DEVICE_ONLY_KERNELS])


def cudadevrt() -> str | None:
    """The device runtime's static library (where Numba finds it), or None."""
    try:
        from numba.cuda.cudadrv.libs import get_cudalib
        path = get_cudalib("cudadevrt", static=True)
    except Exception:  # an older numba-cuda, or no toolkit: look where CUDA is usually installed
        path = None
    for candidate in [path] + [os.path.join(root, lib, "libcudadevrt.a")
                               for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"),
                                            "/usr/local/cuda") if root for lib in ("lib64", "lib")]:
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def run(*command):
    return subprocess.run([str(c) for c in command], capture_output=True, text=True)


def assemble(ptx, name, tmp_path):
    """ptxas the PTX (and nvlink it with cudadevrt when it calls the device runtime); the result."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not on PATH (install a CUDA toolkit to assemble the PTX)")
    source = tmp_path / f"{name}.ptx"
    source.write_text(ptx)
    if not any(fn in ptx for fn in GRID_SYNC):
        return run(ptxas, f"-arch={ARCH}", source, "-o", tmp_path / f"{name}.cubin")
    nvlink, library = shutil.which("nvlink"), cudadevrt()
    if nvlink is None or library is None:
        pytest.skip("a grid-sync kernel links against libcudadevrt.a with nvlink; a CUDA toolkit "
                    "providing both is not installed here")
    result = run(ptxas, "-c", f"-arch={ARCH}", source, "-o", tmp_path / f"{name}.o")
    if result.returncode:
        return result
    return run(nvlink, f"-arch={ARCH}", tmp_path / f"{name}.o", f"-L{os.path.dirname(library)}",
               "-lcudadevrt", "-o", tmp_path / f"{name}.cubin")


@pytest.mark.parametrize("name, signature", CASES, ids=[f"{n}:{i}" for i, (n, _) in enumerate(CASES)])
def test_kernel_compiles_to_ptx_and_assembles(name, signature, tmp_path):
    ptx = compile_ptx(name, signature)
    assert f".target {ARCH}" in ptx
    assert ".entry" in ptx
    result = assemble(ptx, name, tmp_path)
    if result.returncode and "Unsupported .version" in result.stderr:
        pytest.skip(f"ptxas on PATH is older than the PTX numba-cuda emits: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr


def test_the_program_kernel_compiles_with_its_grid_syncs():
    """The fused epoch builds without a driver, and its phases are separated by real grid syncs."""
    if "_train_program_kernel" in cuda_backend.DEVICE_ONLY_KERNELS:
        pytest.skip(f"device only: {cuda_backend.DEVICE_ONLY_KERNELS['_train_program_kernel']}")
    ptx = compile_ptx("_train_program_kernel", cuda_backend.KERNEL_SIGNATURES["_train_program_kernel"][0])
    assert all(fn in ptx for fn in GRID_SYNC)
    assert ptx.count("cudaCGSynchronize,") >= 4  # gather | forward | loss | backward, at least

