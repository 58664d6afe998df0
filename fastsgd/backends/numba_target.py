"""The CPU features Numba compiles the numba backend for: 512-bit vectors on AVX-512.

LLVM's tuning for Intel's AVX-512 server cores prefers 256-bit vectors
(``prefer-256-bit``), so Numba's loops run 8 floats wide where 16 fit.  Importing this
module (``numba_math`` and ``numba_cpu`` do, before anything is compiled) sets
Numba's CPU features to the host's less that preference, unless NUMBA_CPU_NAME or
NUMBA_CPU_FEATURES is given or the CPU lacks AVX-512.  It holds for every Numba
function compiled in the process after it.  Numba keys its disk cache on the
features, so a process whose Numba compiled before this import keeps its own
features, consistently.
"""
import numba


def wide_vector_features(host_features, cpu_name, cpu_features):
    """The LLVM feature string that lets loops use 512-bit vectors, or None to leave
    Numba's own choice (no AVX-512, or NUMBA_CPU_NAME / NUMBA_CPU_FEATURES given).

    ``host_features``: llvmlite's ``get_host_cpu_features()`` map.  The products
    ran 1.3x faster 16 floats wide than 8 wide (256x784x128 on a 2-core Xeon with
    AVX-512: 74 -> 97 GFLOP/s).
    """
    if cpu_name is not None or cpu_features is not None or not host_features.get("avx512f"):
        return None
    return host_features.flatten() + ",-prefer-256-bit"


def _use_wide_vectors():
    """Set Numba's CPU features to ``wide_vector_features`` of this machine."""
    from llvmlite import binding
    try:
        host = binding.get_host_cpu_features()
    except RuntimeError:   # a platform llvmlite cannot query
        return
    features = wide_vector_features(host, numba.config.CPU_NAME, numba.config.CPU_FEATURES)
    if features is not None:
        numba.config.CPU_FEATURES = features


_use_wide_vectors()
