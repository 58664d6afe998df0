"""Threads of the CPU backends: thread controls, fork safety, the peak probe.

Each check that could hang runs in a fresh interpreter under a timeout, so a hang fails.
"""
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from fastsgd import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_c = pytest.mark.skipif(backends.available().get("c") is not True,
                             reason="C extension not built")
needs_numba = pytest.mark.skipif(backends.available().get("numba") is not True,
                                 reason="numba unavailable")


def run_python(code, timeout=60, env=None):
    """Run ``code`` in a fresh interpreter at the project root; fail on a hang."""
    full_env = dict(os.environ, **(env or {}))
    try:
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=full_env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"hung for {timeout} s")


FORK_POOL = """
import multiprocessing as mp
import numpy as np
from fastsgd.backends import {modules}

rng = np.random.default_rng(0)
a = rng.standard_normal((256, 784), dtype=np.float32)
b = rng.standard_normal((784, 128), dtype=np.float32)

def errors(seed):
    out = []
    for m in ({modules},):
        c = np.empty((256, 128), np.float32)
        m.matmul(a, b, c)
        out.append(float(np.abs(c - a @ b).max()))
    return out

errors(0)  # threads started before the fork
with mp.get_context("fork").Pool(2) as pool:
    print(max(max(e) for e in pool.map(errors, range(4))))
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.parametrize("modules", [
    pytest.param("c_ext", marks=needs_c),
    pytest.param("numba_cpu", marks=needs_numba),
    pytest.param("c_ext, numba_cpu", marks=[needs_c, needs_numba]),
])
def test_a_forked_pool_runs_threaded_kernels_after_the_parent_did(modules):
    done = run_python(FORK_POOL.format(modules=modules), timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-2


FORK_WHILE_BUSY = """
import multiprocessing as mp
import os, threading, time
import numpy as np
from fastsgd.backends import numba_cpu

a = np.full((512, 512), 0.5, np.float32)   # 2**27 multiply-adds: the threaded path
assert a.size * a.shape[0] >= numba_cpu.PARALLEL_MIN_MACS

def product(_=None):
    out = np.empty_like(a)
    numba_cpu.matmul(a, a, out)
    return float(out[0, 0])

product()
stop = threading.Event()
def busy():
    while not stop.is_set():
        product()
threading.Thread(target=busy, daemon=True).start()

codes = []
for _ in range(4):
    while not numba_cpu._PARALLEL.locked():   # fork while a kernel holds the lock
        time.sleep(0.0005)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if product() == 128.0 else 3)
    deadline = time.monotonic() + 30
    while not (ended := os.waitpid(pid, os.WNOHANG))[0]:
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            raise SystemExit("a forked child hung")
        time.sleep(0.01)
    codes.append(os.waitstatus_to_exitcode(ended[1]))
with mp.get_context("fork").Pool(2) as pool:
    got = pool.map_async(product, range(4)).get(timeout=30)
stop.set()
print(codes, got)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@needs_numba
def test_a_fork_while_another_thread_runs_a_numba_kernel_leaves_the_child_free():
    done = run_python(FORK_WHILE_BUSY, timeout=120)
    assert done.returncode == 0, (done.stdout + done.stderr)[-2000:]
    assert done.stdout.split("\n")[-2] == "[0, 0, 0, 0] [128.0, 128.0, 128.0, 128.0]"


