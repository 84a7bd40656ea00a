"""The example scripts run, each under its own backend, in a subprocess."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

import golden_data
from task_families import datasets

ROOT = Path(__file__).resolve().parents[1]
THETA = str(golden_data.GOLDEN_DIR / "velo_perturbed_theta")
BACKEND = keras.backend.backend()


def _run(args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": BACKEND, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout


def test_custom_training_loop_example():
    output = _run([f"examples/custom_loop_{BACKEND}.py", "--steps", "20", "--weights", "bundled"])
    losses = [float(line.split()[-1]) for line in output.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and all(loss == loss for loss in losses)


def test_quickstart_runs_and_plots(tmp_path):
    out = tmp_path / "curves.png"
    output = _run(
        ["examples/quickstart.py", "--steps", "100", "--weights", THETA, "--verbose", "0", "--out", str(out)]
    )
    assert "VeLO" in output and "Adam(1e-3)" in output
    assert out.stat().st_size > 10_000


@pytest.mark.skipif(not datasets.has_fashion_mnist(), reason="Debian dataset-fashion-mnist not installed")
def test_fashion_mnist_is_the_real_dataset():
    images, labels = datasets.load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and images.dtype == "float32"
    assert labels.min() == 0 and labels.max() == 9
    assert (labels == 3).sum() == 6000
    test_images, _ = datasets.load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)


def test_missing_fashion_mnist_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_VELO_FASHION_MNIST", str(tmp_path))
    assert not datasets.has_fashion_mnist()
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        datasets.load_fashion_mnist()


def test_digits_split_is_deterministic_and_disjoint():
    train, _ = datasets.load_digits("train")
    test, _ = datasets.load_digits("test")
    assert len(train) + len(test) == 1797
    again, _ = datasets.load_digits("train")
    assert (train == again).all()
