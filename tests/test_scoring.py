"""Scoring on synthetic logs with answers computed by hand."""

import dataclasses
import json
import math

import numpy as np
import pytest

from evaluation import scoring
from evaluation.scoring import RunLog, benchmark_scores

INF = math.inf


# ---- benchmark_scores: AlgoPerf's formula, hand-computed with num_points=4 (tau = 1, 2, 3, 4) ----


def test_fastest_everywhere_scores_one():
    assert benchmark_scores({"a": {"w1": 3.0, "w2": 7.0}}) == {"a": pytest.approx(1.0)}
    scores = benchmark_scores({"a": {"w1": 1.0, "w2": 1.0}, "b": {"w1": 2.0, "w2": 2.0}}, num_points=4)
    # b: ratio 2 on both -> rho = [0, 1, 1, 1] -> trapezoid (0.5 + 1 + 1) / 3
    assert scores == {"a": pytest.approx(1.0), "b": pytest.approx(2.5 / 3)}


def test_each_fastest_on_one_workload():
    scores = benchmark_scores({"a": {"w1": 1.0, "w2": 2.0}, "b": {"w1": 2.0, "w2": 1.0}}, num_points=4)
    # rho = [0.5, 1, 1, 1] -> (0.75 + 1 + 1) / 3
    assert scores == {"a": pytest.approx(2.75 / 3), "b": pytest.approx(2.75 / 3)}


def test_ratios_above_max_tau_count_as_missed():
    assert benchmark_scores({"a": {"w": 1.0}, "b": {"w": 5.0}}, num_points=4)["b"] == 0.0
    # ratio exactly 4: counted only at tau = 4 -> rho = [0, 0, 0, 1] -> 0.5 / 3
    assert benchmark_scores({"a": {"w": 1.0}, "b": {"w": 4.0}}, num_points=4)["b"] == pytest.approx(0.5 / 3)
    assert benchmark_scores({"a": {"w": 1.0}, "b": {"w": 4.0}}, max_tau=3.0, num_points=3)["b"] == 0.0


def test_a_workload_no_one_reaches():
    scores = benchmark_scores({"a": {"w1": 1.0, "w2": INF}, "b": {"w1": 2.0, "w2": INF}}, num_points=4)
    # a: rho = 0.5 everywhere -> 0.5; b: rho = [0, .5, .5, .5] -> (0.25 + 0.5 + 0.5) / 3
    assert scores == {"a": pytest.approx(0.5), "b": pytest.approx(1.25 / 3)}
    assert benchmark_scores({"a": {"w": INF}, "b": {"w": INF}}) == {"a": 0.0, "b": 0.0}


def test_only_one_reaches():
    assert benchmark_scores({"a": {"w": INF}, "b": {"w": 3.0}}) == {"a": 0.0, "b": pytest.approx(1.0)}


def test_default_grid_matches_the_continuous_integral():
    # a fastest on w1, 2.5x slower on w2: exact integral of rho = 0.5 * 1.5 + 1 * 1.5 = 2.25 -> 0.75
    scores = benchmark_scores({"a": {"w1": 1.0, "w2": 2.5}, "b": {"w1": 3.0, "w2": 1.0}})
    assert scores["a"] == pytest.approx(0.75, abs=3 / 99)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_tau"):
        benchmark_scores({"a": {"w": 1.0}}, max_tau=1.0)
    with pytest.raises(ValueError, match="num_points"):
        benchmark_scores({"a": {"w": 1.0}}, num_points=1)


# ---- targets, time to target, quality: synthetic run logs ----


def make_run(algorithm, trial, losses, workload="w", kind="baseline", conditions=("steps", "time"),
             seconds_per_step=0.1, num_steps=100, max_seconds=10.0, prompt_fraction=None, ema=None):
    """Evaluations at steps 0, 25, 50, 75, 100 with the given validation (and train) losses."""
    steps = [0, 25, 50, 75, 100][: len(losses)]
    evals = tuple(
        {"type": "eval", "step": s, "train_seconds": s * seconds_per_step, "train_loss": loss,
         "validation_loss": loss + 0.1}
        for s, loss in zip(steps, losses)
    )
    curve = tuple(
        {"type": "train", "step": s, "train_seconds": s * seconds_per_step, "train_loss": v, "train_loss_ema": v}
        for s, v in (ema or [])
    )
    header = {"type": "start", "workload": workload, "submission": algorithm.lower(), "algorithm": algorithm,
              "kind": kind, "conditions": list(conditions), "trial": trial, "num_steps": num_steps,
              "max_seconds": max_seconds, "prompt_fraction": prompt_fraction}
    return RunLog(header, evals, curve, {"type": "end", "status": "finished"})


