"""The training-shape products, each runner in its own process, rounds taken in turn.

    python benchmarks/products.py [--runners numpy,torch,c,c-api,numba] [--rounds 5]
                                  [--calls 100] [--checks]

Runners: ``numpy`` (``np.matmul`` with ``out=``; its process runs without
OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, so OpenBLAS picks its kernels as on a user's
machine), ``torch`` (``torch.matmul`` with ``out=``, its own threads), ``c`` (the C
kernel through cffi with no checks, ``c_ext.PRECHECKED``), ``c-api``
(``backends.get("c")``, the contract's checks; the NaN/Inf scans too with
``--checks``), ``numba`` (``backends.get("numba")`` the same way).  Each runner is one child process holding its arrays (as NumPy allocates
them) and warm; the parent asks each in turn, product by product, for ``--calls``
calls, ``--rounds`` times.  A figure is the median over rounds of the median call, in
microseconds, with the range over rounds; the ratios compare medians of the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from fastsgd.bench.stats import SETTLE_S

#: (name, kernel, the shapes of its two inputs): matmul (M, K) @ (K, N); x.T @ dy with
#: x (B, I), dy (B, O); dy @ w.T with dy (B, O), w (I, O).
PRODUCTS = [
    ("matmul 64x784x128", "matmul", (64, 784), (784, 128)),
    ("matmul 256x784x128", "matmul", (256, 784), (784, 128)),
    ("x.T @ dy 64x784x128", "matmul_backward_weight", (64, 784), (64, 128)),
    ("x.T @ dy 256x784x128", "matmul_backward_weight", (256, 784), (256, 128)),
    ("dy @ w.T 256x128x784", "matmul_backward_input", (256, 128), (784, 128)),
]
RUNNERS = ("numpy", "torch", "c", "c-api", "numba")


# ------------------------------------------------------------------ child side
def _calls(runner: str, checks: bool):
    """{kernel: f(a, b, out)} for ``runner``, and the output shape of each kernel."""
    import numpy as np
    if runner == "numpy":
        return {"matmul": lambda a, b, out: np.matmul(a, b, out=out),
                "matmul_backward_weight": lambda x, dy, out: np.matmul(x.T, dy, out=out),
                "matmul_backward_input": lambda dy, w, out: np.matmul(dy, w.T, out=out)}
    if runner == "torch":
        import torch
        t = torch.from_numpy
        return {"matmul": lambda a, b, out: torch.matmul(t(a), t(b), out=t(out)),
                "matmul_backward_weight": lambda x, dy, out: torch.matmul(t(x).T, t(dy),
                                                                          out=t(out)),
                "matmul_backward_input": lambda dy, w, out: torch.matmul(t(dy), t(w).T,
                                                                         out=t(out))}
    if runner == "c":
        from fastsgd.backends.c_ext import PRECHECKED  # the C calls, no checks
        return {k: (lambda f: lambda *arrays: f(*arrays, 0))(PRECHECKED[k]) for k in
                ("matmul", "matmul_backward_weight", "matmul_backward_input")}
    from fastsgd import backends
    backend = backends.get("c" if runner == "c-api" else runner)
    calls = {k: getattr(backend, k) for k in
             ("matmul", "matmul_backward_weight", "matmul_backward_input")}
    if checks:
        return calls
    quiet = backends.skip_value_checks
    return {k: (lambda f: lambda *args: _quietly(quiet, f, args))(f) for k, f in calls.items()}


def _quietly(quiet, f, args):
    with quiet():
        return f(*args)


def _out_shape(kernel, a, b):
    return {"matmul": (a[0], b[1]), "matmul_backward_weight": (a[1], b[1]),
            "matmul_backward_input": (a[0], b[0])}[kernel]


def serve(runner: str, checks: bool) -> None:
    """Answer requests on stdin, one JSON line each: {"product": i, "calls": n} ->
    the median seconds of one call, on stdout."""
    import numpy as np
    calls = _calls(runner, checks)
    rng = np.random.default_rng(0)
    arrays = []
    for _, kernel, sa, sb in PRODUCTS:
        a = rng.standard_normal(sa).astype(np.float32)
        b = rng.standard_normal(sb).astype(np.float32)
        out = np.empty(_out_shape(kernel, sa, sb), np.float32)
        arrays.append((calls[kernel], a, b, out))
        for _ in range(20):  # warm: compiled, threads started, caches filled
            calls[kernel](a, b, out)
    print(json.dumps({"ready": runner}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        f, a, b, out = arrays[request["product"]]
        times = []
        for _ in range(request["calls"]):
            start = time.perf_counter()
            f(a, b, out)
            times.append(time.perf_counter() - start)
        print(json.dumps({"median": statistics.median(times)}), flush=True)


# ----------------------------------------------------------------- parent side
def _start(runner: str, checks: bool) -> subprocess.Popen:
    env = dict(os.environ)
    if runner == "numpy":
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    argv = [sys.executable, __file__, "--serve", runner] + (["--checks"] if checks else [])
    child = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=env)
    ready = child.stdout.readline()
    if not ready:
        raise SystemExit(f"products: the {runner} runner did not start")
    return child


def _ask(child, product: int, calls: int) -> float:
    child.stdin.write(json.dumps({"product": product, "calls": calls}) + "\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())["median"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--checks", action="store_true",
                        help="the API runners keep the contract's NaN/Inf scans on")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.checks)
        return 0
    runners = [r for r in args.runners.split(",") if r]
    unknown = sorted(set(runners) - set(RUNNERS))
    if unknown or args.rounds < 1 or args.calls < 1:
        parser.error(f"--runners: expected names among {', '.join(RUNNERS)}; --rounds and "
                     f"--calls at least 1" + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    children = {r: _start(r, args.checks) for r in runners}
    medians = {(p, r): [] for p in range(len(PRODUCTS)) for r in runners}
    try:
        for _ in range(args.rounds):
            for p in range(len(PRODUCTS)):
                for r in runners:
                    time.sleep(SETTLE_S)  # the last runner's threads (OpenBLAS's spin) settle
                    medians[p, r].append(_ask(children[r], p, args.calls))
    finally:
        for child in children.values():
            child.stdin.close()
            child.wait()
    pairs = [(mine, peer) for mine in ("c", "c-api") for peer in ("numpy", "torch")
             if mine in runners and peer in runners]
    print(f"us per call: median over {args.rounds} rounds of the median of {args.calls} "
          f"calls [min-max over rounds]; 'A vs B': B's median / A's (above 1: A is faster)")
    print(" | ".join(["product"] + runners + [f"{a} vs {b}" for a, b in pairs]))
    for p, (name, *_rest) in enumerate(PRODUCTS):
        mid = {r: statistics.median(medians[p, r]) * 1e6 for r in runners}
        cells = [name] + [f"{mid[r]:.1f} [{min(medians[p, r]) * 1e6:.0f}-"
                          f"{max(medians[p, r]) * 1e6:.0f}]" for r in runners]
        cells += [f"{mid[b] / mid[a]:.2f}x" for a, b in pairs]
        print(" | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
