"""Corrupt, hostile or surprising inputs to the readers, the writers and the command line:
each refused in one line (or handled), none crashing, none losing a file."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastsgd as fs
from fastsgd import data, files, layers
from fastsgd.cli import main
from fastsgd.npz import write_npz

from . import test_data
from .mnist_fixtures import make_mnist_folder

scripted = test_data.scripted        # the local HTTP server fixture


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_mnist_folder(tmp_path_factory.mktemp("mnist"), n_train=200, n_valid=100, seed=0)


def _fastsgd(*args, stdout=subprocess.PIPE, timeout=120):
    """Run the ``fastsgd`` command in a new process."""
    return subprocess.run([sys.executable, "-m", "fastsgd", *map(str, args)], stdout=stdout,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def _flip(path, offset, bit):
    """Flip one bit of the file ``path`` at byte ``offset``."""
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def _flip_in_npy_header(path):
    """Flip the bit that turns the first .npy header of ``path`` into an unterminated literal
    (numpy's parser then raises tokenize.TokenError)."""
    at = path.read_bytes().index(b"\x93NUMPY")
    _flip(path, at + 8, 6)                           # the header's opening brace


def _one_line_error(capsys, command):
    """The stderr line of a command that must fail with exit code 2 in one line."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"fastsgd {command}: error: "), err
    return err[0]


# ------------------------------------------------------------ item 5: .npy headers
def test_a_flipped_bit_in_a_model_files_npy_header_is_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    layers.save_model(layers.Sequential(layers.Linear(784, 10)), path)
    _flip_in_npy_header(path)
    with pytest.raises(ValueError, match="bad .npy header"):
        fs.load_model(path)
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 784), np.float32))
    assert main(["predict", str(path), str(images)]) == 2
    assert "bad .npy header" in _one_line_error(capsys, "predict")
    assert main(["interpret", str(path), "--digits", "all"]) == 2
    assert "bad .npy header" in _one_line_error(capsys, "interpret")
    assert main(["train", "--resume", str(path), "--epochs", "1"]) == 2
    assert "bad .npy header" in _one_line_error(capsys, "train")


def test_a_flipped_bit_in_an_images_npy_header_is_one_line(tmp_path, capsys):
    path = tmp_path / "m.npz"
    layers.save_model(layers.Sequential(layers.Linear(784, 10)), path)
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((2, 784), np.float32))
    _flip_in_npy_header(images)
    with pytest.raises(data.DataError, match="not a .npy array"):
        data.load_images(images)
    assert main(["predict", str(path), str(images)]) == 2
    assert "not a .npy array" in _one_line_error(capsys, "predict")


def test_a_corrupt_embedded_cache_is_rebuilt(tmp_path):
    first = data.load_embedded(cache_dir=tmp_path)
    (cache,) = tmp_path.glob("*.npz")
    _flip_in_npy_header(cache)
    again = data.load_embedded(cache_dir=tmp_path)
    np.testing.assert_array_equal(again.train_x, first.train_x)
    np.testing.assert_array_equal(again.valid_y, first.valid_y)
    assert data.load_embedded(cache_dir=tmp_path).train_x.shape == first.train_x.shape


# ------------------------------------------------------------ one error format
@pytest.mark.parametrize("argv, command", [
    (["train", "--momentum", "2"], "train"),
    (["train", "--bs", "x"], "train"),
    (["lr-find", "--num-it", "1"], "lr-find"),
    (["predict", "missing.npz", "missing.npy"], "predict"),
    (["interpret", "missing.npz"], "interpret"),
    (["bench", "--sizes", "nonsense"], "bench"),
    (["info", "--bogus"], "info"),
])
def test_every_command_reports_errors_in_one_format(argv, command, capsys, tmp_path,
                                                    monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    _one_line_error(capsys, command)


def test_an_unknown_command_is_reported_by_fastsgd(capsys):
    assert main(["nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastsgd: error: "), err


# ------------------------------------------------------------ item 11: empty paths
@pytest.mark.parametrize("argv", [
    ["train", "--save", ""], ["train", "--json", ""], ["train", "--plot", ""],
    ["train", "--data", ""], ["train", "--resume", ""], ["lr-find", "--plot", ""],
    ["lr-find", "--data", ""], ["predict", "", "x.npy"], ["predict", "m.npz", ""],
    ["predict", "m.npz", "x.npy", "--json", ""], ["interpret", "m.npz", "--plot", ""],
    ["interpret", "m.npz", "--data", ""], ["bench", "--json", ""], ["bench", "--data", ""],
])
def test_empty_paths_are_refused(argv, capsys):
    assert main(argv) == 2
    assert "empty" in _one_line_error(capsys, argv[0])


def test_the_writers_refuse_an_empty_path():
    with pytest.raises(FileNotFoundError, match="empty path"):
        files.write_json("", {})
    with pytest.raises(FileNotFoundError, match="empty path"):
        files.check_writable("")


# ------------------------------------------------------------ options that do not apply
@pytest.mark.parametrize("command", ["train", "lr-find"])
@pytest.mark.parametrize("option", [["--hidden", "64"], ["--activation", "tanh"]])
def test_mlp_options_with_a_linear_model_are_refused(command, option, capsys):
    assert main([command, "--model", "linear", *option]) == 2
    assert "does not apply to --model linear" in _one_line_error(capsys, command)


# ------------------------------------------------------------ item 4: outputs the shell opened
@pytest.mark.parametrize("option", ["--json", "--save"])
@pytest.mark.parametrize("path", ["/dev/stdout", "{out}"])
def test_an_output_that_is_the_redirected_stdout_is_written_in_place(tmp_path, folder, option,
                                                                     path):
    out = tmp_path / "out.txt"
    out.write_bytes(b"kept\n")
    inode = out.stat().st_ino
    with open(out, "ab") as f:
        run = _fastsgd("train", "--no-progress", "--data", folder, "--epochs", "1",
                       option, path.format(out=out), stdout=f)
    assert run.returncode == 0, run.stderr
    assert out.stat().st_ino == inode
    content = out.read_bytes()
    assert content.startswith(b"kept\n")
    if option == "--json":
        assert json.loads(content[5:])["settings"]["epochs"] == 1
    else:
        assert content[5:7] == b"PK"               # the checkpoint, a zip archive
    assert "accuracy" in run.stderr                # the table went to stderr, not lost


def test_a_descriptor_path_is_written_through_the_descriptor(tmp_path):
    out = tmp_path / "fd.txt"
    with open(out, "w") as f:
        f.write("first ")
        f.flush()
        inode = out.stat().st_ino
        assert files.missing_folders(f"/dev/fd/{f.fileno()}") == []
        files.check_writable(f"/dev/fd/{f.fileno()}")
        files.write_json(f"/dev/fd/{f.fileno()}", {"a": 1})
        files.write_json(f"/proc/self/fd/{f.fileno()}", {"b": 2})
    assert out.stat().st_ino == inode
    assert out.read_text() == 'first {\n  "a": 1\n}\n{\n  "b": 2\n}\n'


def test_missing_folders_are_said(tmp_path):
    assert files.missing_folders(tmp_path / "a" / "b" / "c.json") == [tmp_path / "a",
                                                                       tmp_path / "a" / "b"]
    assert files.missing_folders(tmp_path / "c.json") == []
    assert files.missing_folders("/dev/null") == files.missing_folders("-") == []


# ------------------------------------------------------------ item 10: interpret --plot
def test_interpret_plots_into_a_device_in_place(tmp_path, folder, capsys):
    model = tmp_path / "m.npz"
    assert main(["train", "--quiet", "--no-progress", "--data", str(folder), "--epochs", "1",
                 "--save", str(model)]) == 0
    before = set(os.listdir("/dev"))
    assert main(["interpret", str(model), "--plot", "/dev/null"]) == 0
    assert set(os.listdir("/dev")) == before
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == "wrote /dev/null" and printed.count("wrote /dev/null") == 1
    assert main(["interpret", str(model), "--plot", str(tmp_path / "new" / "cm.png")]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "new" / "cm-top-losses.png").stat().st_size > 0
    assert f"wrote {tmp_path / 'new' / 'cm.png'} (created the folder {tmp_path / 'new'})" \
        in printed


def test_train_says_what_it_wrote(tmp_path, folder, capsys):
    plot = tmp_path / "plots" / "h.png"
    assert main(["train", "--no-progress", "--data", str(folder), "--epochs", "1",
                 "--plot", str(plot), "--json", str(tmp_path / "r.json")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"wrote {plot} (created the folder {plot.parent})" in printed
    assert f"wrote {tmp_path / 'r.json'}" in printed
    assert plot.stat().st_size > 0


# ------------------------------------------------------------ item 8: history rows
def _rewrite_state(path, change):
    """Rewrite the checkpoint ``path`` with ``change(state)`` applied to its JSON state."""
    with np.load(path) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "checksum"}
    state = json.loads(arrays["state"].tobytes())
    change(state)
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize("drop", ["train_loss", "batch_accuracy", "seconds"])
def test_a_history_row_without_a_column_is_refused_on_resume(tmp_path, folder, capsys, drop):
    model = tmp_path / "m.npz"
    assert main(["train", "--quiet", "--no-progress", "--data", str(folder), "--epochs", "2",
                 "--save", str(model)]) == 0
    _rewrite_state(model, lambda state: state["history"][1].pop(drop))
    capsys.readouterr()
    for output in ("--json", "--plot"):
        assert main(["train", "--no-progress", "--resume", str(model), "--epochs", "1",
                     output, str(tmp_path / "out")]) == 2
        assert drop in _one_line_error(capsys, "train")


# ------------------------------------------------------------ item 9: checkpoint checksum
def _central_directory_fields(raw: bytes, offset: int):
    """Byte offsets of the 2-byte field at ``offset`` in every central directory entry."""
    at = raw.find(b"PK\x01\x02")
    while at != -1:
        yield at + offset
        at = raw.find(b"PK\x01\x02", at + 4)


@pytest.fixture(scope="module")
def checkpoint(folder, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "c.npz"
    assert main(["train", "--quiet", "--no-progress", "--data", str(folder), "--epochs", "2",
                 "--save", str(path)]) == 0
    return path


def _same_checkpoint(a, b):
    assert a.config == b.config and a.state == b.state
    for x, y in zip([*a.weights, *a.velocities, a.losses], [*b.weights, *b.velocities, b.losses]):
        np.testing.assert_array_equal(x, y)


def _refused_with_bit_flipped(raw, bit, damaged, whole) -> bool:
    """Whether the checkpoint ``raw`` with ``bit`` flipped, written at ``damaged``, is
    refused in one line; if it loads, it must be the very checkpoint ``whole``."""
    flipped = bytearray(raw)
    flipped[bit // 8] ^= 1 << (bit % 8)
    damaged.write_bytes(bytes(flipped))
    try:
        stored = layers.read_checkpoint(damaged)
    except ValueError as e:
        assert "\n" not in str(e)
        return True
    _same_checkpoint(stored, whole)
    return False


@pytest.mark.parametrize("field", [30, 32], ids=["extra length", "comment length"])
def test_a_flipped_bit_in_the_central_directory_is_refused_never_half_read(tmp_path, checkpoint,
                                                                           field):
    whole = layers.read_checkpoint(checkpoint)
    assert whole.velocities is not None and whole.state["history"]
    raw = checkpoint.read_bytes()
    damaged = tmp_path / "d.npz"
    tried = refused = 0
    for at in _central_directory_fields(raw, field):
        for byte in (at, at + 1):
            for bit in range(8):
                tried += 1
                refused += _refused_with_bit_flipped(raw, 8 * byte + bit, damaged, whole)
    assert tried >= 16 * 8 and refused > 0


def test_a_lost_member_or_a_lost_checksum_is_refused(tmp_path, checkpoint):
    import zipfile
    for drop in ("v0.npy", "state.npy", "checksum.npy"):
        out = tmp_path / f"without-{drop}"
        with zipfile.ZipFile(checkpoint) as src, zipfile.ZipFile(out, "w") as dst:
            for info in src.infolist():
                if info.filename != drop:
                    dst.writestr(info, src.read(info))
            dst.comment = src.comment
        with pytest.raises(ValueError, match="damaged"):
            layers.read_checkpoint(out)
    out = tmp_path / "no-comment.npz"
    with zipfile.ZipFile(checkpoint) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    with pytest.raises(ValueError, match="checksum in the archive comment is lost"):
        layers.read_checkpoint(out)


def test_files_without_a_checksum_still_load(tmp_path, checkpoint):
    """What earlier versions wrote: np.savez of the same arrays, no checksum."""
    with np.load(checkpoint) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "checksum"}
    old = tmp_path / "old.npz"
    np.savez(old, **arrays)
    _same_checkpoint(layers.read_checkpoint(old), layers.read_checkpoint(checkpoint))
    weights = {name: a for name, a in arrays.items() if name == "config" or name[0] == "p"}
    np.savez(old, **weights)
    assert layers.read_checkpoint(old).state is None


# ------------------------------------------------------------ item 6: small inputs stay small
def _peak(fn, *args):
    """(what ``fn(*args)`` returned or raised, the peak of memory it allocated in bytes)."""
    import tracemalloc
    tracemalloc.start()
    try:
        try:
            out = fn(*args)
        except Exception as e:            # noqa: BLE001 - returned for the caller to check
            out = e
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _zeros_model_file(path, n_in, n_out):
    """A model file of Linear(n_in, n_out) whose weights are zeros, deflated: a tiny file."""
    import io
    import zipfile
    config = {"type": "Sequential", "layers": [{"type": "Linear", "n_in": n_in, "n_out": n_out}]}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("config.npy", "w") as member:
            np.lib.format.write_array(member, np.frombuffer(json.dumps(config).encode(), np.uint8))
        for name, shape in (("p0", (n_in, n_out)), ("p1", (n_out,))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": "<f4", "fortran_order": False, "shape": shape})
                member.write(head.getvalue())
                left = 4 * int(np.prod(shape))
                while left:
                    member.write(bytes(min(left, 1 << 22)))
                    left -= min(left, 1 << 22)
    return path


def test_a_small_model_file_of_zeros_is_refused_before_allocating(tmp_path, capsys):
    path = _zeros_model_file(tmp_path / "zeros.npz", 4096, 4095)      # 64 MB from ~70 KB
    assert path.stat().st_size < 200_000
    error, peak = _peak(fs.load_model, path)
    assert isinstance(error, ValueError) and "decompression bomb" in str(error)
    assert peak < 8 << 20
    images = tmp_path / "x.npy"
    np.save(images, np.zeros((1, 4096), np.float32))
    code, peak = _peak(main, ["predict", str(path), str(images)])
    assert code == 2 and peak < 8 << 20
    assert "decompression bomb" in _one_line_error(capsys, "predict")


def test_model_files_are_capped_by_max_parameters(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    layers.save_model(layers.Sequential(layers.Linear(100, 10)), path)
    monkeypatch.setenv("FASTSGD_MAX_PARAMETERS", "1000")
    with pytest.raises(ValueError, match="1010 parameters, more than the 1000.*"
                                         "FASTSGD_MAX_PARAMETERS"):
        fs.load_model(path)
    monkeypatch.setenv("FASTSGD_MAX_PARAMETERS", "1010")
    assert fs.load_model(path).n_in == 100
    monkeypatch.setenv("FASTSGD_MAX_PARAMETERS", "lots")
    with pytest.raises(ValueError, match="FASTSGD_MAX_PARAMETERS: expected a positive integer"):
        fs.load_model(path)


def _idx_gz(path, dims, data=None):
    """A gzipped IDX file of ``dims`` (zeros unless ``data``), written in pieces."""
    import gzip
    import struct
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims))
        if data is not None:
            f.write(np.ascontiguousarray(data, np.uint8).tobytes())
        else:
            left = int(np.prod(dims))
            while left:
                f.write(bytes(min(left, 1 << 22)))
                left -= min(left, 1 << 22)
    return path


def test_a_small_gzip_data_folder_is_refused_before_allocating(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    for split, n in (("train", 20_000), ("t10k", 20_000)):      # 15.7 MB of pixels each
        _idx_gz(folder / f"{split}-images-idx3-ubyte.gz", (n, 28, 28))
        _idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", (n,))
    assert sum(p.stat().st_size for p in folder.iterdir()) < 200_000
    code, peak = _peak(main, ["train", "--data", str(folder)])
    assert code == 2 and peak < 16 << 20
    assert "decompression bomb" in _one_line_error(capsys, "train")


def test_huge_images_are_refused_before_the_model_is_built(tmp_path, capsys):
    folder = tmp_path / "data"
    folder.mkdir()
    labels = np.array([3, 7], np.uint8)
    for split in ("train", "t10k"):                       # two 2048x2048 images: 8 MiB
        _idx_gz(folder / f"{split}-images-idx3-ubyte.gz", (2, 2048, 2048))
        _idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", (2,), labels)
    assert sum(p.stat().st_size for p in folder.iterdir()) < 100_000
    code, peak = _peak(main, ["train", "--data", str(folder), "--no-progress"])
    assert code == 2 and peak < 200 << 20
    err = _one_line_error(capsys, "train")
    assert "4194304-30-1" in err and "FASTSGD_MAX_PARAMETERS" in err


def test_a_checkpoint_whose_settings_describe_a_huge_model_is_refused_before_building(
        tmp_path, checkpoint, capsys):
    path = tmp_path / "c.npz"
    with np.load(checkpoint) as npz:
        arrays = {name: npz[name] for name in npz.files if name != "checksum"}
    state = json.loads(arrays["state"].tobytes())
    state["settings"]["hidden"] = [300000]
    arrays["state"] = np.frombuffer(json.dumps(state).encode(), np.uint8)
    write_npz(path, arrays)
    code, peak = _peak(main, ["train", "--resume", str(path), "--epochs", "1", "--no-progress"])
    assert code == 2 and peak < 32 << 20
    err = _one_line_error(capsys, "train")
    assert "784-30-1" in err and "784-300000-1" in err


# ------------------------------------------------------------ item 7: download deadline
def test_a_download_that_drips_just_fast_enough_ends_by_its_deadline(scripted, tmp_path,
                                                                     monkeypatch):
    """1,100 bytes every 0.4 s never stalls a 0.5 s window; the deadline ends it."""
    import time

    from fastsgd import download
    url, stop, set_script = scripted
    size = 16_384

    def script(h):
        h.send_response(200)
        h.send_header("Content-Length", str(size))
        h.end_headers()
        for start in range(0, size, 1100):
            h.wfile.write(bytes(min(1100, size - start)))
            h.wfile.flush()
            if stop.wait(0.4):
                return
    set_script(script)
    monkeypatch.setattr(download, "MIN_RATE", 8192)
    limit = download.download_deadline(size, 0.5)
    assert limit == 0.5 + 2
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(data.DownloadError, match="too slow: not done within its deadline of 2 s"):
        data.download_mnist(dest, base_url=url, timeout=0.5, files={"a.gz": ("0" * 64, size)})
    assert limit <= time.perf_counter() - t0 < 2 * limit     # the drip alone takes 6 s
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 1e308, 86401, True, "5"])
def test_download_timeouts_are_checked(timeout, tmp_path):
    with pytest.raises(ValueError, match="timeout: expected a positive number of seconds"):
        data.download_mnist(tmp_path, timeout=timeout)


# ------------------------------------------------------------ a folder of t10k files only
@pytest.fixture(scope="module")
def t10k_only(tmp_path_factory):
    """The generated folder's 500 images as t10k files alone, as MNIST's test set comes."""
    from .mnist_fixtures import synthetic_digits, write_idx
    folder = tmp_path_factory.mktemp("t10k")
    images, labels = synthetic_digits(500, seed=3)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    return folder, images, labels


def test_split_idx_keeps_the_order_and_validates_the_last_rows():
    train, valid = data.split_idx(10_000, 0.2)
    np.testing.assert_array_equal(train, np.arange(8000))
    np.testing.assert_array_equal(valid, np.arange(8000, 10_000))
    for bad in (0, 1, -0.1, 1.5, True, "0.2"):
        with pytest.raises(ValueError, match="valid_pct: expected a fraction in"):
            data.split_idx(10, bad)
    with pytest.raises(ValueError, match="leaves none to train on"):
        data.split_idx(1, 0.5)


def test_a_folder_of_t10k_files_only_trains_with_valid_pct(t10k_only, tmp_path, capsys):
    folder, images, labels = t10k_only
    assert main(["train", "--data", str(folder), "--epochs", "1"]) == 2
    assert "--valid-pct 0.2" in _one_line_error(capsys, "train")
    ds = data.load_mnist(folder, valid_pct=0.2)
    assert (len(ds.train_x), len(ds.valid_x)) == (400, 100)
    np.testing.assert_array_equal(ds.valid_y, labels[400:])
    np.testing.assert_array_equal(ds.train_x, images[:400].reshape(400, -1) * np.float32(1 / 255))
    model, report = tmp_path / "m.npz", tmp_path / "r.json"
    assert main(["train", "--no-progress", "--quiet", "--data", str(folder), "--valid-pct",
                 "0.2", "--digits", "all", "--epochs", "2", "--save", str(model),
                 "--json", str(report)]) == 0
    settings = json.loads(report.read_text())["settings"]
    assert (settings["n_train"], settings["n_valid"], settings["valid_pct"]) == (400, 100, 0.2)
    capsys.readouterr()
    assert main(["interpret", str(model)]) == 0        # the model's split, from its settings
    assert "100 validation images" in capsys.readouterr().out
    assert main(["train", "--no-progress", "--quiet", "--resume", str(model), "--epochs",
                 "1"]) == 0


def test_valid_pct_needs_a_folder(capsys):
    assert main(["train", "--valid-pct", "0.2"]) == 2
    assert "needs --data" in _one_line_error(capsys, "train")
    assert main(["train", "--valid-pct", "1.5"]) == 2
    assert "fraction in (0, 1)" in _one_line_error(capsys, "train")


# ------------------------------------------------------------ fastsgd bench: defaults, lines
def _bench_options(monkeypatch, argv):
    """The options ``fastsgd bench ARGV`` passes to run_bench (which is not run)."""
    from fastsgd import bench
    seen = {}

    def record(**options):
        seen.update(options)
        return []
    monkeypatch.setattr(bench, "run_bench", record)
    monkeypatch.setattr(bench, "print_table", lambda rows, machine: None)
    monkeypatch.setattr(bench, "machine_info", lambda: {})
    assert main(["bench", *argv]) == 0
    return seen


def test_bench_defaults_are_quick_and_full_keeps_the_whole_coverage(monkeypatch):
    from fastsgd.bench import runners
    quick = _bench_options(monkeypatch, [])
    assert (quick["sizes"], quick["epochs"], quick["samples"]) == ("64", 3, 10_000)
    assert quick["backends"] == [n for n in runners()
                                 if n not in ("torch.compile", "jax.jit", "jax.scan")]
    full = _bench_options(monkeypatch, ["--full"])
    assert (full["sizes"], full["epochs"], full["samples"], full["backends"]) == \
        ("small,large", 5, 60_000, None)
    given = _bench_options(monkeypatch, ["--full", "--epochs", "2", "--sizes", "256"])
    assert (given["sizes"], given["epochs"], given["samples"]) == ("256", 2, 60_000)


def test_bench_progress_is_one_line_per_row_when_not_a_terminal():
    run = _fastsgd("bench", "--kernels", "relu_forward,epoch", "--sizes", "64", "--backends",
                   "numpy", "--samples", "256", "--epochs", "1", "--budget", "0.002")
    assert run.returncode == 0, run.stderr
    assert "\r" not in run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert lines == [f"bench {i}/{len(lines)}: {label}" for i, label in enumerate(
        ["measuring the peak", "relu_forward 64x30 numpy", "relu_forward 64x128 numpy",
         "epoch 784-128-10 bs64 numpy"], start=1)]


def test_bench_checks_its_outputs_first_and_says_what_it_wrote(tmp_path, capsys):
    (tmp_path / "file").write_text("a file")
    assert main(["bench", "--json", str(tmp_path / "file" / "b.json")]) == 2
    assert "--json: cannot write" in _one_line_error(capsys, "bench")
    out = tmp_path / "new" / "b.json"
    assert main(["bench", "--kernels", "relu_forward", "--sizes", "64", "--backends", "numpy",
                 "--budget", "0.002", "--no-progress", "--json", str(out)]) == 0
    assert f"wrote {out} (created the folder {out.parent})" in capsys.readouterr().out
    assert json.loads(out.read_text())["rows"]


@pytest.mark.parametrize("option", [["--epochs", "2"], ["--samples", "100"], ["--data", "."]])
def test_bench_epoch_options_without_the_epoch_rows_are_refused(option, capsys):
    assert main(["bench", "--kernels", "relu_forward", *option]) == 2
    assert "does not apply without the epoch rows" in _one_line_error(capsys, "bench")


def test_flipped_bits_anywhere_in_a_checkpoint_are_refused_or_harmless(tmp_path, checkpoint):
    """400 bits spread over the whole file: each flip refused in one line, or (in a field
    that means nothing to the reader, such as a timestamp) the very same checkpoint."""
    whole = layers.read_checkpoint(checkpoint)
    raw = checkpoint.read_bytes()
    damaged = tmp_path / "d.npz"
    refused = 0
    for i in range(400):
        bit = (i * 7919 * 8 + i % 8) % (8 * len(raw))
        refused += _refused_with_bit_flipped(raw, bit, damaged, whole)
    assert refused > 300
