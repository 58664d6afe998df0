"""Packaging: the sdist carries what its tests need, the wheel carries the embedded data,
the install pulls nothing heavy, and there is one version string.

``FASTSGD_SDIST_CHECK=1`` also builds the sdist, installs it in a fresh virtual
environment, builds its C extension in the unpacked tree and runs its whole test suite
there (slow; needs ``build`` and access to a package index).
"""
from __future__ import annotations

import importlib.metadata
import os
import pathlib
import re
import subprocess
import sys
import tarfile

import pytest

import fastsgd as fs

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("scikit-learn", "sklearn", "scipy", "pandas", "mlxtend")


def pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def manifest_files() -> set[str]:
    """The files MANIFEST.in selects, as setuptools' sdist command computes them."""
    egg_info = pytest.importorskip("setuptools.command.egg_info")
    listing = egg_info.FileList()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        for line in (ROOT / "MANIFEST.in").read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                listing.process_template_line(line)
    finally:
        os.chdir(cwd)
    return {pathlib.PurePath(f).as_posix() for f in listing.files}


def files_under(folder: str) -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")


def test_the_sdist_carries_every_file_its_tests_need():
    shipped = manifest_files()
    needed = [*files_under("tests"), *files_under("examples"), *files_under("fastsgd/datasets"),
              "README.md", "LICENSE", "pyproject.toml", "setup.py", "csrc/build.py",
              "fastsgd/py.typed", *(p.relative_to(ROOT).as_posix() for p in ROOT.glob("csrc/*.[ch]"))]
    assert "tests/mnist_fixtures.py" in needed and "tests/conftest.py" in needed
    missing = [f for f in needed if f not in shipped]
    assert not missing, f"MANIFEST.in leaves out {missing}"


def test_the_wheel_carries_the_embedded_data_and_py_typed():
    package_data = pyproject()["tool"]["setuptools"]["package-data"]["fastsgd"]
    wanted = ["py.typed", *(p.relative_to(ROOT / "fastsgd").as_posix()
                            for p in (ROOT / "fastsgd" / "datasets").iterdir() if p.is_file())]
    assert "datasets/mnist_5k.csv.gz" in wanted
    assert sorted(package_data) == sorted(wanted)
    assert (pathlib.Path(fs.__file__).parent / "py.typed").is_file()


def test_no_dependency_or_extra_pulls_heavy_packages():
    project = pyproject()["project"]
    extras = project["optional-dependencies"]
    assert extras["data"] == []                 # kept so that `pip install -e ".[data]"` works
    for requirement in [*project["dependencies"], *(r for rs in extras.values() for r in rs)]:
        name = re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower()
        assert name not in HEAVY, requirement


def test_one_version_string():
    project = pyproject()
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fastsgd.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", fs.__version__)
    try:
        installed = importlib.metadata.version("fastsgd")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("fastsgd is not installed, only importable")
    assert installed == fs.__version__


@pytest.mark.skipif(os.environ.get("FASTSGD_SDIST_CHECK") != "1",
                    reason="slow: set FASTSGD_SDIST_CHECK=1 to build, install and test the sdist")
def test_the_sdist_installs_and_passes_its_own_tests(tmp_path):
    pytest.importorskip("build", reason="building the sdist needs `pip install build`")
    run = lambda *args, **kw: subprocess.run(args, check=True, timeout=1800, **kw)  # noqa: E731
    run(sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp_path / "dist"), str(ROOT))
    (sdist,) = (tmp_path / "dist").glob("fastsgd-*.tar.gz")
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp_path / "src", filter="data")
    (source,) = (tmp_path / "src").iterdir()
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", str(venv))
    python = str(venv / "bin" / "python")
    run(python, "-m", "pip", "install", "-q", f"{sdist}[test]")
    listed = run(python, "-m", "pip", "list", capture_output=True, text=True).stdout.lower()
    assert not [name for name in HEAVY if re.search(rf"^{name}\s", listed, re.M)]
    # Run from the unpacked tree, the tests import its sources: build the C extension
    # there as its README says (the installed copy has its own), then the whole suite.
    run(python, "csrc/build.py", "-q", cwd=source)
    run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=source,
        env={**{k: v for k, v in os.environ.items() if k != "FASTSGD_SDIST_CHECK"},
             "FASTSGD_REQUIRE_C": "1"})
