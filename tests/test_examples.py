"""The example scripts run, each under its own backend, in a subprocess."""

import json
import math
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
KERAS_EXAMPLES = (
    "image_convnet",
    "text_transformer",
    "timeseries_forecasting",
    "autoencoder",
    "residual_batchnorm",
)
QUICK_STEPS = 6  # examples/_common.py's --quick


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


@pytest.mark.slow
@pytest.mark.parametrize("example", KERAS_EXAMPLES)
def test_example_trains_with_velo_and_writes_finite_losses(example, tmp_path):
    record_path = tmp_path / "run.json"
    _run([f"examples/{example}.py", "--optimizer", "velo", "--quick", "--verbose", "0",
          "--json", str(record_path)])
    record = json.loads(record_path.read_text())
    assert record["example"] == example and record["backend"] == BACKEND
    assert record["steps"] == len(record["step_losses"]) == QUICK_STEPS
    numbers = [*record["step_losses"], record["final_train_loss"], record["metric"]["value"]]
    assert all(math.isfinite(number) for number in numbers), numbers


@pytest.mark.slow
@pytest.mark.backends("jax")  # the comparison's plumbing is backend-independent; each example runs on every backend above
def test_compare_runs_velo_adam_and_tuned_adam_side_by_side(tmp_path):
    examples = ("timeseries_forecasting", "image_convnet")
    command = ["examples/compare.py", "--quick", "--examples", ",".join(examples),
               "--grid", "1e-3,3e-3", "--out", str(tmp_path)]
    _run(command)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["backend"] == BACKEND and list(results["examples"]) == list(examples)
    for result in results["examples"].values():
        assert result["tuned_learning_rate"] in (1e-3, 3e-3)
        assert result["adam_default"]["learning_rate"] == 1e-3
        for who in ("velo", "adam_default", "adam_tuned"):
            assert math.isfinite(result[who]["final_train_loss"])
            assert math.isfinite(result[who]["metric"])
        assert all(math.isfinite(ratio) for ratio in result["ratios"].values())

    rows = [line for line in (tmp_path / "table.md").read_text().splitlines()
            if line.startswith("| ") and line.split(" | ")[0][2:] in examples]
    assert [row.split(" | ")[0][2:] for row in rows] == list(examples)
    for row in rows:
        numbers = [float(cell) for cell in row.strip("| ").split(" | ")[2:]]
        assert len(numbers) == 11 and all(math.isfinite(number) for number in numbers)
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000

    again = _run(command)  # resumes: every run's JSON is there
    assert again.count("done before, skipped") == 2 * 3


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


def _compare_module():
    """examples/compare.py imported without running it (examples/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("examples_compare", ROOT / "examples" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.backends("jax")  # pure Python plumbing
def test_compare_reruns_a_run_whose_code_or_command_changed(tmp_path):
    """A recorded run is reused only if it came from the same command, backend and code."""
    compare = _compare_module()
    run = compare.Run("autoencoder", "velo")
    arguments = run.arguments(tmp_path, 0, True, "bundled")
    digest = compare.source_digest(run)
    assert digest == compare.source_digest(compare.Run("autoencoder", "velo"))
    assert digest != compare.source_digest(compare.Run("autoencoder", "adam", 1e-3))  # keras_velo counts for VeLO
    assert digest != compare.source_digest(compare.Run("image_convnet", "velo"))
    path = run.json_path(tmp_path)
    path.parent.mkdir(parents=True)
    record = {"command": ["autoencoder.py", *arguments], "backend": BACKEND, "source_sha256": digest}
    path.write_text(json.dumps(record))
    assert compare.recorded_run(path, "autoencoder.py", arguments, BACKEND, digest) == record
    assert compare.recorded_run(path, "autoencoder.py", arguments, BACKEND, "edited code") is None
    assert compare.recorded_run(path, "autoencoder.py", arguments, "torch", digest) is None
    other_seed = run.arguments(tmp_path, 1, True, "bundled")
    assert compare.recorded_run(path, "autoencoder.py", other_seed, BACKEND, digest) is None
    del record["source_sha256"]  # recorded before runs carried their code's digest
    path.write_text(json.dumps(record))
    assert compare.recorded_run(path, "autoencoder.py", arguments, BACKEND, digest) is None


@pytest.mark.slow
@pytest.mark.backends("jax")  # meta-training runs on JAX whatever the backend
def test_meta_train_your_own_fine_tunes_on_the_users_family(tmp_path):
    out = tmp_path / "run"
    output = _run(["examples/meta_train_your_own.py", "--out", str(out), "--minutes", "0.2",
                   "--validation-tasks", "2", "--validations", "1"])
    assert "meta-validation on 2 held-out seeds" in output and "mean" in output
    assert (out / "theta" / "params").exists() and (out / "meta_valid.png").stat().st_size > 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {f for r in records if r.get("kind") != "validation" for f in r["families"]} == \
        {"__main__:regression_family"}
    assert sum(r.get("kind") == "validation" for r in records) >= 2
