"""Tests for fastsgd.files: the one writer (atomic replace, modes, symlinks, device
nodes, FIFOs, stdout, Ctrl-C), check_writable and the checked .npz reader."""
from __future__ import annotations

import io
import json
import os
import stat
import threading
import tracemalloc
import zipfile

import numpy as np
import pytest

from fastsgd import files
from fastsgd.npz import BadArchive, NpzArchive

requires_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                                   reason="making device nodes needs root")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def leftovers(folder):
    """Names in ``folder`` that look like temp files of the writer."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def private_null(path):
    """A character device with /dev/null's numbers at ``path`` (skip when that is impossible)."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.stat("/dev/null").st_rdev)
    except (OSError, AttributeError) as e:
        pytest.skip(f"cannot make a device node: {e}")
    return path


# --------------------------------------------------------------------------- modes

@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_0666_minus_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        files.write_json(tmp_path / "a.json", {"a": 1})
        files.write_bytes(tmp_path / "b.bin", b"x")
    finally:
        os.umask(old)
    for name in ("a.json", "b.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected


def test_a_replaced_file_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "a.json"
    path.write_text("{}")
    path.chmod(0o640)
    files.write_json(path, [1, 2])
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and json.loads(path.read_text()) == [1, 2]


# --------------------------------------------------------------------------- what the path is

def test_a_symlink_stays_a_symlink_and_its_target_gets_the_content(tmp_path):
    real = tmp_path / "store" / "real.json"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(os.path.relpath(real, tmp_path))
    files.write_json(link, {"new": True})
    assert link.is_symlink() and json.loads(real.read_text()) == {"new": True}
    assert leftovers(tmp_path) == [] and leftovers(real.parent) == []


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "link.bin"
    link.symlink_to(tmp_path / "made.bin")
    files.write_bytes(link, b"abc")
    assert link.is_symlink() and (tmp_path / "made.bin").read_bytes() == b"abc"


@requires_root
def test_a_device_node_is_written_in_place_not_renamed_over(tmp_path):
    node = private_null(tmp_path / "null")
    files.write_json(node, {"a": 1})
    files.write_bytes(node, b"x" * 100)
    with files.open_output(node) as f:          # a zip writer must not seek on the device
        np.savez(f, a=np.arange(10))
    assert stat.S_ISCHR(node.stat().st_mode)
    assert leftovers(tmp_path) == []


def test_dev_null_via_a_symlink_stays_a_device(tmp_path):
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null")
    link = tmp_path / "out.json"
    link.symlink_to("/dev/null")
    files.write_json(link, {"a": 1})
    assert link.is_symlink() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_a_fifo_is_written_in_place(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    files.write_bytes(fifo, b"through the pipe")
    reader.join(5)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(fifo.stat().st_mode)


def test_dash_is_stdout(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert files.write_json("-", {"to": "stdout"}) is not None
    assert json.loads(capsys.readouterr().out) == {"to": "stdout"}
    assert list(tmp_path.iterdir()) == []


def test_an_npz_to_stdout(capsysbinary):
    with files.open_output("-") as f:
        np.savez(f, a=np.arange(5))
    with np.load(io.BytesIO(capsysbinary.readouterr().out)) as npz:
        np.testing.assert_array_equal(npz["a"], np.arange(5))


def test_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        files.write_json(tmp_path, {})


# --------------------------------------------------------------------------- failures and Ctrl-C

def test_an_error_in_the_block_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.bin"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="boom"):
        with files.open_output(path) as f:
            f.write(b"new, half written")
            raise ValueError("boom")
    assert path.read_bytes() == b"old" and leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["write", "fsync", "before replace", "after replace"])
def test_ctrl_c_at_any_point_leaves_old_or_new_and_no_temp(tmp_path, monkeypatch, where):
    path = tmp_path / "m.json"
    path.write_text('"old"')
    real_replace, real_fsync = os.replace, os.fsync

    def interrupt(*args):
        raise KeyboardInterrupt

    def replace(src, dst):
        if where == "after replace":
            real_replace(src, dst)
        raise KeyboardInterrupt

    if where == "fsync":
        monkeypatch.setattr(files.os, "fsync", interrupt)
    elif where != "write":
        monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        with files.open_output(path, binary=False) as f:
            f.write('"new"')
            if where == "write":
                raise KeyboardInterrupt
    monkeypatch.setattr(files.os, "replace", real_replace)
    monkeypatch.setattr(files.os, "fsync", real_fsync)
    assert path.read_text() == ('"new"' if where == "after replace" else '"old"')
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- check_writable

def test_check_writable_accepts_new_paths_and_leaves_nothing(tmp_path):
    files.check_writable(tmp_path / "a" / "b" / "c.json")
    files.check_writable(tmp_path / "plain.json")
    files.check_writable("-")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("make, message", [
    (lambda t: "/proc/x/m.npz", "cannot create folder /proc/x"),
    (lambda t: t, "is a folder"),
    (lambda t: ((t / "file").write_text("x"), t / "file" / "m.npz")[1], "is not a folder"),
])
def test_check_writable_refuses(tmp_path, make, message):
    with pytest.raises(OSError, match=message):
        files.check_writable(make(tmp_path))


# --------------------------------------------------------------------------- NpzArchive

def npy_member(shape, dtype="<f4", data=b""):
    """The bytes of an .npy file with this header followed by ``data``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + data


def write_zip(path, members, compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, payload in members.items():
            z.writestr(name, payload)
    return path


def test_npz_archive_round_trip_with_headers_first(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    f = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    np.savez(tmp_path / "a.npz", a=a, f=f, e=np.zeros(0))
    with NpzArchive(tmp_path / "a.npz") as npz:
        assert npz.headers["a"].shape == (3, 4) and npz.headers["a"].dtype == np.float32
        assert npz.headers["f"].fortran_order and npz.headers["e"].size == 0
        np.testing.assert_array_equal(npz.read("a"), a)
        np.testing.assert_array_equal(npz.read("f"), f)
        assert npz.read("e").shape == (0,)


def test_npz_archive_reads_huge_headers_without_allocating(tmp_path):
    path = tmp_path / "big.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy_member((40_000, 1000), "|u1"))
            zeros = bytes(1 << 20)
            for _ in range(40_000 * 1000 // len(zeros)):
                member.write(zeros)
            member.write(bytes(40_000 * 1000 % len(zeros)))
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        with NpzArchive(path) as npz:
            assert npz.headers["x"].shape == (40_000, 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


@pytest.mark.parametrize("members, message", [
    ({"x.npy": npy_member((20000, 20000), data=bytes(16))}, "declares shape"),
    ({"x.npy": npy_member((2,), data=bytes(100))}, "declares shape"),
    ({"x.txt": b"hello"}, "non-.npy member"),
    ({"x.npy": b"\x93NUMPY\x01\x00garbage"}, "bad .npy header"),
    ({"x.npy": b"short"}, "bad .npy header"),
    ({"x.npy": npy_member((1,), "|O", bytes(8))}, "Python objects"),
])
def test_npz_archive_refuses_malformed_members(tmp_path, members, message):
    path = write_zip(tmp_path / "bad.npz", members)
    with pytest.raises(BadArchive, match=message) as e:
        NpzArchive(path)
    assert str(path) in str(e.value) and isinstance(e.value, ValueError)


def test_npz_archive_refuses_non_zip_and_reports_corrupt_data(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(BadArchive, match="not an .npz archive"):
        NpzArchive(tmp_path / "junk.npz")
    path = tmp_path / "crc.npz"
    np.savez(path, a=np.arange(1000, dtype=np.float32))
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"\x93NUMPY") + 200] ^= 0xFF            # a data byte: the CRC no longer matches
    path.write_bytes(bytes(raw))
    with NpzArchive(path) as npz, pytest.raises(BadArchive, match="corrupt data"):
        npz.read("a")
    with pytest.raises(FileNotFoundError):
        NpzArchive(tmp_path / "absent.npz")
