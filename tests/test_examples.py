"""Every script in examples/ runs to the end (its own assertions hold) and prints its result."""
import os
import pathlib
import re
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

#: Arguments that keep a script quick in the tests (fewer epochs than the book's).
ARGS = {"07_simple_net.py": ["--epochs", "20"]}

#: The real MNIST t10k files, when present (tests/test_data.py reads them too).
REAL_MNIST = pathlib.Path(os.environ.get(
    "FASTSGD_MNIST_DIR", pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))

needs_data = pytest.mark.skipif(bool(embedded_data_missing()), reason=str(embedded_data_missing()))


def test_every_example_is_checked():
    assert SCRIPTS, f"no scripts found in {EXAMPLES}"
    assert sorted(EXPECTED) == [script.name for script in SCRIPTS]


@needs_data
@pytest.mark.parametrize("script", SCRIPTS, ids=[script.name for script in SCRIPTS])
def test_example_runs(script, tmp_path):
    result = _run(script, tmp_path, *ARGS.get(script.name, []))
    assert EXPECTED[script.name] in result.stdout, result.stdout


def _run(script, cwd, *args):
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True,
                            text=True, timeout=120, env={**os.environ, "PYTHONPATH": path})
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.mark.skipif(not (REAL_MNIST / "t10k-labels-idx1-ubyte.gz").is_file(),
                    reason="real MNIST t10k files not available")
def test_the_chapter_reaches_the_books_accuracies_on_real_mnist(tmp_path):
    """The book's code on the 3s and 7s of the real MNIST t10k files (split 5:1): the
    hand-written linear1 >= 93%, Learner(simple_net).fit(40, 0.1) >= 96%."""
    linear = _run(EXAMPLES / "04_linear1_by_hand.py", tmp_path, "--data", str(REAL_MNIST)).stdout
    assert float(re.search(r"linear1: validation accuracy ([\d.]+)%", linear).group(1)) >= 93
    net = _run(EXAMPLES / "07_simple_net.py", tmp_path, "--data", str(REAL_MNIST)).stdout
    for path in ("autograd", "fused"):
        found = re.search(rf"Learner\(simple_net\) on the {path} path: accuracy ([\d.]+)%", net)
        assert float(found.group(1)) >= 96, net
