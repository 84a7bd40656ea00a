"""The example scripts run, each under its own backend, in a subprocess."""

import importlib.util
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
QUICK_STEPS = 6  # examples/_common.py's --quick


def _compare_module():
    """examples/compare.py imported without running it (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("examples_compare", ROOT / "examples" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None
KERAS_EXAMPLES = [  # compare.py's registry of the fit-based examples
    pytest.param(example, marks=pytest.mark.skipif(
        example.startswith("keras_hub") and not HAS_KERAS_HUB,
        reason="keras-hub not installed: pip install --no-deps -r examples/requirements-keras-hub.txt"))
    for example in _compare_module().EXAMPLES
]


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
def test_compare_runs_velos_and_the_alternatives_side_by_side(tmp_path):
    example = "timeseries_forecasting"
    command = ["examples/compare.py", "--quick", "--examples", example, "--grid", "1e-3,3e-3",
               "--alternatives", "adamw,muon", "--untuned",
               "--velo-weights", f"bundled,perturbed={THETA}", "--out", str(tmp_path)]
    _run(command)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["backend"] == BACKEND and list(results["examples"]) == [example]
    assert results["grids"] == {"adam": [1e-3, 3e-3], "adamw": [1e-3], "muon": [1e-3]}
    assert [w["key"] for w in results["velo_weights"]] == ["velo", "velo_perturbed"]
    result = results["examples"][example]
    adam, adamw, muon = (result["alternatives"][name] for name in ("adam", "adamw", "muon"))
    assert adam["tuned_learning_rate"] in (1e-3, 3e-3) and set(adam["grid"]) == {"0.001", "0.003"}
    assert adam["default"]["learning_rate"] == adamw["default"]["learning_rate"] == 1e-3
    assert adamw["default"]["label"] == "AdamW(0.001)" and muon["default"]["label"] == "Muon(0.001)"
    other = result["other_velos"]["velo_perturbed"]
    for summary in (result["velo"], adam["default"], adam["tuned"], adamw["default"], muon["default"], other):
        assert math.isfinite(summary["final_train_loss"]) and math.isfinite(summary["metric"])
        assert summary["train_loss_mode"] == "inference mode (no BatchNorm)"
        assert (tmp_path / summary["run"]).exists()
    assert result["velo"]["run"].endswith("/velo.json") and other["run"].endswith("/velo_perturbed.json")
    assert sorted(result["ratios"]) == sorted(
        f"{quantity}_velo_over_{key}" for quantity in ("train_loss", "metric")
        for key in ("adam_default", "adam_tuned", "adamw_default", "muon_default"))
    assert all(math.isfinite(ratio) for ratio in [*result["ratios"].values(), *other["ratios"].values()])
    assert other["ratios"]["train_loss_velo_perturbed_over_velo"] == pytest.approx(
        other["final_train_loss"] / result["velo"]["final_train_loss"])
    summary = results["summary"]["velo"]
    assert summary["examples"] == 1 and summary["median_loss_ratio_to_tuned_adam"] == pytest.approx(
        result["ratios"]["train_loss_velo_over_adam_tuned"])

    rows = [line.strip("| ").split(" | ") for line in (tmp_path / "table.md").read_text().splitlines()
            if line.startswith(f"| {example} |")]
    assert len(rows) == 4  # losses, metrics, and one ratio row per VeLO
    assert len(rows[0]) == 1 + 2 + 4  # example, two VeLOs, Adam(1e-3), tuned Adam, AdamW, Muon
    assert all(math.isfinite(float(cell.strip("*"))) for row in rows for cell in row[1:] if "(" not in cell)
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "loss_curves.png").stat().st_size > 10_000

    again = _run(command)  # resumes: every run's JSON is there
    assert again.count("done before, skipped") == 6  # 2 VeLOs, Adam at 1e-3 and 3e-3, AdamW, Muon


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


@pytest.mark.backends("jax")  # pure Python plumbing
def test_compare_reruns_a_run_whose_code_or_command_changed(tmp_path):
    """A recorded run is reused only if it came from the same command, backend and code."""
    compare = _compare_module()
    bundled, = compare.parse_velo_weights("bundled")
    run = compare.Run("autoencoder", "velo", velo=bundled)
    arguments = run.arguments(tmp_path, 0, True)
    digest = compare.source_digest(run)
    assert digest == compare.source_digest(compare.Run("autoencoder", "velo", velo=bundled))
    assert digest != compare.source_digest(compare.Run("autoencoder", "adam", 1e-3))  # keras_velo counts for VeLO
    assert digest != compare.source_digest(compare.Run("image_convnet", "velo", velo=bundled))
    path = run.json_path(tmp_path)
    path.parent.mkdir(parents=True)
    record = {"command": ["autoencoder.py", *arguments], "backend": BACKEND, "source_sha256": digest}
    path.write_text(json.dumps(record))
    assert compare.recorded_run(path, "autoencoder.py", arguments, BACKEND, digest) == record
    assert compare.recorded_run(path, "autoencoder.py", arguments, BACKEND, "edited code") is None
    assert compare.recorded_run(path, "autoencoder.py", arguments, "torch", digest) is None
    other_seed = run.arguments(tmp_path, 1, True)
    assert compare.recorded_run(path, "autoencoder.py", other_seed, BACKEND, digest) is None
    first_is_a_path = compare.Run("autoencoder", "velo", velo=compare.parse_velo_weights(THETA)[0])
    assert first_is_a_path.json_path(tmp_path) == path  # same file, another command: run again
    assert compare.recorded_run(path, "autoencoder.py", first_is_a_path.arguments(tmp_path, 0, True),
                                BACKEND, digest) is None
    del record["source_sha256"]  # recorded before runs carried their code's digest
    path.write_text(json.dumps(record))
    assert compare.recorded_run(path, "autoencoder.py", arguments, BACKEND, digest) is None

    adamw, adam = compare.Run("autoencoder", "adamw", 1e-3), compare.Run("autoencoder", "adam", 1e-3)
    with pytest.raises(ValueError, match="unknown optimizer"):
        compare.Run("autoencoder", "sgd", 1e-3)
    assert adamw.name == "adamw_lr0.001" and adamw.json_path(tmp_path) != adam.json_path(tmp_path)
    assert adamw.arguments(tmp_path, 0, True)[:2] == ["--optimizer", "adamw"]
    assert compare.source_digest(adamw) == compare.source_digest(adam)  # same code; the command differs

    checkpoint = tmp_path / "candidate"  # a second VeLO's weights: its checkpoint file counts
    checkpoint.mkdir()
    (checkpoint / "params").write_bytes(b"theta one")
    _, candidate = compare.parse_velo_weights(f"bundled,candidate={checkpoint}")
    second = compare.Run("autoencoder", "velo", velo=candidate)
    assert second.name == "velo_candidate" and second.json_path(tmp_path).name == "velo_candidate.json"
    assert second.arguments(tmp_path, 0, True)[4:6] == ["--weights", str(checkpoint)]
    before = compare.source_digest(second)
    assert before != digest
    (checkpoint / "params").write_bytes(b"theta two")  # retrained in place
    assert compare.source_digest(second) != before


def _record(example, optimizer, train_loss, metric, higher_is_better=True, learning_rate=None):
    return {"example": example, "optimizer": optimizer, "label": optimizer, "learning_rate": learning_rate,
            "final_train_loss": train_loss, "seconds": 1.0, "data": "d", "steps": 6,
            "train_loss_mode": "inference mode (no BatchNorm)",
            "metric": {"name": "accuracy" if higher_is_better else "loss", "value": metric,
                       "higher_is_better": higher_is_better}}


@pytest.mark.backends("jax")  # pure Python plumbing
def test_compare_tunes_each_alternative_and_summarises_every_velo():
    compare = _compare_module()
    velo_weights = compare.parse_velo_weights("bundled,candidate=/tmp/theta,/elsewhere/repaired/")
    assert [(w.key, w.title, w.spec) for w in velo_weights] == [
        ("velo", "VeLO", "bundled"), ("velo_candidate", "VeLO candidate", "/tmp/theta"),
        ("velo_repaired", "VeLO repaired", "/elsewhere/repaired/")]
    for bad in ("", "bundled,x=/a,x=/b", "bundled,candidate="):
        with pytest.raises(ValueError):
            compare.parse_velo_weights(bad)
    velo_weights = velo_weights[:2]
    grids = compare.default_grids(["adam", "adamw", "muon"], adam_grid=[3e-3])
    assert grids == {"adam": (1e-3, 3e-3), "adamw": (1e-3,), "muon": (3e-4, 1e-3, 3e-3)}
    assert compare.default_grids(["muon"], untuned=True) == {"muon": (1e-3,)}
    runs = compare.plan_runs(["image_convnet", "autoencoder"], grids, velo_weights)
    assert [run.name for run in runs[:8]] == [
        "velo", "velo_candidate", "adam_lr0.001", "adam_lr0.003", "adamw_lr0.001",
        "muon_lr0.0003", "muon_lr0.001", "muon_lr0.003"]
    assert len(runs) == 16

    # accuracy (higher is better): the candidate is worse than VeLO; loss: it is better
    numbers = {
        "image_convnet": {"velo": (0.5, 0.80), "velo_candidate": (0.6, 0.75), "adamw_lr0.001": (0.4, 0.70),
                          "adam_lr0.001": (1.0, 0.60), "adam_lr0.003": (0.8, 0.78),
                          "muon_lr0.0003": (0.9, 0.5), "muon_lr0.001": (0.45, 0.82), "muon_lr0.003": (0.3, 0.81)},
        "autoencoder": {"velo": (0.02, 0.02), "velo_candidate": (0.01, 0.01), "adamw_lr0.001": (0.04, 0.04),
                        "adam_lr0.001": (0.05, 0.05), "adam_lr0.003": (0.03, 0.03),
                        "muon_lr0.0003": (0.06, 0.06), "muon_lr0.001": (0.05, 0.05), "muon_lr0.003": (0.04, 0.04)},
    }
    records = {run: _record(run.example, run.optimizer, *numbers[run.example][run.name],
                            higher_is_better=run.example == "image_convnet", learning_rate=run.learning_rate)
               for run in runs}
    results = compare.summarise(["image_convnet", "autoencoder"], grids, records, velo_weights)
    image = results["image_convnet"]
    adamw, muon = image["alternatives"]["adamw"], image["alternatives"]["muon"]
    assert adamw["default"]["final_train_loss"] == 0.4 and adamw["default"]["run"] == "runs/image_convnet/adamw_lr0.001.json"
    assert muon["tuned_learning_rate"] == 1e-3 and muon["tuned"]["final_train_loss"] == 0.45  # best accuracy
    assert image["ratios"]["train_loss_velo_over_adamw_default"] == pytest.approx(0.5 / 0.4)
    assert image["ratios"]["metric_velo_over_adam_tuned"] == pytest.approx(0.80 / 0.78)
    assert image["ratios"]["train_loss_velo_over_muon_tuned"] == pytest.approx(0.5 / 0.45)
    assert "train_loss_velo_over_adamw_tuned" not in image["ratios"]  # one rate: no tuning
    candidate = image["other_velos"]["velo_candidate"]
    assert candidate["run"] == "runs/image_convnet/velo_candidate.json" and candidate["weights"] == "/tmp/theta"
    assert candidate["ratios"]["metric_velo_candidate_over_velo"] == pytest.approx(0.75 / 0.80)
    assert candidate["ratios"]["train_loss_velo_candidate_over_adamw_default"] == pytest.approx(0.6 / 0.4)
    assert candidate["against_velo"] == "worse"
    assert results["autoencoder"]["other_velos"]["velo_candidate"]["against_velo"] == "better"

    summaries = compare.velo_summaries(results)
    velo, other = summaries["velo"], summaries["velo_candidate"]
    assert velo["examples"] == 2 and velo["at_or_below_adam_default"] == 2 and velo["at_or_below_tuned_adam"] == 2
    assert velo["median_loss_ratio_to_tuned_adam"] == pytest.approx((0.5 / 0.8 + 0.02 / 0.03) / 2)
    assert velo["at_or_below_best_alternative"] == 1  # the autoencoder; Muon is lower on image_convnet
    assert other["worst_loss_ratio_to_tuned_adam"] == pytest.approx(0.6 / 0.8)

    table = compare.markdown_table(results, "header")
    assert "VeLO candidate (/tmp/theta) against VeLO (bundled), validation metric: worse on 1 of 2 examples" in table
    rows = [line.strip("| ").split(" | ") for line in table.splitlines() if line.startswith("| image_convnet |")]
    assert rows[0][1:] == ["0.5", "0.6", "1", "0.8", "**0.4**", "0.45", "0.45"]  # training losses
    assert rows[2][1:3] == ["0.5", "0.625"]  # VeLO / Adam(1e-3), VeLO / tuned Adam

    del records[runs[1]]  # the candidate failed on image_convnet: the example is left out
    assert list(compare.summarise(["image_convnet", "autoencoder"], grids, records, velo_weights)) == [
        "autoencoder"]


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
