"""The CUDA backend on a real GPU: kernel timings against PyTorch / CuPy, and MLP epochs.

Run from the repository root (``gpu_check.sh`` runs every stage under a timeout):

    PYTHONPATH=. python benchmarks/gpu_check.py env       # versions, device, backends
    PYTHONPATH=. python benchmarks/gpu_check.py kernels   # each kernel vs torch (cuBLAS) / CuPy
    PYTHONPATH=. python benchmarks/gpu_check.py epoch     # MLP epochs, fused and not, fastsgd vs torch
    PYTHONPATH=. python benchmarks/gpu_check.py report    # merge the stages: results.md + results.json
    PYTHONPATH=. python benchmarks/gpu_check.py dry       # no GPU: fastsgd's side of each stage, simulated

Each stage writes ``<stage>.json`` into the results folder (``$OUT`` if set, else
``gpu_results/``) as it goes, so a stage cut short still leaves what it measured.
Every kernel's result is checked against PyTorch before it is timed.  A timing
is the median over repeats of the mean wall time of ``INNER`` back-to-back calls
between two device synchronisations: it includes each framework's Python-side
launch cost, which is what the trainer pays at these sizes.

``dry`` runs on any machine: it switches Numba's CUDA simulator on and runs every
fastsgd call of the ``kernels`` and ``epoch`` stages at tiny sizes (each kernel
checked against the NumPy backend, each epoch fused and layer by layer), so a
change in the library that breaks this script shows on a machine without a GPU.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np

RESULTS = Path(os.environ.get("OUT") or "gpu_results")
REPEATS, INNER, WARMUP = 7, 20, 3
#: (B, I, O): the MLP's layers at the two batch sizes, and the output layer.
LAYER_SHAPES = [(64, 784, 128), (256, 784, 128), (256, 128, 10)]
#: Square matmuls, to see the tiled kernel against cuBLAS where launch costs no longer hide it.
BIG_SHAPES = [(1024, 1024, 1024), (4096, 4096, 4096)]


def save(stage: str, data) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stage}.json").write_text(json.dumps(data, indent=2, default=str))


def median_time(fn, sync, inner=INNER, repeats=REPEATS, warmup=WARMUP) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``inner`` calls of ``fn``."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        times.append((time.perf_counter() - t0) / inner)
    return statistics.median(times)


# --------------------------------------------------------------------- env
def stage_env():
    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    for module in ("numpy", "numba", "numba_cuda", "torch", "cupy"):
        try:
            info[module] = __import__(module).__version__
        except Exception as exc:  # a missing framework is a result, not a crash
            info[module] = f"unavailable: {exc}"
    try:
        import torch
        info["device"] = torch.cuda.get_device_name(0)
        info["torch_cuda"] = torch.version.cuda
    except Exception as exc:
        info["device"] = f"unknown: {exc}"
    from fastsgd import backends
    info["backends"] = backends.available()
    save("env", info)
    print(json.dumps(info, indent=2, default=str))


# ----------------------------------------------------------------- kernels
def kernel_specs(B, I, O, matmul_only=False):
    """[(kernel, inputs, fastsgd call, torch call, cupy call or None, outputs)] at shape (B, I, O).

    ``inputs`` are NumPy arrays and ``outputs`` {name: shape} float32 buffers; each
    call takes that framework's copies of both (a dict) and returns what to
    validate: an array, a tuple of arrays or a float.
    """
    rng = np.random.default_rng(0)
    if matmul_only:
        x, w = rng.standard_normal((B, I), np.float32), rng.standard_normal((I, O), np.float32)
        return [("matmul", dict(x=x, w=w),
                 lambda k, d: k.matmul(d["x"], d["w"], out=d["out"]),
                 lambda t, d: t.matmul(d["x"], d["w"], out=d["out"]),
                 lambda c, d: c.matmul(d["x"], d["w"], out=d["out"]), {"out": (B, O)})]

    def f32(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    C = O
    x, w, b, dy = f32(B, I), f32(I, O, scale=I ** -0.5), f32(O), f32(B, O)
    h = f32(B, O)
    z, labels = f32(B, C), rng.integers(0, C, B)
    preds, targets = f32(B), rng.integers(0, 2, B).astype(np.float32)
    y = 1 / (1 + np.exp(-h))
    grad, velocity = f32(I, O), f32(I, O)
    src, idx = f32(8 * B, I), rng.permutation(8 * B)[:B]
    lr, mom, wd = 1e-3, 0.9, 1e-4

    def t_ce_backward(t, d):
        import torch
        p = torch.softmax(d["z"], 1)
        p[torch.arange(len(d["labels"]), device=p.device), d["labels"]] -= 1
        return p.div_(len(d["labels"]))

    def t_sgd(t, d):
        import torch
        g = torch.add(d["grad"], d["w"], alpha=wd)
        d["velocity"].mul_(mom).add_(g)
        return d["w"].add_(d["velocity"], alpha=-lr)

    return [
        ("matmul", dict(x=x, w=w),
         lambda k, d: k.matmul(d["x"], d["w"], out=d["out"]),
         lambda t, d: t.matmul(d["x"], d["w"], out=d["out"]),
         lambda c, d: c.matmul(d["x"], d["w"], out=d["out"]), {"out": (B, O)}),
        ("matmul_backward_input", dict(dy=dy, w=w),
         lambda k, d: k.matmul_backward_input(d["dy"], d["w"], dx=d["out"]),
         lambda t, d: t.matmul(d["dy"], d["w"].T, out=d["out"]),
         lambda c, d: c.matmul(d["dy"], d["w"].T, out=d["out"]), {"out": (B, I)}),
        ("matmul_backward_weight", dict(x=x, dy=dy),
         lambda k, d: k.matmul_backward_weight(d["x"], d["dy"], dw=d["out"]),
         lambda t, d: t.matmul(d["x"].T, d["dy"], out=d["out"]),
         lambda c, d: c.matmul(d["x"].T, d["dy"], out=d["out"]), {"out": (I, O)}),
        ("bias_backward", dict(dy=dy),
         lambda k, d: k.bias_backward(d["dy"], db=d["out"]),
         lambda t, d: t.sum(d["dy"], 0, out=d["out"]),
         lambda c, d: c.sum(d["dy"], 0, out=d["out"]), {"out": (O,)}),
        ("linear_forward", dict(x=x, w=w, b=b),
         lambda k, d: k.linear_forward(d["x"], d["w"], d["b"], out=d["out"]),
         lambda t, d: t.addmm(d["b"], d["x"], d["w"], out=d["out"]),
         None, {"out": (B, O)}),
        ("linear_backward", dict(x=x, w=w, dy=dy),
         lambda k, d: k.linear_backward(d["x"], d["w"], d["dy"], dx=d["dx"], dw=d["dw"], db=d["db"]),
         lambda t, d: (t.matmul(d["dy"], d["w"].T, out=d["dx"]), t.matmul(d["x"].T, d["dy"], out=d["dw"]),
                       t.sum(d["dy"], 0, out=d["db"])),
         None, {"dx": (B, I), "dw": (I, O), "db": (O,)}),
        ("sigmoid_forward", dict(h=h),
         lambda k, d: k.sigmoid_forward(d["h"], out=d["out"]),
         lambda t, d: t.sigmoid(d["h"], out=d["out"]),
         None, {"out": (B, O)}),
        ("sigmoid_backward", dict(y=y.astype(np.float32), dy=dy),
         lambda k, d: k.sigmoid_backward(d["y"], d["dy"], dx=d["out"]),
         lambda t, d: t.ops.aten.sigmoid_backward(d["dy"], d["y"]),
         None, {"out": (B, O)}),
        ("tanh_forward", dict(h=h),
         lambda k, d: k.tanh_forward(d["h"], out=d["out"]),
         lambda t, d: t.tanh(d["h"], out=d["out"]),
         lambda c, d: c.tanh(d["h"], out=d["out"]), {"out": (B, O)}),
        ("tanh_backward", dict(y=np.tanh(h), dy=dy),
         lambda k, d: k.tanh_backward(d["y"], d["dy"], dx=d["out"]),
         lambda t, d: t.ops.aten.tanh_backward(d["dy"], d["y"]),
         None, {"out": (B, O)}),
        ("relu_forward", dict(h=h),
         lambda k, d: k.relu_forward(d["h"], out=d["out"]),
         lambda t, d: t.clamp_min(d["h"], 0, out=d["out"]),
         lambda c, d: c.maximum(d["h"], 0, out=d["out"]), {"out": (B, O)}),
        ("relu_backward", dict(h=h, dy=dy),
         lambda k, d: k.relu_backward(d["h"], d["dy"], dx=d["out"]),
         lambda t, d: t.ops.aten.threshold_backward(d["dy"], d["h"], 0),
         None, {"out": (B, O)}),
        ("mnist_loss_forward", dict(preds=preds, targets=targets),
         lambda k, d: k.mnist_loss_forward(d["preds"], d["targets"]),
         lambda t, d: (lambda s: t.where(d["targets"] == 1, 1 - s, s).mean().item())(t.sigmoid(d["preds"])),
         None, {}),
        ("mnist_loss_backward", dict(preds=preds, targets=targets),
         lambda k, d: k.mnist_loss_backward(d["preds"], d["targets"], dpreds=d["out"]),
         lambda t, d: (lambda s: t.where(d["targets"] == 1, -1.0, 1.0) * s * (1 - s) / len(s))(
             t.sigmoid(d["preds"])),
         None, {"out": (B,)}),
        ("cross_entropy_forward", dict(z=z, labels=labels),
         lambda k, d: k.cross_entropy_forward(d["z"], d["labels"]),
         lambda t, d: t.nn.functional.cross_entropy(d["z"], d["labels"]).item(),
         None, {}),
        ("cross_entropy_backward", dict(z=z, labels=labels),
         lambda k, d: k.cross_entropy_backward(d["z"], d["labels"], dlogits=d["out"]),
         t_ce_backward, None, {"out": (B, C)}),
        ("mse_forward", dict(h=h, t=dy),
         lambda k, d: k.mse_forward(d["h"], d["t"]),
         lambda t, d: t.nn.functional.mse_loss(d["h"], d["t"]).item(),
         None, {}),
        ("mse_backward", dict(h=h, t=dy),
         lambda k, d: k.mse_backward(d["h"], d["t"], dpreds=d["out"]),
         lambda t, d: (d["h"] - d["t"]).mul_(2.0 / d["h"].numel()),
         None, {"out": (B, O)}),
        ("sgd_update", dict(w=w, grad=grad, velocity=velocity),
         lambda k, d: k.sgd_update(d["w"], d["grad"], lr, mom, wd, velocity=d["velocity"]),
         t_sgd, None, {}),
        ("binary_accuracy", dict(preds=preds, targets=targets),
         lambda k, d: k.binary_accuracy(d["preds"], d["targets"]),
         lambda t, d: ((d["preds"] > 0) == (d["targets"] == 1)).float().mean().item(),
         None, {}),
        ("multiclass_accuracy", dict(z=z, labels=labels),
         lambda k, d: k.multiclass_accuracy(d["z"], d["labels"]),
         lambda t, d: (d["z"].argmax(1) == d["labels"]).float().mean().item(),
         None, {}),
        ("take_rows", dict(src=src, idx=idx),
         lambda k, d: k.take_rows(d["src"], d["idx"], out=d["out"]),
         lambda t, d: t.index_select(d["src"], 0, d["idx"], out=d["out"]),
         lambda c, d: c.take(d["src"], d["idx"], axis=0, out=d["out"]), {"out": (B, I)}),
    ]


def _host(value):
    """A framework's result as NumPy (arrays) or float."""
    if isinstance(value, (float, int)):
        return float(value)
    if isinstance(value, tuple):
        return tuple(_host(v) for v in value)
    if hasattr(value, "copy_to_host"):
        return value.copy_to_host()
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    if hasattr(value, "get"):
        return value.get()
    return np.asarray(value)


