"""The ship gate's criteria on synthetic artefacts: each can fail, and passes only when it should."""

import copy

import pytest

from meta import ship_gate
from test_scoring import make_run

pytestmark = pytest.mark.backends("jax")


def _study(velo_losses, velo_ema):
    """One workload: VeLO (3 trials), a baseline, and constant Adam(1e-3) with the tuned-Adam envelope."""
    grid = make_run("Adam lr=0.001", 0, [2.0, 1.8, 1.6, 1.4, 1.2], kind="adam_grid", conditions=("steps",),
                    ema=[(25, 1.8), (50, 1.6), (75, 1.4), (100, 1.2), (200, 0.9), (400, 0.5)])
    baseline = [make_run("Base", t, [2.0, 1.9, 1.7, 1.5, 1.3]) for t in range(3)]
    velo = [make_run(ship_gate.VELO_ALGORITHM, t, velo_losses, kind="velo", conditions=("steps",),
                     ema=velo_ema) for t in range(3)]
    return [grid] + baseline + velo


def test_canonical_criteria_pass_for_a_fast_velo_and_fail_for_a_slow_one():
    fast = ship_gate.canonical_criteria(_study([2.0, 1.2, 1.0, 0.9, 0.8], [(50, 1.0), (100, 0.8)]))
    assert [c.passed for c in fast] == [True, True, True, True], fast
    # Ends at 1.35: the envelope gets there at step 81.25 of 100 (0.81x); 1.35 / 1.2 > 1.1 x Adam(1e-3).
    slow = ship_gate.canonical_criteria(_study([2.0, 1.9, 1.6, 1.45, 1.35], [(50, 1.6), (100, 1.35)]))
    assert not slow[0].passed and "0.812" in slow[0].value
    assert not slow[3].passed and "1 of 1" in slow[3].value


def _comparison():
    def entry(metric, higher, velo, candidate, adamw_loss, candidate_loss):
        return {"metric": {"name": "m", "higher_is_better": higher},
                "velo": {"metric": velo, "final_train_loss": 1.0},
                "adamw": {"metric": 0.0, "final_train_loss": adamw_loss},
                "other_velos": {"candidate": {"metric": candidate, "final_train_loss": candidate_loss}}}

    return {"examples": {
        "image_convnet": entry("accuracy", True, 0.80, 0.805, 1.0, 0.5),
        "autoencoder": entry("mse", False, 0.010, 0.0101, 1.0, 0.5),  # 1% worse: within tolerance
        "keras_hub_gpt2": entry("loss", False, 2.0, 1.9, 2.4, 2.3),
        "keras_hub_vit": entry("accuracy", True, 0.80, 0.81, 0.47, 0.46),
    }}


def test_comparison_criteria():
    assert [c.passed for c in ship_gate.comparison_criteria(_comparison(), "candidate")] == [True, True]
    worse = _comparison()
    worse["examples"]["image_convnet"]["other_velos"]["candidate"]["metric"] = 0.78
    criteria = ship_gate.comparison_criteria(worse, "candidate")
    assert not criteria[0].passed and "image_convnet" in criteria[0].value
    above = _comparison()
    above["examples"]["keras_hub_vit"]["other_velos"]["candidate"]["final_train_loss"] = 0.48
    assert not ship_gate.comparison_criteria(above, "candidate")[1].passed
    missing = _comparison()
    del missing["examples"]["keras_hub_gpt2"]
    assert not ship_gate.comparison_criteria(missing, "candidate")[1].passed
    with pytest.raises(KeyError, match="'other'"):
        ship_gate.comparison_criteria(_comparison(), "other")


def _scores(difference, error, above):
    score = {"final": 0.40, "above_adam": above}
    return {"scores": {"set": score}, "against": {"scores": {"set": {"final": 0.40}}},
            "judgement": {"set": {"final": [difference, error]}}}


@pytest.mark.parametrize("difference, error, above, passed", [
    (-0.03, 0.01, [], [True, True]),       # -7.5%, 3 SE
    (-0.01, 0.001, [], [False, True]),     # -2.5%: not 5%
    (-0.03, 0.02, [], [False, True]),      # -7.5% but within 2 SE
    (-0.03, 0.01, ["t1"], [True, False]),  # a task ends above Adam
    (-0.03, 0.01, None, [True, False]),    # no references: cannot tell
])
def test_meta_validation_criteria(difference, error, above, passed):
    criteria = ship_gate.meta_validation_criteria(_scores(difference, error, above))
    assert [c.passed for c in criteria] == passed


def test_the_verdict_needs_every_criterion():
    good = [ship_gate.Criterion("a", "1", "1", True)] * 3
    assert "the candidate ships" in ship_gate.markdown(good)
    assert "does not ship" in ship_gate.markdown(good + [ship_gate.Criterion("b", "0", "1", False)])
    assert copy.deepcopy(good) == good


def test_an_evaluation_left_out_is_not_run_and_leaves_the_verdict_open_unless_one_fails():
    passing = _scores(-0.03, 0.01, [])
    open_ = ship_gate.gate(None, None, "candidate", passing)
    assert [c.passed for c in open_] == [None, None, True, True]
    assert ship_gate.verdict(open_) == "undecided"
    assert "2 of 2 criteria run hold (2 not run): the candidate undecided" in ship_gate.markdown(open_)
    failing = ship_gate.gate(None, None, "candidate", _scores(-0.01, 0.001, []))
    assert ship_gate.verdict(failing) == "does not ship"
    assert ship_gate.verdict(ship_gate.gate(None, _comparison(), "candidate", passing)) == "undecided"


def test_the_command_line_gate_reads_a_partial_set_of_artefacts(tmp_path):
    import json

    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps(_scores(-0.01, 0.001, [])))
    out = tmp_path / "gate.md"
    assert ship_gate.main(["--meta-validation", str(scores), "--out", str(out)]) == 1
    text = out.read_text()
    assert "not run" in text and "does not ship" in text
    with pytest.raises(SystemExit):
        ship_gate.main([])
