"""``fastsgd info`` (the backends and the machine), ``fastsgd warmup`` (fill numba's cache)
and ``fastsgd bench`` (time the kernels)."""
from __future__ import annotations

import os
import platform

import numpy as np

from .. import backends
from .options import UsageError, version

#: run_bench's options that are flags of the same name.
_BENCH_OPTIONS = ("kernels", "backends", "sizes", "epochs", "samples", "data", "budget")


def run_info(args) -> int:
    """``fastsgd info``: backends, versions, threading layer, CPU features."""
    import numba

    from ..bench.machine import cpu_summary
    print("backends:")
    default = None
    for name, status in backends.available().items():
        if status is True and default is None:
            default = name
        print(f"  {name:<8} {'available' if status is True else f'unavailable ({status})'}")
    print(f"default backend: {os.environ.get('FASTSGD_BACKEND') or default}"
          f"{' (from FASTSGD_BACKEND)' if os.environ.get('FASTSGD_BACKEND') else ''}")
    print(f"fastsgd {version()}, python {platform.python_version()}, numpy {np.__version__}, "
          f"numba {numba.__version__}")
    runtime = backends.runtime_info()
    if "c" in runtime:
        print(f"c backend: matmul kernel {runtime['c']['isa']}, threads: {runtime['c']['threads']}")
    if "numba" in runtime:
        print(f"numba threading layer: {runtime['numba']['threading_layer']}, "
              f"threads: {runtime['numba']['threads']}")
    cpu = cpu_summary()
    print(f"cpu: {cpu['name']}, {cpu['cores']} cores, features: {' '.join(cpu['features']) or 'none'}")
    return 0


def run_warmup(args) -> int:
    """``fastsgd warmup``: compile (or load) every numba kernel; say where the cache lives."""
    result = backends.warm_up()
    compiled = len(result["compiled"])
    if compiled:
        print(f"numba: compiled {compiled} functions in {result['seconds']:.1f} s; "
              "later processes load them from the cache")
    else:
        print(f"numba: nothing to compile, every function loaded from the cache in "
              f"{result['seconds']:.1f} s")
    print(f"numba cache: {result['cache_dir']}")
    return 0


def _flag_error(exc: ValueError) -> Exception:
    """``"sizes: ..."`` from the library becomes ``UsageError("--sizes: ...")``."""
    name, sep, rest = str(exc).partition(": ")
    return UsageError(f"--{name}: {rest}") if sep and name in _BENCH_OPTIONS else exc


def run_bench_command(args) -> int:
    """``fastsgd bench``: validate and time, print the table, write --json/--plot.

    Exit code 1 when a runner's result did not match the reference.
    """
    from .. import bench
    options = {name: getattr(args, name) for name in _BENCH_OPTIONS}
    try:
        bench.parse_options(**options)
    except ValueError as exc:
        raise _flag_error(exc) from None
    rows = bench.run_bench(**options, json_path=args.json, plot_path=args.plot,
                           progress=not args.no_progress)
    bench.print_table(rows, bench.machine_info())
    return 0 if all(row["status"] == "ok" for row in rows) else 1