def _max_error(a, b) -> float:
    """Largest |a - b| / (1 + |b|) over a result (arrays, tuples of arrays or floats)."""
    if isinstance(a, tuple):
        return max(_max_error(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / (1 + np.abs(b)))) if a.size else 0.0


@contextlib.contextmanager
def attempt(row: dict, what: str):
    """Run a block; an exception becomes ``row["error"]`` (and a traceback on stderr)."""
    try:
        yield
    except Exception as exc:
        row["error"] = (row.get("error", "") + f" {what}: {type(exc).__name__}: {exc}").strip()
        traceback.print_exc()


def launch_overhead(k, cuda_backend, cuda, torch) -> dict:
    """The fixed cost of one call on a 1-element array: fastsgd's launcher alone and through
    the validating Backend, against one small torch op."""
    row = {"kernel": "launch overhead (relu, 1 element)", "shape": "1"}
    try:
        x, out = k.asarray(np.ones(1, np.float32)), k.empty(1)
        tx = torch.ones(1, device="cuda")
        row["launcher_only_us"] = 1e6 * median_time(lambda: cuda_backend.relu_forward(x, out),
                                                    cuda.synchronize)
        from fastsgd import backends
        with backends.skip_value_checks():
            row["fastsgd_us"] = 1e6 * median_time(lambda: k.relu_forward(x, out=out), cuda.synchronize)
        row["torch_us"] = 1e6 * median_time(lambda: torch.relu(tx), torch.cuda.synchronize)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {exc}"
    return row


