"""The README's Python example runs as written."""
import pathlib
import re

import pytest

from .mnist_fixtures import embedded_data_missing

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(bool(embedded_data_missing()), reason=str(embedded_data_missing()))
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["hidden"].shape == (len(namespace["valid_x"]), 30)
    assert namespace["learn"].recorder.history[-1]["batch_accuracy"] >= 0.95
    assert (tmp_path / "net.npz").exists()


@pytest.mark.skipif(bool(embedded_data_missing()), reason=str(embedded_data_missing()))
def test_readme_book_code_runs(tmp_path, monkeypatch, capsys):
    text = README.read_text().split("## The book's code", 1)[1]
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = code.replace("learn.fit(40, 0.1)", "learn.fit(10, 0.5)")     # quicker, as accurate
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    learn = namespace["learn"]
    assert learn.recorder.values[-1][2] >= 0.95
    assert "function on tensors" in learn.fused
    accs = [namespace["batch_accuracy"](namespace["linear1"](xb), yb)
            for xb, yb in namespace["valid_dl"]]
    assert float(namespace["torch"].stack(accs).mean()) >= 0.85    # the embedded 800 images
