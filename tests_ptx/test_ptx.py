"""Every CUDA kernel compiles to PTX for the H100 (sm_90) and assembles, with no GPU needed.

Run as its own pytest invocation, without the CUDA simulator:

    pytest tests_ptx -q

Needs numba-cuda with NVVM and NVRTC (``pip install 'fastsgd[cuda-ptx]'``); the
assembly step also needs ``ptxas`` from a CUDA toolkit on PATH.  Whatever is
missing is a skip with the reason.  The kernels and their argument types come
from ``fastsgd.backends.cuda.KERNEL_SIGNATURES``, which a test below checks
against the kernels the module defines.
"""
import os
import re
import shutil
import subprocess

import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") != "0":
    pytest.skip("the CUDA simulator is on; PTX needs the real compiler (unset NUMBA_ENABLE_CUDASIM)",
                allow_module_level=True)
pytest.importorskip("numba_cuda", reason="numba-cuda is not installed (pip install 'fastsgd[cuda-ptx]')")

from fastsgd.backends import cuda as cuda_backend  # noqa: E402

CC = (9, 0)
ARCH = f"sm_{CC[0]}{CC[1]}"
CASES = [(name, signature) for name, signatures in cuda_backend.KERNEL_SIGNATURES.items()
         for signature in signatures]
MISSING_TOOLS = re.compile(r"nvrtc|nvvm|libdevice|cuda toolkit|cannot be found", re.IGNORECASE)


def compile_ptx(name, signature):
    """PTX for one kernel, or a skip when the CUDA compiler libraries are missing."""
    kernel = getattr(cuda_backend, name)
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


@pytest.mark.parametrize("name, signature", CASES, ids=[f"{n}:{i}" for i, (n, _) in enumerate(CASES)])
def test_kernel_compiles_to_ptx_and_assembles(name, signature, tmp_path):
    ptx = compile_ptx(name, signature)
    assert f".target {ARCH}" in ptx
    assert ".entry" in ptx
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        pytest.skip("ptxas is not on PATH (install a CUDA toolkit to assemble the PTX)")
    source = tmp_path / f"{name}.ptx"
    source.write_text(ptx)
    result = subprocess.run([ptxas, f"-arch={ARCH}", str(source), "-o", str(tmp_path / f"{name}.cubin")],
                            capture_output=True, text=True)
    if result.returncode and "Unsupported .version" in result.stderr:
        pytest.skip(f"ptxas on PATH is older than the PTX numba-cuda emits: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