def stage_kernels():
    import torch
    from numba import cuda

    from fastsgd import backends
    from fastsgd.backends import cuda as cuda_backend
    try:
        import cupy
    except Exception:  # CuPy is optional: its column stays empty
        cupy = None

    k = backends.get("cuda")
    tdev = torch.device("cuda")

    rows = [launch_overhead(k, cuda_backend, cuda, torch)]
    print(json.dumps(rows[0]), flush=True)
    shapes = [(s, False) for s in LAYER_SHAPES] + [(s, True) for s in BIG_SHAPES]
    for (B, I, O), matmul_only in shapes:
        for name, inputs, f_call, t_call, c_call, outs in kernel_specs(B, I, O, matmul_only):
            row = {"kernel": name, "shape": f"{B}x{I}x{O}"}
            flop = 2.0 * B * I * O if name.startswith("matmul") else None
            got = want = None
            with attempt(row, "fastsgd"):  # each framework on its own: one failure loses one cell
                fd = {n: k.asarray(a, dtype=a.dtype) for n, a in inputs.items()}
                fd.update({n: k.empty(s) for n, s in outs.items()})
                with backends.skip_value_checks():  # as in the trainer's loop
                    got = _host(f_call(k, fd))
                    row["fastsgd_us"] = 1e6 * median_time(lambda: f_call(k, fd), cuda.synchronize)
                if flop:
                    row["fastsgd_gflops"] = flop / row["fastsgd_us"] / 1e3
            with attempt(row, "torch"):
                td = {n: torch.from_numpy(a).to(tdev) for n, a in inputs.items()}
                td.update({n: torch.empty(s, device=tdev) for n, s in outs.items()})
                want = _host(t_call(torch, td))
                row["torch_us"] = 1e6 * median_time(lambda: t_call(torch, td), torch.cuda.synchronize)
                if flop:
                    row["torch_gflops"] = flop / row["torch_us"] / 1e3
            if got is not None and want is not None:
                with attempt(row, "compare"):
                    row["max_rel_error_vs_torch"] = err = _max_error(got, want)
                    row["ok"] = bool(err < 1e-3)
            if c_call is not None and cupy is not None:
                with attempt(row, "cupy"):
                    cd = {n: cupy.asarray(a) for n, a in inputs.items()}
                    cd.update({n: cupy.empty(s, dtype=np.float32) for n, s in outs.items()})
                    row["cupy_us"] = 1e6 * median_time(lambda: c_call(cupy, cd),
                                                       cupy.cuda.Device().synchronize)
            rows.append(row)
            print(json.dumps(row), flush=True)
            save("kernels", {"tile": cuda_backend.TILE, "block": cuda_backend.BLOCK, "rows": rows})


