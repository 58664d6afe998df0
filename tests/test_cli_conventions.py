"""The command behaves like a command: --version, python -m fastsgd, info."""
import pathlib
import subprocess
import sys

import fastsgd as fs
from fastsgd.cli import main

from .mnist_fixtures import make_mnist_folder


def test_version_flag_prints_the_one_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"fastsgd {fs.__version__}"


def test_python_dash_m_fastsgd_runs_the_command():
    result = subprocess.run([sys.executable, "-m", "fastsgd", "info"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"fastsgd {fs.__version__}" in result.stdout and "backends:" in result.stdout


def test_info_names_the_c_kernel_and_its_threads(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    if fs.backends.available()["c"] is True:
        from fastsgd.backends import c_ext
        assert f"c backend: matmul kernel {c_ext.isa()}, threads: {c_ext.threads()}" in out


def test_runtime_info_describes_the_available_cpu_backends():
    info, available = fs.backends.runtime_info(), fs.backends.available()
    assert set(info) == {name for name in ("c", "numba") if available[name] is True}
    for fields in info.values():
        assert fields["threads"] >= 1
    if "numba" in info:
        assert info["numba"]["threading_layer"] != "not yet initialised"


def test_the_command_asks_the_backend_registry_not_a_backend_module():
    import fastsgd.cli
    import fastsgd.commands
    sources = [pathlib.Path(fastsgd.cli.__file__),
               *pathlib.Path(fastsgd.commands.__file__).parent.glob("*.py")]
    for path in sources:
        text = path.read_text()
        for module in ("c_ext", "numba_cpu", "numpy_ref", "cuda"):
            assert f"backends.{module}" not in text and f"backends import {module}" not in text, path


def test_divergence_is_one_line_and_exit_2(tmp_path, capsys):
    folder = make_mnist_folder(tmp_path, n_train=300, n_valid=100, seed=0)
    assert main(["train", "--no-progress", "--data", str(folder), "--digits", "all", "--lr", "1e30",
                 "--epochs", "2", "--backend", "numpy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fastsgd train: error: training diverged at epoch 0")
