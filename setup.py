"""Build script: metadata lives in pyproject.toml.

The C backend (``csrc/`` -> ``fastsgd._ckernels``) is built by cffi on
``pip install .`` and ``pip install -e .``.  The build is optional: without a
working C compiler the install still succeeds, prints a warning, and the ``c``
backend reports itself unavailable.  Set ``FASTSGD_REQUIRE_C=1`` (CI does) to make
a failed C build fail the install.
"""
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

REQUIRE_C = os.environ.get("FASTSGD_REQUIRE_C", "") not in ("", "0")


class optional_build_ext(build_ext):
    """build_ext that turns a failed C build into a warning unless FASTSGD_REQUIRE_C=1."""

    skipped = False

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, or a step after a skipped extension
            if REQUIRE_C or not self.skipped:
                self._skip(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # compile or link error
            self._skip(exc, ext.name)

    def _skip(self, exc, name="the C extension"):
        if REQUIRE_C:
            raise exc
        self.skipped = True
        print(f"\nWARNING: could not build {name} ({type(exc).__name__}: {exc}).\n"
              "fastsgd is installed without its C backend; the numba and numpy backends "
              "still work.\nInstall a C compiler with OpenMP (e.g. gcc) and reinstall to "
              "get it; FASTSGD_REQUIRE_C=1 makes this an error.\n", file=sys.stderr)


setup(
    cffi_modules=["csrc/build.py:ffibuilder"],
    cmdclass={"build_ext": optional_build_ext},
)
