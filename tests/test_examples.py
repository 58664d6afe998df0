"""Every script in examples/ runs to the end (its own assertions hold) and prints its result."""
import os
import pathlib
import subprocess
import sys

import pytest

from .mnist_fixtures import embedded_data_missing

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.py"))

#: A line each script prints once its claim has been checked.
EXPECTED = {
    "01_pixel_similarity.py": "pixel similarity (L2):",
    "02_pixel_weights.py": "largest difference from NumPy",
    "03_sgd_quadratic.py": "7 stop:",
    "04_linear1_by_hand.py": "linear1 by hand: accuracy",
    "05_loss_vs_metric.py": "finite difference",
    "06_batch_sizes.py": "every batch size learns:",
    "07_simple_net.py": "the deeper net matches simple_net",
    "08_all_digits.py": "all ten digits: accuracy",
    "09_compare_backends.py": "backends agree",
}

needs_data = pytest.mark.skipif(bool(embedded_data_missing()), reason=str(embedded_data_missing()))


def test_every_example_is_checked():
    assert SCRIPTS, f"no scripts found in {EXAMPLES}"
    assert sorted(EXPECTED) == [script.name for script in SCRIPTS]


@needs_data
@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_example_runs(script, tmp_path):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    assert EXPECTED[script.name] in result.stdout, result.stdout