def synthetic_study():
    return [
        make_run("A", 0, [2.0, 1.5, 1.0, 0.8, 0.7]),
        make_run("A", 1, [2.0, 1.4, 1.1, 0.9, 0.8]),
        make_run("A", 2, [2.0, 1.6, 1.2, 1.0, 0.6]),
        make_run("B", 0, [2.0, 1.0, 0.9, 0.85, 0.5], seconds_per_step=0.3),
        make_run("B", 1, [2.0, 1.9, 1.8, 1.7, 1.6], seconds_per_step=0.3),
        make_run("B", 2, [2.0, 0.9, 0.8, 0.7, 0.6], seconds_per_step=0.3),
    ]


def test_targets_are_the_best_median_at_75_percent_of_the_budget():
    runs = synthetic_study()
    # step 75: A -> median(0.8, 0.9, 1.0) = 0.9; B -> median(0.85, 1.7, 0.7) = 0.85
    assert scoring.targets(runs, "steps", "train_loss") == {"w": pytest.approx(0.85)}
    assert scoring.targets(runs, "steps", "validation_loss") == {"w": pytest.approx(0.95)}
    # time budget 10 s, 75% = 7.5 s: A (0.1 s/step) at step 75 -> 0.9; B (0.3 s/step) at step 25 -> median(1.0, 1.9, 0.9) = 1.0
    assert scoring.targets(runs, "time", "train_loss") == {"w": pytest.approx(0.9)}


def test_time_to_target_is_the_median_first_hit_within_budget():
    runs = synthetic_study()
    ttt = scoring.time_to_target(runs, "steps", "train_loss", {"w": 0.85})
    # A hits 0.85 at steps (100, inf... ) trial0: 0.8 at 75; trial1: 0.8 at 100; trial2: 0.6 at 100 -> median 100
    # B trial0: 0.85 at 75; trial1: never; trial2: 0.8 at 50 -> median(75, inf, 50) = 75
    assert ttt == {"A": {"w": 100.0}, "B": {"w": 75.0}}
    ttt_time = scoring.time_to_target(runs, "time", "train_loss", {"w": 0.9})
    # A: 7.5 s, 7.5 s (0.9 at 75), 10 s (0.6 at 100) -> 7.5; B within 10 s (step <= 33): trial2 0.9 at 25 -> 7.5, others inf
    assert ttt_time == {"A": {"w": pytest.approx(7.5)}, "B": {"w": INF}}
    assert scoring.time_to_target(runs, "steps", "train_loss", {"w": 0.1}) == {"A": {"w": INF}, "B": {"w": INF}}


def test_quality_table_and_condition_filter():
    runs = synthetic_study() + [make_run("V", 0, [2.0, 0.1, 0.1, 0.1, 0.1], kind="velo", conditions=("time",))]
    table = scoring.quality_table(runs, "steps", "train_loss")
    assert set(table) == {"A", "B"}
    assert table["A"]["w"] == pytest.approx((np.mean([0.7, 0.8, 0.6]), np.std([0.7, 0.8, 0.6])))
    assert "V" in scoring.quality_table(runs, "time", "train_loss")


def test_speedup_over_tuned_adam_interpolates_the_envelope():
    grid = [
        make_run("Adam lr=0.001", 0, [2.0], kind="adam_grid", conditions=("steps",),
                 ema=[(10, 2.0), (20, 1.6), (30, 1.2), (40, 1.0)], num_steps=40),
        make_run("Adam lr=0.01", 0, [2.0], kind="adam_grid", conditions=("steps",),
                 ema=[(10, 1.8), (20, 1.5), (30, 1.4), (40, 1.3)], num_steps=40),
    ]
    velo = make_run("VeLO 100%", 0, [2.0], kind="velo", conditions=("steps",),
                    ema=[(10, 1.5), (20, 1.1)], num_steps=20)
    slow = make_run("Slow", 0, [2.0], conditions=("steps",), ema=[(10, 1.9), (20, 1.8), (30, 1.7), (40, 1.7)],
                    num_steps=40)
    never = make_run("Never", 0, [2.0], conditions=("steps",), ema=[(10, 0.5)], num_steps=10)
    steps, envelope = scoring.tuned_adam_envelope(grid, "w")
    np.testing.assert_allclose(envelope, [1.8, 1.5, 1.2, 1.0])
    speedups = scoring.speedups_over_tuned_adam(grid + [velo, slow, never])
    # VeLO ends at 1.1 after 20 steps; the envelope reaches 1.1 halfway between step 30 (1.2) and 40 (1.0): 35 -> 1.75x
    assert speedups["VeLO 100%"]["w"] == pytest.approx(35 / 20)
    # Slow ends at 1.7 after 40 steps; envelope: 1.8 at 10, 1.5 at 20 -> 1.7 at 10 + 10/3 -> 13.33 / 40
    assert speedups["Slow"]["w"] == pytest.approx((10 + 10 / 3) / 40)
    assert speedups["Never"]["w"] == INF
    assert "Adam lr=0.001" not in speedups


