#!/usr/bin/env bash
# The CUDA backend on a GPU machine: its tests at training shapes (the layer-program
# kernel included, on a multi-block cooperative grid), each kernel timed against
# PyTorch (cuBLAS) and CuPy, and MLP epochs (fused and layer by layer) against PyTorch.
#
#   bash benchmarks/gpu_check.sh            # from the repository root; no install needed
#   PYTHONPATH=. python benchmarks/gpu_check.py dry   # before booking a GPU: the same calls, simulated
#
# Needs Python with numpy, numba-cuda, torch (CUDA), pytest; CuPy optional.  Writes
# results.md, results.json and one log per stage to $OUT if set, else gpu_results/,
# then prints the table.  Each stage runs under its own timeout (under 5 minutes
# in all), and a stage that fails or times out does not stop the others.
set -u
cd "$(dirname "$0")/.."
RESULTS="${OUT:-gpu_results}"
mkdir -p "$RESULTS"
export OUT="$RESULTS" PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
unset NUMBA_ENABLE_CUDASIM
PY="${PYTHON:-python}"
: > "$RESULTS/stages.txt"

stage() {  # stage NAME SECONDS COMMAND...: run under a timeout, log to $RESULTS/NAME.log
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "== $name (at most ${limit}s)"
    timeout -k 5 "$limit" "$@" > "$RESULTS/$name.log" 2>&1
    rc=$?
    echo "$name exit=$rc seconds=$((SECONDS - start))" | tee -a "$RESULTS/stages.txt"
    tail -n 4 "$RESULTS/$name.log"
}

stage env 20 "$PY" benchmarks/gpu_check.py env
stage tests_cuda 120 env FASTSGD_CUDA_TESTS=device "$PY" -m pytest tests_cuda -q -p no:cacheprovider \
    --durations=5 --junitxml="$RESULTS/tests_cuda.xml"
stage kernels 55 "$PY" benchmarks/gpu_check.py kernels
stage epoch 85 "$PY" benchmarks/gpu_check.py epoch
stage report 10 "$PY" benchmarks/gpu_check.py report
echo
cat "$RESULTS/results.md" 2>/dev/null || echo "no report: see $RESULTS/*.log"
cat "$RESULTS/stages.txt"
