"""The numba backend's disk cache: a second process compiles nothing; where the cache lives."""
import json
import os
import subprocess
import sys

import pytest

from fastsgd import backends
from fastsgd.cli import main

pytestmark = pytest.mark.skipif(backends.available().get("numba") is not True,
                                reason="numba unavailable")

_WARM_UP = """
import json
from fastsgd.backends import numba_warmup
result = numba_warmup.warm_up()
print(json.dumps({"compiled": result["compiled"], "cache_dir": result["cache_dir"]}))
"""


def _warm_up_in_a_new_process():
    done = subprocess.run([sys.executable, "-c", _WARM_UP], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_second_process_compiles_nothing():
    first = _warm_up_in_a_new_process()      # compiles what the cache lacks (or nothing)
    second = _warm_up_in_a_new_process()
    assert second["compiled"] == [], f"compiled again in a new process: {second['compiled']}"
    assert second["cache_dir"] == first["cache_dir"]
    assert any(name.endswith(".nbi") for name in os.listdir(second["cache_dir"]))


def test_warmup_command_says_where_the_cache_lives(capsys):
    assert main(["warmup"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("numba: ")
    assert out[1].startswith("numba cache: ")
    assert os.path.isdir(out[1].removeprefix("numba cache: "))


def test_cache_falls_back_to_a_temporary_folder_when_nothing_is_writable(tmp_path, monkeypatch):
    import numba

    from fastsgd.backends import numba_cpu
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    blocker = tmp_path / "a-file"
    blocker.write_text("")                       # a folder cannot be made inside a file
    unwritable = str(blocker / "sub")
    fallback = numba_cpu.fallback_cache_dir(unwritable, unwritable)
    import tempfile
    assert fallback is not None and os.path.dirname(fallback) == tempfile.gettempdir()
    assert os.path.basename(fallback).startswith("fastsgd-numba-cache")
    assert numba_cpu.fallback_cache_dir(str(tmp_path), unwritable) is None      # in the tree
    assert numba_cpu.fallback_cache_dir(unwritable, str(tmp_path / "user")) is None  # user's
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "chosen"))
    assert numba_cpu.fallback_cache_dir(unwritable, unwritable) is None         # NUMBA_CACHE_DIR


class _Features(dict):
    """A stand-in for llvmlite's host feature map."""

    def flatten(self):
        return ",".join(("+" if on else "-") + name for name, on in sorted(self.items()))


def test_wide_vectors_only_on_avx512_and_only_when_numba_was_not_told():
    from fastsgd.backends.numba_target import wide_vector_features
    avx512, avx2 = _Features(avx2=True, avx512f=True), _Features(avx2=True, avx512f=False)
    assert wide_vector_features(avx512, None, None) == "+avx2,+avx512f,-prefer-256-bit"
    assert wide_vector_features(avx2, None, None) is None
    assert wide_vector_features(avx512, "skylake-avx512", None) is None      # NUMBA_CPU_NAME
    assert wide_vector_features(avx512, None, "+avx2") is None               # NUMBA_CPU_FEATURES
