"""The command line end to end on the tiny suite: run, resume, report."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.backends("jax"), pytest.mark.slow]  # one backend is enough: the pipeline is backend-independent

SUBMISSIONS = "adam,nesterov,velo-100,velo-75,velo-time-100,adam-lr0.001,adam-lr0.01"
WORKLOADS = "image_mlp-smallest,autoencoder-smallest"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "evaluation", *args], capture_output=True, text=True,
                          env={**os.environ, "KERAS_BACKEND": "jax"}, timeout=900)


def test_run_resume_and_report(tmp_path):
    out = tmp_path / "study"
    common = ["--suite", "tiny-v1", "--workloads", WORKLOADS, "--submissions", SUBMISSIONS, "--trials", "2",
              "--out", str(out)]
    first = cli("run", *common, "--workers", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    logs = sorted(out.glob("runs/*/*/*.jsonl"))
    assert len(logs) == 2 * (5 * 2 + 2) and not list(out.glob("runs/*/*/*.partial"))
    again = cli("run", *common, "--no-progress")
    assert again.returncode == 0 and "'skipped': 24" in again.stdout
    study = json.loads((out / "study.json").read_text())
    assert study["suite"] == "tiny-v1" and study["trials"] == 2 and any("--workers 2" in c for c in study["commands"])

    report = cli("report", str(out))
    assert report.returncode == 0, report.stderr[-3000:]
    text = (out / "report" / "report.md").read_text()
    for heading in ("Benchmark scores", "Time to target", "Quality at the end of the budget",
                    "Speed-up over learning-rate-tuned Adam", "step-prompt sensitivity", "loss curves"):
        assert heading in text
    for png in ("profiles_steps.png", "profiles_time.png", "curves_steps.png", "curves_time.png", "speedup.png"):
        assert (out / "report" / png).stat().st_size > 5000
    scores_table = text.split("## Benchmark scores")[1].split("![")[0]
    rows = [line for line in scores_table.splitlines() if line.startswith("| ") and "algorithm" not in line]
    assert {row.split("|")[1].strip() for row in rows} == {"Adam", "Nesterov", "VeLO 100%", "VeLO 75%"}
    cells = [v.strip() for row in rows for v in row.split("|")[2:-1]]
    values = [float(v) for v in cells if v != "—"]  # "—": VeLO 75% has no wall-clock run in this study
    assert len(values) >= len(cells) - 2 and all(0.0 <= v <= 1.0 for v in values) and max(values) > 0


def test_bad_arguments_fail_clearly(tmp_path):
    result = cli("run", "--suite", "tiny-v1", "--submissions", "adamw", "--out", str(tmp_path))
    assert result.returncode != 0 and "Unknown submission 'adamw'" in result.stderr
    result = cli("run", "--suite", "tiny-v1", "--shard", "3/2", "--out", str(tmp_path))
    assert result.returncode != 0 and "shard" in result.stderr
    result = cli("report", str(tmp_path / "empty"))
    assert result.returncode != 0 and "No finished runs" in result.stderr