def test_prompt_sensitivity_table():
    runs = [
        make_run("VeLO 100%", t, [2.0, 1.0, 0.9, 0.8, v], kind="velo", conditions=("steps",), prompt_fraction=1.0)
        for t, v in enumerate([0.5, 0.7])
    ] + [make_run("VeLO 50%", 0, [2.0, 1.0, 0.9, 0.8, 0.9], kind="velo_prompt", conditions=("steps",),
                  prompt_fraction=0.5)]
    table = scoring.prompt_sensitivity(runs, "train_loss")
    assert list(table["w"]) == [1.0, 0.5]
    assert table["w"][1.0] == pytest.approx((0.6, 0.1))
    assert table["w"][0.5] == pytest.approx((0.9, 0.0))
    assert [r.algorithm for r in scoring.scored_runs(runs)] == ["VeLO 100%", "VeLO 100%"]


def test_logs_without_an_end_record_are_not_runs(tmp_path):
    folder = tmp_path / "runs" / "w" / "adam"
    folder.mkdir(parents=True)
    start = {"type": "start", "workload": "w", "algorithm": "Adam"}
    (folder / "trial0.jsonl.partial").write_text(json.dumps(start) + "\n")
    (folder / "trial1.jsonl").write_text(json.dumps(start) + "\n")
    assert scoring.load_runs(tmp_path / "nothing") == []
    with pytest.raises(ValueError, match="not a finished run log"):
        scoring.load_runs(tmp_path)
    (folder / "trial1.jsonl").write_text(json.dumps(start) + "\n" + json.dumps({"type": "end", "status": "finished"}))
    assert [r.workload for r in scoring.load_runs(tmp_path)] == ["w"]


def test_time_split_separates_the_first_call_from_the_steady_steps():
    # 3 s of compiling in the first call, then 20 ms a step; logged every 10 steps.
    curve = tuple({"type": "train", "step": s, "train_seconds": 3.0 + 0.02 * s, "train_loss": 1.0,
                   "train_loss_ema": 1.0} for s in range(10, 101, 10))
    run = RunLog({"type": "start", "workload": "w", "algorithm": "A", "kind": "baseline",
                  "conditions": ["time"], "trial": 0}, (), curve,
                 {"type": "end", "status": "finished", "steps": 100})
    first_call, step, steps = scoring.time_split(run)
    assert first_call == pytest.approx(3.02) and step == pytest.approx(0.02) and steps == 100
    table = scoring.time_split_table([run, dataclasses.replace(run, curve=curve[:1])])
    assert table["A"]["w"] == pytest.approx((3.02, 0.02, 100))  # the one-record run has no split
    assert all(math.isnan(v) for v in scoring.time_split(dataclasses.replace(run, curve=curve[:1]))[:2])


def _grid_run(submission, algorithm, trial, losses, workload="w", kind="alternative_grid"):
    run = make_run(algorithm, trial, losses, workload=workload, kind=kind)
    return dataclasses.replace(run, header=dict(run.header, submission=submission))


def test_an_alternative_tuned_over_its_grid_takes_the_best_rate_per_workload():
    runs = []
    for trial in range(3):
        runs += [_grid_run("muon", "Muon", trial, [2.0, 1.5, 1.2, 1.0, 0.9], kind="baseline"),
                 _grid_run("muon-lr0.003", "Muon lr=0.003", trial, [2.0, 1.2, 0.9, 0.7, 0.6]),
                 _grid_run("muon-lr0.0003", "Muon lr=0.0003", trial, [2.0, 1.9, 1.8, 1.7, 1.6]),
                 # On workload "v" the default is best at the end of the budget.
                 _grid_run("muon", "Muon", trial, [2.0, 1.5, 1.2, 1.0, 0.5], workload="v", kind="baseline"),
                 _grid_run("muon-lr0.003", "Muon lr=0.003", trial, [2.0, 1.2, 0.9, 0.7, 0.6], workload="v"),
                 _grid_run("muon-lr0.0003", "Muon lr=0.0003", trial, [2.0, 1.9, 1.8, 1.7, 1.6], workload="v"),
                 # Workload "u" lacks a grid point: no tuned view there.
                 _grid_run("muon", "Muon", trial, [2.0, 1.0], workload="u", kind="baseline"),
                 _grid_run("muon-lr0.003", "Muon lr=0.003", trial, [2.0, 0.5], workload="u")]
    assert scoring.alternative_grids(runs) == {"Muon tuned": ("muon", "muon-lr0.0003", "muon-lr0.003")}
    tuned = scoring.tuned_alternatives(runs, "steps", "train_loss")
    chosen = {(r.workload, r.tuned_from) for r in tuned}
    assert chosen == {("w", "muon-lr0.003"), ("v", "muon")}
    assert all(r.algorithm == "Muon tuned" and r.kind == "baseline" for r in tuned) and len(tuned) == 6
    # The grid points are scored only through the tuned view: not as algorithms of their own.
    assert {r.algorithm for r in scoring.scored_runs(runs)} == {"Muon"}
    table = scoring.quality_table(scoring.scored_runs(runs) + tuned, "steps", "train_loss")
    assert table["Muon tuned"]["w"][0] == pytest.approx(0.6) and table["Muon tuned"]["v"][0] == pytest.approx(0.5)
    assert "u" not in table["Muon tuned"]