# ------------------------------------------------------------------- epoch
N_SAMPLES, N_IN, N_HIDDEN, N_OUT, LR = 60_000, 784, 128, 10, 0.1
EPOCHS_TIMED = 3
#: name -> the layers (torch and fastsgd alike) for widths (inputs, hidden, outputs).
MODELS = {
    "mlp": lambda i, h, o: [("linear", i, h), ("relu",), ("linear", h, o)],
    "deep": lambda i, h, o: [("linear", i, h), ("tanh",), ("linear", h, h // 2), ("relu",),
                             ("linear", h // 2, o)],
}


def model_name(model, i=N_IN, h=N_HIDDEN, o=N_OUT) -> str:
    """'784-128-10 relu' style: the widths, then the activations."""
    layers = MODELS[model](i, h, o)
    widths = [i] + [layer[2] for layer in layers if layer[0] == "linear"]
    acts = [layer[0] for layer in layers if layer[0] != "linear"]
    return "-".join(map(str, widths)) + " " + "/".join(acts)


def _data(n=N_SAMPLES, n_in=N_IN, n_out=N_OUT):
    rng = np.random.default_rng(0)
    x = rng.random((n, n_in), dtype=np.float32)
    y = rng.integers(0, n_out, n)
    return x, y


def fastsgd_model(model, i, h, o):
    import fastsgd as fs
    kinds = {"linear": fs.Linear, "relu": fs.ReLU, "tanh": fs.Tanh}
    return fs.Sequential(*(kinds[layer[0]](*layer[1:]) for layer in MODELS[model](i, h, o)))


def time_fastsgd_epochs(bs, x, y, fused=True, model="mlp", hidden=N_HIDDEN, epochs=EPOCHS_TIMED):
    """(seconds of each timed epoch, last train loss, learn.fused) for one fastsgd Learner."""
    import fastsgd as fs
    from numba import cuda
    fs.set_seed(0)
    # A one-batch validation set: fit(1) then times the training epoch, not the evaluation.
    dls = fs.DataLoaders.from_arrays(x, y, x[:bs], y[:bs], bs=bs, seed=0, valid_bs=bs)
    net = fastsgd_model(model, x.shape[1], hidden, int(y.max()) + 1)
    learn = fs.Learner(dls, net, fs.cross_entropy, fs.SGD(LR), backend="cuda", show=False, fused=fused)
    times = []
    for _ in range(1 + epochs):  # the first epoch compiles the kernels: a warm-up
        cuda.synchronize()
        t0 = time.perf_counter()
        row = learn.fit(1)[0]
        cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:], row["train_loss"], learn.fused


def time_torch_epochs(bs, x, y, sync_each_step, model="mlp"):
    import torch
    torch.manual_seed(0)
    dev = torch.device("cuda")
    xs, ys = torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev)
    kinds = {"linear": torch.nn.Linear, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}
    net = torch.nn.Sequential(*(kinds[layer[0]](*layer[1:])
                                for layer in MODELS[model](N_IN, N_HIDDEN, N_OUT))).to(dev)
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    times, last = [], float("nan")
    for _ in range(1 + EPOCHS_TIMED):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        order = torch.randperm(N_SAMPLES, device=dev)
        total = 0.0 if sync_each_step else torch.zeros((), device=dev)
        for start in range(0, N_SAMPLES, bs):
            idx = order[start:start + bs]
            xb, yb = xs.index_select(0, idx), ys.index_select(0, idx)
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if sync_each_step:  # as fastsgd's trainer: the loss comes back as a float every step
                total += loss.item() * len(idx)
            else:
                total += loss.detach() * len(idx)
        last = float(total) / N_SAMPLES
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times[1:], last, None


def stage_epoch():
    x, y = _data()
    rows = []
    mlp = [("fastsgd cuda, fused epoch (one launch)", lambda bs: time_fastsgd_epochs(bs, x, y)),
           ("fastsgd cuda, layer by layer", lambda bs: time_fastsgd_epochs(bs, x, y, False)),
           ("torch, loss.item() each step", lambda bs: time_torch_epochs(bs, x, y, True)),
           ("torch, no per-step sync", lambda bs: time_torch_epochs(bs, x, y, False))]
    deep = [("fastsgd cuda, fused epoch (one launch)",
             lambda bs: time_fastsgd_epochs(bs, x, y, model="deep")),
            ("torch, no per-step sync", lambda bs: time_torch_epochs(bs, x, y, False, model="deep"))]
    runs = [("mlp", bs, label, run) for bs in (64, 256) for label, run in mlp]
    runs += [("deep", 64, label, run) for label, run in deep]
    for model, bs, label, run in runs:
        row = {"model": model_name(model), "bs": bs, "impl": label, "steps": -(-N_SAMPLES // bs)}
        try:
            times, loss, fused = run(bs)
            row.update(epoch_s=statistics.median(times), epochs_s=times, train_loss=loss,
                       us_per_step=1e6 * statistics.median(times) / row["steps"])
            if fused is not None:
                row["fused"] = fused  # True, or why the fused path did not run
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        rows.append(row)
        print(json.dumps(row), flush=True)
        save("epoch", {"samples": N_SAMPLES, "lr": LR, "timed_epochs": EPOCHS_TIMED, "rows": rows})


# ------------------------------------------------------------------ report
def _load(stage):
    path = RESULTS / f"{stage}.json"
    try:
        return json.loads(path.read_text())
    except Exception as exc:
        return {"missing": f"{path.name}: {exc}"}


def _fmt(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def stage_report():
    env, kernels, epoch = _load("env"), _load("kernels"), _load("epoch")
    tests = RESULTS / "tests_cuda.log"
    lines = ["# fastsgd CUDA backend on the GPU", ""]
    lines += [f"- device: {env.get('device')}; torch {env.get('torch')}, cupy {env.get('cupy')}, "
              f"numba-cuda {env.get('numba_cuda')}, Python {env.get('python')}", ""]
    if tests.exists():
        tail = [line for line in tests.read_text().splitlines() if line.strip()][-1:]
        lines += [f"- tests_cuda on the device: {tail[0] if tail else '(no output)'}", ""]
    else:
        lines += ["- tests_cuda on the device: not run", ""]
    lines += ["## Kernels (median us per call, wall clock incl. launch; validated vs torch first)", "",
              "| kernel | B x I x O | fastsgd | torch | cupy | fastsgd GFLOP/s | torch GFLOP/s | max rel err | note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in kernels.get("rows", []):
        err = r.get("max_rel_error_vs_torch")
        note = ("MISMATCH " if r.get("ok") is False else "") + r.get("error", "")
        if "launcher_only_us" in r:
            note += f"launcher alone, no validation: {r['launcher_only_us']:.1f} us"
        lines.append(f"| {r['kernel']} | {r['shape']} | {_fmt(r.get('fastsgd_us'))} | {_fmt(r.get('torch_us'))} "
                     f"| {_fmt(r.get('cupy_us'))} | {_fmt(r.get('fastsgd_gflops'), 0)} "
                     f"| {_fmt(r.get('torch_gflops'), 0)} | {'' if err is None else f'{err:.1e}'} | {note} |")
    if "missing" in kernels:
        lines.append(f"\n(kernels: {kernels['missing']})")
    lines += ["", f"## One epoch, MLPs, cross-entropy, SGD lr {LR}, {N_SAMPLES} x {N_IN} random float32 "
              f"on the GPU (median of {EPOCHS_TIMED} after a warm-up)", "",
              "| model | bs | implementation | epoch s | us / step | final train loss | note |",
              "|---|---|---|---|---|---|---|"]
    for r in epoch.get("rows", []):
        fused = r.get("fused")
        note = (f"NOT FUSED: {fused} " if "fused" in r["impl"] and fused is not True and "fused" in r
                else "") + r.get("error", "")
        lines.append(f"| {r.get('model', model_name('mlp'))} | {r['bs']} | {r['impl']} "
                     f"| {_fmt(r.get('epoch_s'), 3)} | {_fmt(r.get('us_per_step'), 0)} "
                     f"| {_fmt(r.get('train_loss'), 4)} | {note} |")
    if "missing" in epoch:
        lines.append(f"\n(epoch: {epoch['missing']})")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "results.md").write_text(text)
    (RESULTS / "results.json").write_text(json.dumps({"env": env, "kernels": kernels, "epoch": epoch},
                                                     indent=2, default=str))
    print(text)


# --------------------------------------------------------------------- dry
def stage_dry():
    """The fastsgd calls of ``kernels`` and ``epoch`` on the CUDA simulator at tiny sizes."""
    if "numba" in sys.modules:
        sys.exit("dry: run it as its own process (the simulator is chosen when Numba is imported)")
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    from fastsgd import backends
    k, ref = backends.get("cuda"), backends.get("numpy")
    rows, failed = [], 0
    for name, inputs, f_call, _, _, outs in kernel_specs(3, 5, 4):
        row = {"kernel": name}
        with attempt(row, "fastsgd"):
            fd = {n: k.asarray(a, dtype=a.dtype) for n, a in inputs.items()}
            fd.update({n: k.empty(s) for n, s in outs.items()})
            nd = {n: a.copy() for n, a in inputs.items()}
            nd.update({n: np.empty(s, np.float32) for n, s in outs.items()})
            with backends.skip_value_checks():
                row["max_rel_error_vs_numpy"] = _max_error(_host(f_call(k, fd)), _host(f_call(ref, nd)))
            row["ok"] = bool(row["max_rel_error_vs_numpy"] < 1e-4)
        rows.append(row)
    x, y = _data(40, 6, 3)
    for model in MODELS:
        for fused in (True, False):
            row = {"model": model_name(model, 6, 8, 3), "fused_wanted": fused}
            with attempt(row, "epoch"):
                _, row["train_loss"], row["fused"] = time_fastsgd_epochs(
                    16, x, y, fused, model=model, hidden=8, epochs=1)
                row["ok"] = bool(np.isfinite(row["train_loss"])
                                 and (row["fused"] is True) == fused)
            rows.append(row)
    for row in rows:
        failed += not row.get("ok", False)
        print(json.dumps(row, default=str))
    save("dry", {"rows": rows})
    print(f"dry: {len(rows) - failed} of {len(rows)} ok")
    sys.exit(1 if failed else 0)


STAGES = {"env": stage_env, "kernels": stage_kernels, "epoch": stage_epoch, "report": stage_report,
          "dry": stage_dry}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in STAGES:
        sys.exit(f"usage: python {sys.argv[0]} {{{'|'.join(STAGES)}}}")
    STAGES[sys.argv[1]]()
