"""``fastsgd info`` (the backends and the machine), ``fastsgd warmup`` (fill numba's cache)
and ``fastsgd bench`` (time the kernels)."""
from __future__ import annotations

import os
import platform
import sys

import numpy as np

from .. import backends, files
from .options import UsageError, check_output, check_plot, say_written, version

#: run_bench's options that are flags of the same name.
_BENCH_OPTIONS = ("kernels", "backends", "sizes", "epochs", "samples", "data", "budget")
#: ``fastsgd bench``'s defaults, which finish in about a minute on 2 cores: the kernels at
#: the training shapes of batch 64, and 3 timed epochs of 10,000 samples at batch 64 ...
QUICK = {"sizes": "64", "epochs": 3, "samples": 10_000}
#: ... and ``--full``'s: both batch sizes and the large shapes, 5 epochs of 60,000.
FULL = {"sizes": "small,large", "epochs": 5, "samples": 60_000}
#: Peers whose compilation alone can take a minute: run by default only with --full.
COMPILED_PEERS = ("torch.compile", "jax.jit", "jax.scan")


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
    defaults = FULL if args.full else QUICK
    options = {name: getattr(args, name) for name in _BENCH_OPTIONS}
    options.update({name: value for name, value in defaults.items() if options[name] is None})
    if options["backends"] is None and not args.full:
        options["backends"] = [name for name in bench.runners() if name not in COMPILED_PEERS]
    try:
        parsed = bench.parse_options(**options)
    except ValueError as exc:
        raise _flag_error(exc) from None
    if "epoch" not in parsed["kernels"]:
        for name in ("epochs", "samples", "data"):
            if getattr(args, name) not in (None, "random"):
                raise UsageError(f"--{name}: does not apply without the epoch rows (--kernels "
                                 f"{args.kernels} has no epoch)")
    if args.json:
        check_output("--json", args.json)
    if args.plot:
        check_plot("--plot", args.plot)
    created = {path: files.missing_folders(path) for path in (args.json, args.plot) if path}
    rows = bench.run_bench(**options, json_path=args.json, plot_path=args.plot,
                           progress=not args.no_progress)
    bench.print_table(rows, bench.machine_info())
    for path, folders in created.items():
        say_written(path, folders, sys.stdout)
    return 0 if all(row["status"] == "ok" for row in rows) else 1
