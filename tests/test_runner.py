"""The runner's log, stop rules and resume after a kill."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from evaluation import scoring
from evaluation.runner import run_path, run_trial
from evaluation.submissions import make_submissions
from evaluation.workloads import workloads_from_suite


def tiny_workload(num_steps=12, max_seconds=60.0, eval_every=4, log_every=2):
    workload = workloads_from_suite("tiny-v1", names=["image_mlp-smallest"])[0]
    return dataclasses.replace(workload, num_steps=num_steps, max_seconds=max_seconds, eval_every=eval_every,
                               log_every=log_every)


def read_records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_log_records_and_step_stop(tmp_path):
    submission = make_submissions()["adam-lr0.01"]  # a grid run: 4 x the step budget of 12
    assert run_trial(tiny_workload(), submission, 0, tmp_path) == "finished"
    path = run_path(tmp_path, "image_mlp-smallest", "adam-lr0.01", 0)
    records = read_records(path)
    assert [r["type"] for r in records][:2] == ["start", "eval"] and records[-1]["type"] == "end"
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in evals] == list(range(0, 49, 4))
    assert [r["step"] for r in records if r["type"] == "train"] == list(range(2, 49, 2))
    seconds = [r["train_seconds"] for r in evals]
    assert seconds == sorted(seconds) and seconds[-1] > 0
    assert evals[0]["train_loss"] is None and all(r["validation_loss"] > 0 for r in evals)
    assert 0 <= evals[-1]["validation_accuracy"] <= 1
    assert records[-1] == {"type": "end", "status": "finished", "steps": 48, "train_seconds": seconds[-1]}
    run = scoring.read_run(path)
    assert run.algorithm == "Adam lr=0.01" and run.kind == "adam_grid" and run.trial == 0
    assert run_trial(tiny_workload(), submission, 0, tmp_path) == "skipped"


class StepClock:
    """A fake clock under which training step k takes `durations[k]` seconds (the last one repeats).

    The runner reads the clock twice per step (before and after it), so the
    stop rules are tested whatever the machine's speed.
    """

    def __init__(self, durations):
        self.durations, self.now, self.calls = list(durations), 0.0, 0

    def __call__(self):
        if self.calls % 2 == 1:  # the end of a step
            step = self.calls // 2
            self.now += self.durations[min(step, len(self.durations) - 1)]
        self.calls += 1
        return self.now


@pytest.mark.parametrize(
    "durations, expected_steps, crossing_step",
    [
        ([0.25], 6, 6),          # the step budget (4) is spent first: trains on until 1.5 s
        ([2.0, 0.25], 4, 1),     # compilation spends the time budget in step 1: stops at the step budget
        ([0.01], 80, None),      # neither spent before the cap of 20 x the step budget
    ],
    ids=["time-last", "time-first", "step-cap"],
)
def test_baselines_run_until_both_budgets_are_spent(tmp_path, durations, expected_steps, crossing_step):
    from evaluation.runner import MAX_STEPS_FACTOR

    workload = tiny_workload(num_steps=4, max_seconds=1.5)
    run_trial(workload, make_submissions()["nesterov"], 1, tmp_path, clock=StepClock(durations))
    records = read_records(run_path(tmp_path, workload.name, "nesterov", 1))
    end = records[-1]
    assert end["steps"] == expected_steps <= MAX_STEPS_FACTOR * workload.num_steps
    evals = [r for r in records if r["type"] == "eval"]
    assert evals[-1]["step"] == expected_steps  # the end is always evaluated
    over = [r["step"] for r in evals if r["train_seconds"] >= 1.5]
    # One evaluation at the first step past the time budget (and the final one).
    assert over[:1] == ([] if crossing_step is None else [crossing_step])
    assert set(over) <= {crossing_step, expected_steps}


def test_velo_time_mode_feeds_the_time_fraction(tmp_path):
    workload = tiny_workload(num_steps=1000, max_seconds=0.5)
    submission = make_submissions()["velo-time-100"]
    run_trial(workload, submission, 0, tmp_path, clock=StepClock([0.125]))
    end = read_records(run_path(tmp_path, workload.name, submission.name, 0))[-1]
    assert end["train_seconds"] == 0.5 and end["steps"] == 4  # stopped by the time budget


def test_diverging_runs_are_marked(tmp_path):
    import keras

    workload = tiny_workload()
    exploding = dataclasses.replace(make_submissions()["adam"], name="sgd-huge",
                                    make_optimizer=lambda w: keras.optimizers.SGD(1e12))
    assert run_trial(workload, exploding, 0, tmp_path) == "diverged"
    run = scoring.read_run(run_path(tmp_path, workload.name, "sgd-huge", 0))
    assert run.end["status"] == "diverged" and run.end["steps"] < 100  # stops at the first non-finite loss
    assert run.curve[-1]["train_loss"] is None and run.curve[-1]["step"] == run.end["steps"]


KILLED_RUN = """
import dataclasses, sys
from evaluation.runner import run_trial
from evaluation.submissions import make_submissions
from evaluation.workloads import workloads_from_suite
w = workloads_from_suite("tiny-v1", names=["image_mlp-smallest"])[0]
w = dataclasses.replace(w, num_steps=10**6, eval_every=50, log_every=10)
run_trial(w, make_submissions()["adam-lr0.001"], 0, sys.argv[1])
"""


def test_resume_after_a_kill(tmp_path):
    """A run killed mid-way leaves only a .partial log: never scored, restarted from scratch on resume."""
    process = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path)], env=os.environ.copy())
    final = run_path(tmp_path, "image_mlp-smallest", "adam-lr0.001", 0)
    partial = final.with_name(final.name + ".partial")
    deadline = time.time() + 120
    while time.time() < deadline and (not partial.exists() or partial.read_text().count("\n") < 4):
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert partial.exists() and not final.exists()
    assert scoring.load_runs(tmp_path) == []
    assert run_trial(tiny_workload(), make_submissions()["adam-lr0.001"], 0, tmp_path) == "finished"
    assert final.exists() and not partial.exists()
    records = read_records(final)
    assert records[-1]["steps"] == 48 and sum(r["type"] == "start" for r in records) == 1
    assert len(scoring.load_runs(tmp_path)) == 1
