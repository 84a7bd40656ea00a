"""The ship gate's criteria on synthetic artefacts: each can fail, and passes only when it should."""

import copy
import math

import pytest

from meta import ship_gate
from meta.validation import judge
from test_scoring import make_run

pytestmark = pytest.mark.backends("jax")


def _study(velo_losses, velo_ema, algorithm=ship_gate.VELO_ALGORITHM):
    """One workload: constant Adam(1e-3) with the tuned-Adam envelope, a baseline (3 trials) and VeLO (3 trials)."""
    grid = make_run("Adam lr=0.001", 0, [2.0, 1.8, 1.6, 1.4, 1.2], kind="adam_grid", conditions=("steps",),
                    ema=[(25, 1.8), (50, 1.6), (75, 1.4), (100, 1.2), (200, 0.9), (400, 0.5)])
    baseline = [make_run("Base", t, [2.0, 1.9, 1.7, 1.5, 1.3]) for t in range(3)]
    return [grid] + baseline + _velo(algorithm, velo_losses, velo_ema)


def _velo(algorithm, losses, ema):
    return [make_run(algorithm, t, losses, kind="velo", conditions=("steps",), ema=ema) for t in range(3)]


INCUMBENT = ([2.0, 1.5, 1.3, 1.2, 1.1], [(50, 1.3), (100, 1.1)])
FASTER = ([2.0, 1.2, 1.0, 0.9, 0.8], [(50, 1.0), (100, 0.8)])
SLOWER = ([2.0, 1.9, 1.6, 1.45, 1.35], [(50, 1.6), (100, 1.35)])


def test_canonical_criteria_compare_the_candidate_with_the_incumbent_scored_together():
    runs = ship_gate.combined_runs(_study(*INCUMBENT), _study(*FASTER))
    assert sum(r.algorithm == ship_gate.VELO_ALGORITHM + ship_gate.CANDIDATE_SUFFIX for r in runs) == 3
    assert len(runs) == 7 + 3  # the candidate's study contributes its VeLO runs only
    better = ship_gate.canonical_criteria(runs)
    assert [c.passed for c in better] == [True, True, True], better
    # Slower than the incumbent, and ends at 1.35 / 1.2 > 1.1 x Adam(1e-3)'s.
    worse = ship_gate.canonical_criteria(ship_gate.combined_runs(_study(*INCUMBENT), _study(*SLOWER)))
    assert [c.passed for c in worse] == [False, False, False]
    assert "1 of 1" in worse[2].value


def _summary(median):
    return {"examples": 7, "median_loss_ratio_to_tuned_adam": median}


def _comparison(candidate_losses, medians=(0.9, 1.0)):
    """Two examples; the incumbent is the first VeLO ("velo") with final training loss 1.0."""
    def entry(loss):
        alternatives = {"adam": {"tuned": {"final_train_loss": 1.05}},
                        "schedule_free_adamw": {"default": {"final_train_loss": 0.95}},
                        "muon": {"default": {"final_train_loss": 1.2}}}
        return {"velo": {"final_train_loss": 1.0}, "alternatives": alternatives,
                "other_velos": {"velo_candidate": {"final_train_loss": loss}}}

    return {"summary": {"velo_candidate": _summary(medians[0]), "velo": _summary(medians[1])},
            "examples": {"image_convnet": entry(candidate_losses[0]),
                         "keras_hub_vit": entry(candidate_losses[1])}}


def test_comparison_criteria_need_a_lower_median_and_no_example_10_percent_worse():
    criteria = ship_gate.comparison_criteria(_comparison([0.8, 1.09]), "velo_candidate", "velo")
    assert [c.passed for c in criteria] == [True, True]
    criteria = ship_gate.comparison_criteria(_comparison([0.8, 1.12]), "velo_candidate", "velo")
    assert [c.passed for c in criteria] == [True, False] and "keras_hub_vit 1.12x" in criteria[1].value
    same_median = ship_gate.comparison_criteria(_comparison([0.8, 1.0], (1.0, 1.0)), "velo_candidate", "velo")
    assert not same_median[0].passed
    with pytest.raises(KeyError, match="'other'"):
        ship_gate.comparison_criteria(_comparison([1, 1]), "other", "velo")


def _score(finals, families=None):
    names = [f"t{i}" for i in range(len(finals))]
    families = families or ["image_mlp"] * len(finals)
    return {"final": sum(finals) / len(finals), "families": {f: {"final": 0.0} for f in families},
            "tasks": {n: [f, f] for n, f in zip(names, finals)},
            "task_families": dict(zip(names, families))}


def _scores(candidate, incumbent, families=None):
    a, b = _score(candidate, families), _score(incumbent, families)
    return {"scores": {"set": a}, "against": {"scores": {"set": b}}, "judgement": {"set": judge(a, b)}}


@pytest.mark.parametrize("candidate, families, passed", [
    ([0.09, 0.18, 0.29, 0.38], None, [True, True]),                      # every task ~5-10% lower
    ([0.09, 0.18, 0.29, 0.45], None, [False, True]),                     # one task up: not beyond 2 SE
    ([0.05, 0.10, 0.15, 0.46], ["a", "a", "a", "b"], [True, False]),     # family b 15% worse
])
def test_meta_validation_criteria_judge_per_task_log_ratios(candidate, families, passed):
    scores = _scores(candidate, [0.1, 0.2, 0.3, 0.4], families)
    assert [c.passed for c in ship_gate.meta_validation_criteria(scores)] == passed