@needs_c
def test_fastsgd_threads_sets_the_initial_limit():
    code = "from fastsgd.backends import c_ext; print(c_ext.threads())"
    done = run_python(code, env={"FASTSGD_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "1"


@needs_c
@pytest.mark.parametrize("asked", ["1000", "cpus+1"])
def test_fastsgd_threads_beyond_the_cores_gives_one_per_core(asked):
    cpus = len(os.sched_getaffinity(0))
    asked = str(cpus + 1) if asked == "cpus+1" else asked
    code = ("import os, numpy as np\n"
            "from fastsgd.backends import c_ext\n"
            "before = len(os.listdir('/proc/self/task'))\n"
            "a = np.ones((512, 512), np.float32)\n"
            "c_ext.matmul(a, a, np.empty_like(a))\n"
            "print(c_ext.threads(), len(os.listdir('/proc/self/task')) - before)")
    done = run_python(code, env={"FASTSGD_THREADS": asked})
    assert done.returncode == 0, done.stderr[-2000:]
    limit, started = map(int, done.stdout.split()[-2:])
    assert limit == cpus and started <= cpus - 1


@needs_c
def test_the_c_library_needs_no_openmp_runtime():
    from fastsgd import _ckernels
    with open(_ckernels.__file__, "rb") as f:
        assert b"libgomp" not in f.read()


@needs_c
def test_peak_probe_is_positive_finite_and_not_below_a_big_matmul():
    from fastsgd.backends import c_ext
    rate, isa, used = c_ext.peak_gflops(0.1)
    assert math.isfinite(rate) and rate > 0
    assert isa in c_ext.ISAS and 1 <= used <= c_ext.threads()
    a = np.ones((1024, 1024), np.float32)
    a @ a
    start = time.perf_counter()
    a @ a
    numpy_rate = 2 * 1024 ** 3 / (time.perf_counter() - start) / 1e9
    assert rate >= 0.5 * numpy_rate  # loose: a sanity ordering, not a timing test


@needs_c
def test_kernels_called_from_threads_at_once_agree():
    import threading
    from fastsgd.backends import c_ext
    rng = np.random.default_rng(1)
    a = rng.standard_normal((256, 784), dtype=np.float32)
    b = rng.standard_normal((784, 128), dtype=np.float32)
    expected = np.empty((256, 128), np.float32)
    c_ext.matmul(a, b, expected)
    bad = []

    def work():
        out = np.empty_like(expected)
        for _ in range(50):
            c_ext.matmul(a, b, out)
            if not np.allclose(out, expected, rtol=1e-5, atol=1e-4):
                bad.append(1)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bad == []


SPIN = "import os\nos.sched_setaffinity(0, {0})\nwhile True:\n    pass\n"


def _fused_c_epoch(x, y, threads):
    """The weights after two fused epochs on ``c`` with at most ``threads`` threads."""
    import fastsgd as fs
    from fastsgd.backends import c_ext
    previous = c_ext.set_threads(threads)
    try:
        fs.set_seed(3)
        model = fs.Sequential(fs.Linear(784, 128), fs.ReLU(), fs.Linear(128, 10))
        dls = fs.DataLoaders(fs.DataLoader(x, y, 64, shuffle=True, seed=4),
                             fs.DataLoader(x[:256], y[:256], 256))
        learn = fs.Learner(dls, model, fs.cross_entropy, fs.SGD(0.1, momentum=0.9),
                           backend="c", show=False, progress=False)
        assert learn.fused is True
        learn.fit(2)
        return [p.value.copy() for p in model.parameters()]
    finally:
        c_ext.set_threads(previous)


@needs_c
@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs two cores to keep one busy")
def test_a_busy_core_leaves_the_threaded_epoch_exact():
    """Beside a process spinning on one core the pool's workers are kept off it, and
    the pool runs jobs on fewer threads for a while: the weights must not change."""
    rng = np.random.default_rng(5)
    x = rng.random((8192, 784), dtype=np.float32)
    y = rng.integers(0, 10, 8192)
    alone = _fused_c_epoch(x, y, threads=1)
    spinner = subprocess.Popen([sys.executable, "-c", SPIN.format(min(os.sched_getaffinity(0)))])
    try:
        time.sleep(0.2)
        shared = _fused_c_epoch(x, y, threads=2)
    finally:
        spinner.kill()
        spinner.wait()
    for a, b in zip(alone, shared):
        np.testing.assert_array_equal(a, b)


BESIDE_NUMPY = """
import os
import numpy as np
from fastsgd.backends import c_ext
{restrict}
allowed = os.sched_getaffinity(0)
rng = np.random.default_rng(0)
a = rng.standard_normal((256, 784), dtype=np.float32)
b = rng.standard_normal((784, 128), dtype=np.float32)
c_ext.set_threads(1)
alone = np.empty((256, 128), np.float32)
c_ext.matmul(a, b, alone)
c_ext.set_threads(2)
a @ b
before = set(os.listdir("/proc/self/task"))
for _ in range(300):
    a @ b                      # NumPy's BLAS threads spin for a while after this
    out = np.empty((256, 128), np.float32)
    c_ext.matmul(a, b, out)
    assert np.array_equal(out, alone)
workers = set(os.listdir("/proc/self/task")) - before   # the pool's, started in the loop
masks = [os.sched_getaffinity(int(tid)) for tid in workers]
print(all(m and m <= allowed for m in masks), len(masks))
"""


@needs_c
@pytest.mark.skipif(sys.platform != "linux", reason="thread affinity")
@pytest.mark.parametrize("restrict", ["", "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})"],
                         ids=["all cpus", "one cpu"])
def test_workers_alternating_with_numpy_stay_on_the_process_cpus(restrict):
    """A worker woken beside the job's caller moves to the pool's other CPUs: never
    outside those the pool started on, and with the same bits as one thread."""
    done = run_python(BESIDE_NUMPY.format(restrict=restrict))
    assert done.returncode == 0, done.stderr
    inside, workers = done.stdout.split()
    assert inside == "True"
    assert int(workers) >= 1


def _tbb_installed() -> bool:
    from importlib import metadata
    try:
        metadata.distribution("tbb")
    except metadata.PackageNotFoundError:
        return False
    return True


LAYER = """
import numba
import numpy as np
from fastsgd.backends import numba_cpu

a = np.ones((512, 512), np.float32)   # 2**27 multiply-adds: on the threads either way
out = np.empty_like(a)
assert a.size * a.shape[0] >= numba_cpu.PARALLEL_MIN_MACS
numba_cpu.matmul(a, a, out)
print(numba.threading_layer(), numba_cpu.PARALLEL_MIN_MACS, float(out.min()), float(out.max()))
"""
WITHOUT_TBB = """
from importlib import metadata
files = metadata.files
def without_tbb(name):
    if name == "tbb":
        raise metadata.PackageNotFoundError(name)
    return files(name)
metadata.files = without_tbb
"""


@needs_numba
@pytest.mark.skipif(not _tbb_installed(), reason="the tbb package is not installed")
def test_numba_threads_run_on_tbb_when_the_tbb_package_is_installed():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    done = subprocess.run([sys.executable, "-c", LAYER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["tbb", str(1 << 22), "512.0", "512.0"]


@needs_numba
def test_numba_threads_fall_back_to_workqueue_without_the_tbb_package():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    done = subprocess.run([sys.executable, "-c", WITHOUT_TBB + LAYER], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["workqueue", str(1 << 26), "512.0", "512.0"]


@needs_numba
@pytest.mark.parametrize("kind", ["matmul", "x.T @ dy", "dy @ w.T"])
def test_numba_products_give_the_same_bits_on_one_thread_and_on_the_threads(kind):
    from fastsgd.backends.numba_cpu import config, gemm
    rng = np.random.default_rng(5)
    # 75 rows, 100 columns: whole tiles, a one-vector tile and columns and rows left over
    a = rng.standard_normal((75, 300), dtype=np.float32)
    one, threads = np.empty((2, 75, 100), np.float32)
    if kind == "dy @ w.T":
        w = rng.standard_normal((100, 300), dtype=np.float32)
        gemm._backward_input_one_thread(a, w, one)
        with config._PARALLEL:
            gemm._backward_input(a, w, threads)
        reference = a.astype(np.float64) @ w.T.astype(np.float64)
    else:
        transposed = kind == "x.T @ dy"
        x = np.ascontiguousarray(a.T) if transposed else a
        b = rng.standard_normal((300, 100), dtype=np.float32)
        gemm._gemm_one_thread(x, b, one, transposed)
        with config._PARALLEL:
            gemm._gemm(x, b, threads, transposed)
        reference = a.astype(np.float64) @ b.astype(np.float64)
    assert np.array_equal(one, threads)
    np.testing.assert_allclose(one, reference, rtol=1e-4, atol=1e-3)


@needs_numba
def test_a_numba_product_slower_than_its_best_but_faster_than_one_thread_keeps_the_threads():
    # After a pause the workers wake up first: slower than the best threaded call, but
    # still faster than the calling thread alone, so the threads keep the products.
    from fastsgd.backends.numba_cpu import config
    clock = [100.0]
    pace = config.Pace(clock=lambda: clock[0])
    pace.last_end = clock[0]                                  # a product just ended
    shape = ("matmul", (256, 784), (784, 128))
    pace.ran(shape, 10**6, started=100.0, seconds=1.0e-4)   # the best on the threads
    pace.ran_alone(shape, 10**6, seconds=2.0e-4)             # one thread: half the rate
    pace.ran(shape, 10**6, started=100.0, seconds=1.5e-4)   # woken up: between the two
    assert pace.threads_now()
    pace.ran(shape, 10**6, started=100.0, seconds=2.4e-4)   # a hiccup: a bit slower
    assert pace.threads_now()
    pace.ran(shape, 10**6, started=100.0, seconds=3.0e-4)   # clearly slower than one thread
    assert not pace.threads_now()
    # The first call after a pause wakes the workers up: it is not judged.
    clock[0] += 1.0
    assert pace.threads_now()
    pace.ran(shape, 10**6, started=clock[0], seconds=3.5e-4)
    assert pace.threads_now()
    pace.ran(shape, 10**6, started=clock[0] + 3.5e-4, seconds=3.5e-4)  # warm, and slow
    assert not pace.threads_now()


def test_numba_products_leave_the_threads_for_a_while_after_they_were_held_up():
    from fastsgd.backends.numba_cpu import config
    clock = [100.0]
    pace = config.Pace(clock=lambda: clock[0])
    pace.last_end = clock[0]                                  # a product just ended
    shape = ("matmul", (256, 784), (784, 128))
    pace.ran(shape, 10**6, started=100.0, seconds=1e-4)     # 1e10 multiply-adds a second
    assert pace.threads_now()
    pace.ran(shape, 10**6, started=100.0, seconds=3e-4)     # a third of that: held up
    assert not pace.threads_now()
    clock[0] += 3e-4 + pace.SOLO_MIN_S
    assert pace.threads_now()
    pace.last_end = clock[0]                                  # products ran alone meanwhile
    pace.ran(shape, 10**6, started=clock[0], seconds=3e-4)  # held up again: twice as long
    clock[0] += 3e-4 + pace.SOLO_MIN_S
    assert not pace.threads_now()
    clock[0] += pace.SOLO_MIN_S
    assert pace.threads_now()
    pace.last_end = clock[0]
    pace.ran(shape, 10**6, started=clock[0], seconds=1.2e-4)  # keeping pace: back to the start
    assert pace.threads_now() and pace.solo_s == pace.SOLO_MIN_S
