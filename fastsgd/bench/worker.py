"""Child processes of ``fastsgd bench``: the peak probe and one epoch runner each.

    python -m fastsgd.bench.worker peak N REPEATS   # best N^3 sgemm: {"seconds", "architecture", "threads"}
    python -m fastsgd.bench.worker fma SECONDS      # the C FMA probe: {"gflops", "isa", "threads"}
    python -m fastsgd.bench.worker epochs SPEC_JSON # lockstep.serve(EpochSpec): epochs on request
"""
import json
import sys


def main(argv) -> int:
    if len(argv) == 3 and argv[0] == "peak":
        from .machine import openblas, sgemm_seconds
        seconds = sgemm_seconds(int(argv[1]), int(argv[2]))
        blas = openblas() or {}
        print(json.dumps({"seconds": seconds, "architecture": blas.get("architecture"),
                          "threads": blas.get("threads")}))
        return 0
    if len(argv) == 2 and argv[0] == "fma":
        try:
            from ..backends import c_ext
        except ImportError as exc:   # no C extension here: the probe does not apply
            print(json.dumps({"unavailable": str(exc)}))
            return 0
        gflops, isa, threads = c_ext.peak_gflops(float(argv[1]))
        print(json.dumps({"gflops": gflops, "isa": isa, "threads": threads}))
        return 0
    if len(argv) == 2 and argv[0] == "epochs":
        from .epochs import EpochSpec
        from .lockstep import serve
        return serve(EpochSpec.from_json(argv[1]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