def test_log_ratios_floor_solved_tasks():
    judgement = judge(_score([1e-7, 0.2]), _score([1e-5, 0.2]))
    assert judgement["log_ratio"][0] == pytest.approx(0.0)  # both below 1e-4 of the initial loss: a tie
    judgement = judge(_score([0.01, 0.2]), _score([0.1, 0.2]))
    assert judgement["log_ratio"][0] == pytest.approx(math.log(0.1) / 2)
    assert judgement["family_log_ratios"] == {"image_mlp": pytest.approx(math.log(0.1) / 2)}


def test_goals_are_reported_beside_the_gate():
    runs = ship_gate.combined_runs(_study(*INCUMBENT), _study(*FASTER))
    goals = ship_gate.goals(_comparison([0.8, 0.9]), "velo_candidate", runs,
                            ship_gate.VELO_ALGORITHM + ship_gate.CANDIDATE_SUFFIX)
    assert [c.name.split(":")[0] for c in goals] == ["canonical-cpu-v1", "examples/compare.py", "keras_hub_gpt2",
                                                      "keras_hub_vit"]
    assert goals[1].value == "1 of 1" and goals[1].passed is False  # one small example: 1 of 5 needed 4
    assert goals[2].passed is None  # not in the comparison
    assert goals[3].passed is True  # 0.9 <= ScheduleFreeAdamW's 0.95 and Muon's 1.2
    text = ship_gate.markdown([ship_gate.Criterion("a", "1", "1", True)], goals)
    assert "Goals (reported, not gating)" in text and "the candidate ships" in text


def test_the_verdict_needs_every_criterion():
    good = [ship_gate.Criterion("a", "1", "1", True)] * 3
    assert "the candidate ships" in ship_gate.markdown(good)
    assert "does not ship" in ship_gate.markdown(good + [ship_gate.Criterion("b", "0", "1", False)])
    assert copy.deepcopy(good) == good


def test_an_evaluation_left_out_is_not_run_and_leaves_the_verdict_open_unless_one_fails():
    passing = _scores([0.09, 0.18, 0.29, 0.38], [0.1, 0.2, 0.3, 0.4])
    open_ = ship_gate.gate(passing, None, "velo_candidate", "velo", None)
    assert [c.passed for c in open_] == [True, True, None, None]
    assert ship_gate.verdict(open_) == "undecided"
    assert "2 of 2 criteria run hold (2 not run): the candidate undecided" in ship_gate.markdown(open_)
    failing = ship_gate.gate(_scores([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]), None, "velo_candidate",
                             "velo", None)
    assert ship_gate.verdict(failing) == "does not ship"


def test_the_command_line_gate_reads_a_partial_set_of_artefacts(tmp_path):
    import json

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(_scores([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4])))
    out = tmp_path / "gate.md"
    assert ship_gate.main(["--meta-validation", str(scores), "--out", str(out)]) == 1
    text = out.read_text()
    assert "not run" in text and "does not ship" in text
    with pytest.raises(SystemExit):
        ship_gate.main([])
    with pytest.raises(SystemExit):
        ship_gate.main(["--study", str(tmp_path)])  # without the candidate's study


def test_no_criterion_is_no_verdict_and_goals_alone_report_the_shipped_theta(tmp_path):
    import json

    assert ship_gate.verdict([]) == "undecided"
    (tmp_path / "results.json").write_text(json.dumps(_comparison([0.8, 0.9])))
    out = tmp_path / "goals.md"
    # The incumbent ("velo", loss 1.0) is above ScheduleFreeAdamW's default (0.95) on the ViT: a goal missed.
    assert ship_gate.main(["--goals", "--comparison", str(tmp_path), "--out", str(out)]) == 1
    text = out.read_text()
    assert "Goals of 'velo'" in text and "criteria run hold" not in text
    assert "| keras_hub_vit: at or below ScheduleFreeAdamW's and Muon's defaults | 1 against" in text
    with pytest.raises(SystemExit):
        ship_gate.main(["--goals", "--meta-validation", str(out)])


def test_the_transformer_task_goal_needs_every_task_at_or_below_every_alternative():
    def task(velo, adamw=0.5, schedule_free=0.4, muon=0.45):
        return {"velo_bundled": {"final": velo}, "adamw": {"final": adamw},
                "schedule_free_adamw": {"final": schedule_free}, "muon": {"final": muon}}

    met = ship_gate.transformer_task_goal({"vit-user": task(0.3), "gpt-user": task(0.4)}, "velo_bundled")
    assert met.passed is True and met.value.startswith("2 of 2")
    missed = ship_gate.transformer_task_goal({"vit-user": task(0.3), "gpt-user": task(0.41)}, "velo_bundled")
    assert missed.passed is False and missed.value == "1 of 2 (vit-user)"
    assert ship_gate.transformer_task_goal({"vit-user": task(0.3)}, "velo_other").passed is None
