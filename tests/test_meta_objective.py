"""The meta-objective's maths, Adam references and the verdicts of meta-validation (fast, no training)."""

import numpy as np
import pytest

from meta.adam_reference import CURVE_STRIDE, ReferenceStore, reference_key, summarise_curve, value_at
from meta.objective import MetaObjective, final_start, member_weights, step_meta_losses, tail_scores
from meta.validation import ABOVE_ADAM, judge, score

pytestmark = pytest.mark.backends("jax")


def _episode(horizon=50, seed=0):
    return np.random.default_rng(seed).uniform(0.2, 1.2, horizon)


def test_the_default_objective_is_the_area_under_the_curve():
    losses = _episode()
    terms = np.asarray(step_meta_losses(MetaObjective(), losses, np.arange(50), 50))
    np.testing.assert_allclose(terms, losses, rtol=1e-6)


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_the_episode_mean_weighs_the_final_segment_by_its_share(share):
    losses = _episode()
    objective = MetaObjective(final_share=share, final_fraction=0.2)
    terms = np.asarray(step_meta_losses(objective, losses, np.arange(50), 50))
    start = final_start(50, 0.2)
    assert start == 40
    expected = (1 - share) * losses.mean() + share * losses[start:].mean()
    assert terms.mean() == pytest.approx(expected, rel=1e-6)
    # Truncations of the same episode add up to it (what Persistent ES relies on).
    pieces = [np.asarray(step_meta_losses(objective, losses[i:i + 10], np.arange(i, i + 10), 50)).mean()
              for i in range(0, 50, 10)]
    assert np.mean(pieces) == pytest.approx(expected, rel=1e-6)


def test_the_adam_penalty_counts_only_the_final_excess():
    losses = np.linspace(1.0, 0.5, 20)
    reference = np.full(20, 0.6)
    objective = MetaObjective(final_fraction=0.25, adam_penalty=2.0)
    terms = np.asarray(step_meta_losses(objective, losses, np.arange(20), 20, reference))
    final = np.arange(20) >= 15
    excess = np.maximum(losses - reference, 0) * final
    assert excess.sum() > 0  # the run ends above the reference on some final steps
    assert terms.mean() == pytest.approx(losses.mean() + 2.0 * excess[final].mean(), rel=1e-6)
    below = np.asarray(step_meta_losses(objective, losses, np.arange(20), 20, reference + 1.0))
    np.testing.assert_allclose(below, losses, rtol=1e-6)  # below Adam everywhere: no penalty


def test_step_terms_broadcast_over_arms():
    losses = np.stack([_episode(), _episode(seed=1)], axis=1)  # [steps, arms]
    objective = MetaObjective(final_share=0.5, adam_penalty=1.0)
    terms = np.asarray(step_meta_losses(objective, losses, np.arange(50), 50, np.full(50, 0.5)))
    for arm in range(2):
        alone = np.asarray(step_meta_losses(objective, losses[:, arm], np.arange(50), 50, np.full(50, 0.5)))
        np.testing.assert_allclose(terms[:, arm], alone, rtol=1e-6)


def test_the_tail_weighs_the_members_that_do_worst_against_adam():
    objective = MetaObjective(tail_weight=1.0, tail_fraction=0.25)
    losses = [0.3, 0.4, 0.9, 0.5, 0.2, 0.6, 0.3, 0.8]
    # Member 2 has the highest loss but is near Adam; members 5 and 7 are far above it.
    scores = tail_scores(losses, [0.3, 0.4, 0.85, 0.5, 0.2, 0.2, 0.3, 0.4])
    weights = member_weights(objective, scores)
    assert weights.mean() == pytest.approx(1.0)
    assert set(np.flatnonzero(weights > 1)) == {5, 7}  # 0.6 / 0.2 = 3, 0.8 / 0.4 = 2
    assert weights[5] / weights[0] == pytest.approx(1 + 1.0 / 0.25)
    # Without every reference, the losses themselves rank the members.
    unreferenced = member_weights(objective, tail_scores(losses, [0.3] * 7 + [None]))
    assert set(np.flatnonzero(unreferenced > 1)) == {2, 7}
    np.testing.assert_array_equal(member_weights(MetaObjective(), scores), np.ones(8))


@pytest.mark.parametrize("field, value, message", [
    ("final_share", 1.5, "final_share must be in"),
    ("final_fraction", 0.0, "final_fraction must be in"),
    ("adam_penalty", -1.0, "adam_penalty must be >= 0"),
    ("tail_fraction", 2.0, "tail_fraction must be in"),
])
def test_objective_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        MetaObjective(**{field: value})


def test_references_are_keyed_by_what_they_depend_on(tmp_path):
    config = {"family": "image_mlp", "dataset": "digits", "init_seed": 0}
    key = reference_key(config, 100, 0)
    assert key == reference_key(dict(config), 100, 0)
    assert len({key, reference_key(config, 200, 0), reference_key(config, 100, 1),
                reference_key({**config, "init_seed": 1}, 100, 0)}) == 4
    curve = np.linspace(1.0, 0.2, 95)
    record = summarise_curve(curve)
    assert record["final"] == pytest.approx(curve[-10:].mean())
    assert len(record["curve"]) == 10 and record["curve"][0] == pytest.approx(curve[:CURVE_STRIDE].mean(), abs=1e-5)
    np.testing.assert_allclose(value_at(record, [0, 9, 10, 94, 500]),
                               [record["curve"][i] for i in (0, 0, 1, 9, 9)])
    store = ReferenceStore(tmp_path / "references")
    assert store.get(key) is None
    store.put(key, record)
    assert store.get(key) == record


def _records(finals, families):
    """Per-task records whose last 10% average to `finals`."""
    return [{"name": f"t{i}", "family": family, "normalised": [1.0] * 9 + [final]}
            for i, (final, family) in enumerate(zip(finals, families))]


def test_scores_say_which_tasks_end_above_adam_and_give_family_rows():
    result = score(_records([0.5, 0.3, 0.8], ["a", "a", "b"]),
                   {"t0": {"final": 0.5}, "t1": {"final": 0.2}, "t2": {"final": 0.8 / ABOVE_ADAM}})
    assert result["families"]["a"] == {"final": pytest.approx(0.4), "mean": pytest.approx(0.94),
                                       "tasks": 2}
    assert result["vs_adam"] == {"t0": 1.0, "t1": 1.5, "t2": pytest.approx(ABOVE_ADAM)}
    assert result["above_adam"] == ["t1"] and result["worst_vs_adam"] == 1.5
    assert "vs_adam" not in score(_records([0.5], ["a"]))


def test_a_theta_that_lowers_the_mean_but_collapses_a_family_is_not_better():
    families = ["a"] * 6 + ["b"] * 2
    reference = score(_records([0.5] * 8, families))
    candidate = score(_records([0.4] * 6 + [0.58, 0.6], families))
    verdict = judge(candidate, reference)
    assert verdict["final"][0] < 0 and verdict["collapsed"] == ["b"] and not verdict["better"]
    fine = judge(score(_records([0.4] * 6 + [0.51, 0.52], families)), reference)
    assert fine["collapsed"] == [] and fine["better"]
