"""The machine a benchmark ran on: CPU, ISA, threads, OpenBLAS, and the peak rates compare with.

The fp32 peak is *measured*, never computed: each probe in ``PEAK_PROBES``
returns a ``Peak`` (or ``None`` where it cannot run) and the best one is
``peak_gflops``.  The probes: NumPy's sgemm at 2048^3, run in a child
process with ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` removed from its
environment (a machine may set them to force slower OpenBLAS kernels; this
process keeps them), and the C extension's FMA-chain loop
(``fastsgd.backends.c_ext.peak_gflops``), also in a child process, where it is
built.  Another probe is one more entry of ``PEAK_PROBES``.

From the peak and the flops one core does per cycle (a table of known
microarchitectures) follows an estimate of the effective clock.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

#: Variables that make OpenBLAS pick other kernels or blockings than its own choice.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
#: Side and repeats of the sgemm peak probe.
PEAK_N, PEAK_REPEATS = 2048, 10


@dataclass(frozen=True)
class Peak:
    """A measured fp32 rate: GFLOP/s, how it was obtained, and the BLAS kernel used if any."""

    gflops: float
    source: str
    architecture: str | None = None


# ------------------------------------------------------------------- CPU
def cpu_summary() -> dict:
    """CPU name (LLVM's), usable core count and the SIMD features kernels care about."""
    from llvmlite import binding
    features = binding.get_host_cpu_features()
    wanted = ["sse4.2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "neon"]
    return {"name": binding.get_host_cpu_name(), "cores": usable_cores(),
            "features": [f for f in wanted if features.get(f)]}


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpuinfo() -> dict:
    """The first processor's fields of /proc/cpuinfo (Linux; empty elsewhere)."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if not line.strip():
                break
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except OSError:
        pass
    return fields


def flops_per_cycle(vendor: str, family: str, llvm_name: str, features) -> tuple[int, str]:
    """fp32 flops one core retires per cycle at best, and the assumption behind it."""
    features = set(features)
    if "avx512f" in features:
        if llvm_name == "znver4" or (vendor == "AuthenticAMD" and family == "25"):
            return 32, "Zen 4: 512-bit FMAs on 2 pipes of 8 fp32 lanes x 2"
        if llvm_name.startswith("znver") or vendor == "AuthenticAMD":
            return 64, "Zen 5: 2 FMA pipes x 16 fp32 lanes x 2"
        return 64, "AVX-512: 2 FMA units x 16 fp32 lanes x 2 (1-unit parts do half)"
    if "fma" in features:
        return 32, "AVX2: 2 FMA units x 8 fp32 lanes x 2"
    if "avx" in features:
        return 16, "AVX: 8 fp32 lanes x (1 add + 1 multiply)"
    if "neon" in features or platform.machine() in ("arm64", "aarch64"):
        return 16, "NEON: 2 FMA pipes x 4 fp32 lanes x 2"
    return 8, "SSE: 4 fp32 lanes x (1 add + 1 multiply)"


def isa(features) -> str:
    """The widest SIMD the CPU runs: avx512, avx2, avx, neon or sse."""
    for name, flag in (("avx512", "avx512f"), ("avx2", "avx2"), ("avx", "avx"), ("neon", "neon")):
        if flag in features:
            return name
    return "sse"


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (other work on the machine skews timings)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


# -------------------------------------------------------------- OpenBLAS
def openblas() -> dict | None:
    """NumPy's BLAS in this process: ``{"version", "architecture", "threads"}`` (threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib["user_api"] == "blas":
            return {"library": lib["internal_api"], "version": lib.get("version"),
                    "architecture": lib.get("architecture"), "threads": lib.get("num_threads")}
    return None


def openblas_warning(here: str | None, free: str | None, env=None) -> str | None:
    """Why NumPy's matmuls here may be slower than on a user's machine, or ``None``.

    ``here``: the kernel OpenBLAS uses in this process; ``free``: the one it
    picks without ``OPENBLAS_OVERRIDES``.
    """
    env = os.environ if env is None else env
    forced = [f"{k}={env[k]}" for k in OPENBLAS_OVERRIDES if k in env]
    if not forced:
        return None
    if here and free and here != free:
        return (f"{' and '.join(forced)} make NumPy's OpenBLAS run its {here} kernels here instead "
                f"of {free}: the numpy rows are slower than without them; the peak was measured "
                f"without them")
    return (f"{' and '.join(forced)} set: NumPy's OpenBLAS may run slower here than without "
            f"them; the peak was measured without them")


# ------------------------------------------------------------------ peak
def sgemm_seconds(n: int = PEAK_N, repeats: int = PEAK_REPEATS) -> float:
    """The fastest of ``repeats`` float32 ``n^3`` matmuls by NumPy in this process."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    np.matmul(a, b, out=out)   # warm-up: threads started, pages touched
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return best


def child_env(strip_openblas: bool = True, env=None) -> dict:
    """``env`` (default: this process's environment) for a child that imports fastsgd;
    with ``strip_openblas``, less ``OPENBLAS_OVERRIDES``.  ``env`` itself is not changed."""
    env = dict(os.environ if env is None else env)
    for key in OPENBLAS_OVERRIDES if strip_openblas else ():
        env.pop(key, None)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run_probe(what: str, argv: list[str], timeout: float) -> dict:
    """The JSON line that ``python -m fastsgd.bench.worker ARGV`` prints last, run in
    ``child_env()``; ``RuntimeError`` naming the ``what`` probe when it fails."""
    cmd = [sys.executable, "-m", "fastsgd.bench.worker", *argv]
    done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} probe failed: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def numpy_sgemm_peak(n: int = PEAK_N, repeats: int = PEAK_REPEATS, timeout: float = 120) -> Peak:
    """NumPy's best ``n^3`` sgemm in a child process free of ``OPENBLAS_OVERRIDES``."""
    result = _run_probe("peak", ["peak", str(n), str(repeats)], timeout)
    arch = result.get("architecture")
    return Peak(2.0 * n ** 3 / result["seconds"] / 1e9,
                f"NumPy sgemm {n}^3, best of {repeats}, in a child process without "
                f"{'/'.join(OPENBLAS_OVERRIDES)} (OpenBLAS {arch or 'kernel unknown'}, "
                f"{result.get('threads') or '?'} threads)", arch)


def c_fma_peak(seconds: float = 0.3, timeout: float = 60) -> Peak | None:
    """The C extension's FMA-chain probe (``c_ext.peak_gflops``) in a child process;
    ``None`` where the C extension is not built."""
    result = _run_probe("FMA", ["fma", str(seconds)], timeout)
    if "unavailable" in result:
        return None
    return Peak(result["gflops"], f"C {result['isa']} FMA chains on {result['threads']} threads, "
                                  f"best of its rounds in {seconds} s, in a child process")


#: name -> a function returning a ``Peak`` (or ``None`` where it cannot run).  The best wins:
#: an FMA loop reaches the arithmetic peak, a large sgemm some 85-95% of it.
PEAK_PROBES: dict[str, Callable[[], Peak | None]] = {"numpy-sgemm": numpy_sgemm_peak,
                                                      "c-fma": c_fma_peak}


def measure_peak(probes: dict | None = None) -> tuple[Peak, list[dict]]:
    """(the best peak, every probe's result or error) over ``probes`` (default ``PEAK_PROBES``)."""
    results, best = [], None
    for name, probe in (PEAK_PROBES if probes is None else probes).items():
        try:
            peak = probe()
        except Exception as exc:   # a broken probe loses its entry, not the run
            results.append({"probe": name, "error": f"{type(exc).__name__}: {exc}"})
            continue
        if peak is None:
            continue
        results.append({"probe": name, **asdict(peak)})
        if best is None or peak.gflops > best.gflops:
            best = peak
    if best is None:   # no probe ran: this process's sgemm, whatever its environment forces
        seconds = sgemm_seconds()
        best = Peak(2.0 * PEAK_N ** 3 / seconds / 1e9,
                    f"NumPy sgemm {PEAK_N}^3 in this process (the probes failed)")
        results.append({"probe": "numpy-sgemm-here", **asdict(best)})
    return best, results


def copy_bandwidth(mib: int = 64, repeats: int = 5) -> float:
    """GB/s of the fastest of ``repeats`` NumPy copies of ``mib`` MiB (read + write), one thread."""
    src = np.ones(mib << 18, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * src.nbytes / best / 1e9


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return importlib.import_module(module).__version__
    except Exception as exc:
        return f"broken: {type(exc).__name__}"


@functools.lru_cache(maxsize=1)
def machine_info() -> dict:
    """The machine, library versions, thread counts, the measured peak and copy bandwidth.

    Measured once per process.  Peer versions are read from their packages
    without starting their thread pools.
    """
    import numba
    cpu, fields = cpu_summary(), _cpuinfo()
    vendor, family = fields.get("vendor_id", ""), fields.get("cpu family", "")
    per_cycle, basis = flops_per_cycle(vendor, family, cpu["name"], cpu["features"])
    peak, probes = measure_peak()
    blas = openblas()
    reported = float(fields["cpu MHz"]) / 1000 if "cpu MHz" in fields else None
    info = {
        "cpu": fields.get("model name") or platform.processor() or cpu["name"],
        "cpu_family": family or None, "llvm_cpu": cpu["name"], "cores": cpu["cores"],
        "features": cpu["features"], "isa": isa(cpu["features"]),
        "flops_per_cycle": per_cycle, "flops_per_cycle_basis": basis,
        "clock_ghz_reported": reported,
        "clock_ghz_estimate": peak.gflops / (cpu["cores"] * per_cycle),
        "platform": platform.platform(), "python": platform.python_version(),
        "numpy": np.__version__, "numba": numba.__version__,
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "torch": _version("torch"), "jax": _version("jax"),
        "blas": blas, "openblas_env": {k: os.environ[k] for k in OPENBLAS_OVERRIDES
                                       if k in os.environ},
        "openblas_warning": openblas_warning(
            blas and blas["architecture"],
            next((p.get("architecture") for p in probes if p["probe"] == "numpy-sgemm"), None)),
        "peak_gflops": peak.gflops, "peak_source": f"measured: {peak.source}",
        "peak_probes": probes, "peak_measurements": [peak.gflops],
        "peak_measured_at": time.time(),
        "bandwidth_gbs": copy_bandwidth(),
        "bandwidth_source": "measured: NumPy copy of 64 MiB (read + write), best of 5, one thread",
        "load_average": load_average(),
        "thread_limiting": "threadpoolctl" if importlib.util.find_spec("threadpoolctl")
        else "off (threadpoolctl is not installed)",
    }
    return info


def remeasure_peak(info: dict, after_s: float = 30.0) -> dict:
    """Measure the peak again, unless it was measured less than ``after_s`` seconds ago,
    and keep the best in ``info`` (changed in place).

    A peak measured while other work ran reads low and makes rows exceed it; another
    measurement at the end of a long run lowers that risk.
    """
    if time.time() - info.get("peak_measured_at", 0.0) < after_s:
        return info
    peak, probes = measure_peak()
    info["peak_measured_at"] = time.time()
    info["peak_measurements"] = info.get("peak_measurements", []) + [peak.gflops]
    if peak.gflops > info["peak_gflops"]:
        per_core = info["cores"] * info["flops_per_cycle"]
        info.update(peak_gflops=peak.gflops, peak_source=f"measured: {peak.source}",
                    peak_probes=probes, clock_ghz_estimate=peak.gflops / per_core)
    n = len(info["peak_measurements"])
    info["peak_source"] = info["peak_source"].split(" [")[0] + f" [the best of {n} measurements]"
    return info
