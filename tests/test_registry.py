"""The backend registry: availability as data, defaults, clear errors."""
import subprocess
import sys

import numpy as np
import pytest

from fastsgd import backends


def test_available_maps_every_backend_to_true_or_a_reason():
    status = backends.available()
    assert list(status) == backends.names()
    assert status["numpy"] is True
    for value in status.values():
        assert value is True or (isinstance(value, str) and value)


def test_get_returns_kernels_under_the_contract_names():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(12, dtype=np.float32).reshape(3, 4)
    for name, ok in backends.available().items():
        if ok is True:
            np.testing.assert_allclose(backends.get(name).matmul(a, b), a @ b)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown name 'cobol'; expected one of"):
        backends.get("cobol")


def test_unavailable_backend_keeps_its_reason(monkeypatch):
    monkeypatch.setitem(backends._REGISTRY, "broken", ("fastsgd.backends.no_such_module", ("float32",)))
    monkeypatch.setattr(backends, "PREFERENCE", ("broken", *backends.PREFERENCE))
    monkeypatch.setattr(backends, "_reasons", {})
    assert "No module named" in backends.available()["broken"]
    with pytest.raises(backends.BackendUnavailable, match="backend 'broken' is unavailable"):
        backends.get("broken")
    assert backends.default_name() != "broken"  # the fastest *available* one


def test_environment_variable_picks_the_default(monkeypatch):
    monkeypatch.setenv("FASTSGD_BACKEND", "numpy")
    assert backends.get().name == "numpy"
    monkeypatch.setenv("FASTSGD_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown name 'nope'"):
        backends.get()


def test_importing_fastsgd_imports_no_backend():
    code = "import sys, fastsgd; print(any(m.startswith('numba') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
