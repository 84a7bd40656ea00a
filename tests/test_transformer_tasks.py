"""meta/experiments/transformer_tasks: the alternatives and VeLO on ood-valid-v1's Transformer tasks."""

import json

import pytest

pytestmark = [pytest.mark.backends("jax"), pytest.mark.slow]


def test_a_quick_study_scores_each_optimizer_as_meta_validation_does_and_resumes(tmp_path, monkeypatch):
    from meta.experiments.transformer_tasks import run

    results = run.run_all(tmp_path, "bundled", quick=True, tasks=("gpt-user",), alternatives=("muon",),
                          log=lambda *_: None)
    assert list(results["gpt-user"]) == ["velo_bundled", "muon"]
    for record in results["gpt-user"].values():
        assert record["steps"] == run.QUICK_STEPS and 0 < record["final"] <= run.MAX_LOSS_RATIO
        assert record["final"] == pytest.approx(record["final_loss"] / record["first_loss"], rel=1e-6)
    assert json.loads((tmp_path / "runs" / "gpt-user" / "muon.json").read_text())["optimizer"] == "muon"

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded run was trained again")

    monkeypatch.setattr(run, "train", no_training)
    again = run.run_all(tmp_path, "bundled", quick=True, tasks=("gpt-user",), alternatives=("muon",),
                        log=lambda *_: None)
    assert again == results


def test_the_summary_is_meta_validations():
    import numpy as np

    from meta.experiments.transformer_tasks import run

    losses = np.array([2.0] + [4.0] * 8 + [1.0])  # clipped at 1.5; the last 10% is one step
    summary = run.summarise(losses)
    assert summary["final"] == pytest.approx(0.5)
    assert summary["mean"] == pytest.approx((1.0 + 8 * 1.5 + 0.5) / 10)
