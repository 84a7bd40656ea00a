"""Meta-training: estimators against known gradients, subspaces, truncated backprop
against finite differences, meta-validation, compact and exact resume, user families, Ray.

JAX only (meta-training runs on JAX). The tasks are image MLPs of a few
thousand parameters trained for 20-30 steps, so each test costs seconds
after the one-off compile of the inner step (shared within the process).
Whether meta-training improves VeLO on the real task distribution is a
benchmark (`benchmarks/meta_known_answer.py`), with a small version here
(`test_meta_training_repairs_a_damaged_step_size`).
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.backends("jax"), pytest.mark.slow]

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _compilation_cache(tmp_path_factory):
    """Meta-training turns on JAX's persistent cache; keep the tests' in a temporary folder."""
    previous = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    yield
    if previous is None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
    else:
        os.environ["JAX_COMPILATION_CACHE_DIR"] = previous


# ------------------------------------------------------------------ estimators


def _es_estimate(loss_fn, theta, sigma, pairs, shaping="none", seed=0):
    from meta.estimators import pair_weights, perturbation, weighted_mean

    eps = [np.asarray(perturbation(seed, 0, m, theta.size, sigma)) for m in range(pairs)]
    plus = np.array([loss_fn(theta + e) for e in eps])
    minus = np.array([loss_fn(theta - e) for e in eps])
    return np.asarray(weighted_mean(pair_weights(plus, minus, sigma, shaping), eps))


def test_antithetic_es_estimates_the_gradient_of_a_quadratic():
    rng = np.random.default_rng(0)
    curvature = rng.uniform(0.5, 2.0, 20)
    target = rng.normal(size=20)
    theta = np.zeros(20, np.float32)

    def loss_fn(t):
        return float(np.sum(curvature * (t - target) ** 2))

    true = 2 * curvature * (theta - target)
    estimate = _es_estimate(loss_fn, theta, sigma=0.01, pairs=4000)
    # Antithetic pairs cancel the curvature term: per coordinate the estimate
    # is mean of eps_i/sigma^2 (eps . g) -> noise ~ |g| / sqrt(pairs).
    noise = np.linalg.norm(true) / np.sqrt(4000)
    assert np.max(np.abs(estimate - true)) < 5 * noise
    # The sign-of-difference estimate points the same way (magnitude differs).
    signed = _es_estimate(loss_fn, theta, sigma=0.01, pairs=4000, shaping="sign")
    cosine = signed @ true / np.linalg.norm(signed) / np.linalg.norm(true)
    assert cosine > 0.9


def test_persistent_es_is_unbiased_for_the_whole_unroll():
    """A 1-parameter inner run: s <- s + theta each step, loss (s - c)^2.

    Truncations of 1 step over a horizon of 4: summed over the episode, the
    PES estimates (accumulated perturbations) give d/dtheta of the total
    loss sum_t ((t+1) theta - c)^2, which truncated ES without accumulation
    underestimates (it only sees theta's effect on the last step).
    """
    from meta.estimators import accumulate, pair_weights, perturbation, weighted_mean

    theta, c, sigma, horizon, members = 0.3, 2.0, 0.01, 4, 4000
    true = sum(2 * (t + 1) * ((t + 1) * theta - c) for t in range(horizon))
    total_pes = total_truncated = 0.0
    states = np.zeros((members, 2))
    accumulated = [None] * members
    for step in range(horizon):
        eps = [np.asarray(perturbation(1, step, m, 1, sigma)) for m in range(members)]
        plus, minus = np.empty(members), np.empty(members)
        for m in range(members):
            states[m, 0] += theta + eps[m][0]
            states[m, 1] += theta - eps[m][0]
            plus[m], minus[m] = (states[m, 0] - c) ** 2, (states[m, 1] - c) ** 2
            accumulated[m] = accumulate(accumulated[m], eps[m], new_episode=step == 0)
        weights = pair_weights(plus, minus, sigma)
        total_pes += float(weighted_mean(weights, accumulated)[0])
        total_truncated += float(weighted_mean(weights, eps)[0])
    assert total_pes == pytest.approx(true, rel=0.1)
    assert abs(total_truncated - true) > 0.3 * abs(true)  # the bias PES removes


def test_inverse_variance_combination_trusts_the_less_noisy_estimate_per_coordinate():
    """Coordinates 0-49: ES precise, gradients noisy; 50-99 the other way round. The
    combination follows the precise one in each half and beats both overall."""
    from meta.estimators import inverse_variance_combination

    rng = np.random.default_rng(0)
    true = rng.normal(size=100)
    noise = np.where(np.arange(100) < 50, 0.05, 2.0)
    es = true + noise * rng.normal(size=(16, 100))
    gradient = true + noise[::-1] * rng.normal(size=(16, 100))
    combined, es_share = inverse_variance_combination(es, gradient)
    assert es_share[:50].min() > 0.9 and es_share[50:].max() < 0.1
    error = lambda estimate: np.linalg.norm(estimate - true)  # noqa: E731
    assert error(combined) < 0.5 * min(error(es.mean(0)), error(gradient.mean(0)))
    with pytest.raises(ValueError, match="n >= 2"):
        inverse_variance_combination(es[:1], gradient[:1])


def test_normalised_loss_clips_divergence():
    from meta.estimators import normalised_loss

    values = np.asarray(normalised_loss(np.array([1.0, 0.5, 9.0, np.nan, np.inf]), 2.0, 1.5))
    np.testing.assert_allclose(values, [0.5, 0.25, 1.5, 1.5, 1.5])
    assert float(normalised_loss(1.0, np.nan, 1.5)) == 1.5


def test_centered_ranks():
    from meta.estimators import centered_ranks

    np.testing.assert_allclose(centered_ranks([3.0, 1.0, 2.0]), [0.5, -0.5, 0.0])


# ------------------------------------------------------------------ subspaces


def _bundled(step_scale=1.0):
    from keras_velo.weights.pretrained import resolve_weights

    theta, _ = resolve_weights("bundled")
    theta["rnn_params"]["step_size"] = {
        k: v * np.float32(step_scale) for k, v in theta["rnn_params"]["step_size"].items()
    }
    return theta


def _changed(space, z):
    from keras_velo.maths.theta import flatten_theta

    before, after = flatten_theta(_bundled()), flatten_theta(space.theta(z))
    return {"/".join(p): int(np.sum(after[p] != before[p])) for p in before
            if np.any(after[p] != before[p])}


@pytest.mark.parametrize("blocks, dimension, size", [
    (("all",), None, 2_320_385),
    (("step_size_head",), None, 513),
    (("lstm_input_weights", "mlp_bank"), None, 1_048_576 + 40_704),
    (("all",), 300, 300),
])
def test_a_subspace_starts_at_theta0_and_moves_only_its_blocks(blocks, dimension, size):
    from keras_velo.maths.theta import flatten_theta
    from meta.subspace import SubspaceSpec, ThetaSubspace, block_sizes

    space = ThetaSubspace(SubspaceSpec(blocks, dimension), _bundled())
    assert space.size == size
    assert _changed(space, space.zeros()) == {}
    z = np.random.default_rng(0).normal(size=size).astype(np.float32)
    changed = _changed(space, z)
    expected = sum(block_sizes()[b] for b in blocks) if blocks != ("all",) else 2_320_385
    assert sum(changed.values()) == expected
    if "lstm_input_weights" in blocks:  # the first H rows of the gate weights only
        w = flatten_theta(space.theta(z))[("rnn_params", "rnn/linear", "w")]
        w0 = flatten_theta(_bundled())[("rnn_params", "rnn/linear", "w")]
        assert np.all(w[:512] != w0[:512]) and np.array_equal(w[512:], w0[512:])


def test_a_random_subspace_is_regenerated_from_its_seed_and_pulls_back_by_its_transpose():
    import jax.numpy as jnp

    from keras_velo.maths.theta import flatten_theta
    from meta.subspace import SubspaceSpec, ThetaSubspace

    spec = SubspaceSpec(("step_size_head", "mlp_bank"), 50, seed=3)
    one, two = ThetaSubspace(spec, _bundled()), ThetaSubspace(spec, _bundled())
    other = ThetaSubspace(dataclasses.replace(spec, seed=4), _bundled())
    z = np.random.default_rng(1).normal(size=50).astype(np.float32)
    leaves = lambda space: flatten_theta(space.theta(z))  # noqa: E731
    assert all(np.array_equal(leaves(one)[p], leaves(two)[p]) for p in leaves(one))
    assert not all(np.array_equal(leaves(one)[p], leaves(other)[p]) for p in leaves(one))
    assert one.fingerprint == two.fingerprint != other.fingerprint
    # <P^T c, v> == <c, P v> for any cotangent c and direction v (P is linear).
    rng = np.random.default_rng(2)
    cotangent = {p: jnp.asarray(rng.normal(size=one._theta0[p].shape), jnp.float32)
                 for p in one.variable_paths}
    v = rng.normal(size=50).astype(np.float32)
    pulled = np.asarray(one.pullback(jnp.asarray(z), cotangent))
    moved = one.variable_leaves(v)
    base = one.variable_leaves(np.zeros(50, np.float32))
    direct = sum(float(np.sum(np.asarray(cotangent[p]) * (moved[p] - base[p]))) for p in moved)
    assert float(pulled @ v) == pytest.approx(direct, rel=1e-4)


def test_a_run_recorded_from_bundled_rebuilds_after_bundled_becomes_another_theta(monkeypatch):
    """Runs recorded `--init bundled` (or `bundled-step:S`) when "bundled" was the bootstrap keep
    loading and resuming once "bundled" ships another theta: their recorded fingerprint picks the
    bootstrap."""
    import types

    from keras_velo.weights import pretrained
    from meta.subspace import SubspaceSpec
    from meta.train import build_subspace

    config = types.SimpleNamespace(subspace=SubspaceSpec(("step_size_head",)), seed=0)
    recorded, _ = build_subspace(config, "bundled-step:0.1")
    original = pretrained._load_bundled

    def another_bundled(name):
        theta = original(name)
        if name == "bundled":
            theta["rnn_params"]["step_size"]["b"] = theta["rnn_params"]["step_size"]["b"] + 1.0
        return theta

    monkeypatch.setattr(pretrained, "_load_bundled", another_bundled)
    assert build_subspace(config, "bundled-step:0.1")[0].fingerprint != recorded.fingerprint
    again, description = build_subspace(config, "bundled-step:0.1", recorded.fingerprint)
    assert again.fingerprint == recorded.fingerprint and "recorded as 'bundled-step:0.1'" in description
    assert build_subspace(config, "bootstrap-step:0.1")[0].fingerprint == recorded.fingerprint


def test_subspace_spec_rejects_unknown_blocks_and_dimensions():
    from meta.subspace import SubspaceSpec

    with pytest.raises(ValueError, match="blocks must be"):
        SubspaceSpec(("lstm_everything",))
    with pytest.raises(ValueError, match="blocks must be"):
        SubspaceSpec(("all", "mlp_bank"))
    with pytest.raises(ValueError, match="dimension"):
        SubspaceSpec(("all",), 0)


def test_velo_state_initialisation_is_traceable_in_theta():
    """A perturbed lstm_init_state (traced under jit) is what the inner run starts from."""
    import jax
    import jax.numpy as jnp

    from keras_velo.packed.update import init_state
    from meta.subspace import SubspaceSpec, ThetaSubspace

    space = ThetaSubspace(SubspaceSpec(("lstm_init_state",)), _bundled())
    z = np.zeros(space.size, np.float32)
    z[0] = 0.5  # hidden[0, 0]
    initial_hidden = jax.jit(lambda z: init_state(space.theta(z), [(3, 4), (4,)], 10).lstm_hidden)
    np.testing.assert_allclose(initial_hidden(jnp.asarray(z))[:, 0], 0.5, rtol=1e-6)


def test_a_hand_set_start_is_rebuilt_from_its_constants():
    from meta.bootstrap_theta import bootstrap_theta
    from meta.train import hand_set_constants, initial_theta

    theta, description = initial_theta("bootstrap:settled_vector_damping=0.3,settled_vector_weight_decay=false")
    expected = bootstrap_theta(settled_vector_damping=0.3, settled_vector_weight_decay=False)
    assert np.array_equal(theta["ff_mod_stack"]["~"]["b2"], expected["ff_mod_stack"]["~"]["b2"])
    assert "settled_vector_damping=0.3" in description
    for bad in ("no_such=1", "schedule_gains=1,2", "settled_vector_weight_decay=maybe", "peak_lr_mult="):
        with pytest.raises(ValueError):
            hand_set_constants(bad)


def test_family_weights_draw_families_in_proportion():
    from meta.task_distribution import TaskDistribution, sample_member_task

    uniform = TaskDistribution(("image_mlp", "image_cnn"), 2e6, 30, 30, config_pool=1)
    weighted = dataclasses.replace(uniform, family_weights=(("image_cnn", 3),))
    assert weighted.family_probabilities().tolist() == [0.25, 0.75]
    assert "family_weights" not in uniform.to_dict() and weighted.to_dict()["family_weights"] == (("image_cnn", 3),)
    draws = [sample_member_task(weighted, 0, member, 0).config["family"] for member in range(200)]
    assert 0.65 < draws.count("image_cnn") / 200 < 0.85
    with pytest.raises(ValueError, match="family_weights"):
        dataclasses.replace(uniform, family_weights=(("vit", 2),))


# ---------------------------------------------------------- inner training


def _config(**overrides):
    from meta.configs import get_preset

    return dataclasses.replace(get_preset("smoke"), **{"workers": 0, **overrides})


def _runner(z_space, config, gradients=False, arms="center", truncation=None, objective=None,
            reference=None):
    """A runner; `reference` (a constant) stands in for Adam's normalised loss on every task."""
    from meta.particles import ParticleRunner
    from meta.task_distribution import sample_member_task

    runner = ParticleRunner(z_space, config.distribution, config.seed, config.sigma,
                            truncation, config.max_loss_ratio, arms, gradients, objective)
    if reference is not None:
        task = sample_member_task(config.distribution, config.seed, 0, 0)
        runner.set_references({runner.member_reference_key(task.config): {"curve": [reference] * 10}})
    return runner


@pytest.mark.parametrize("objective", [
    None,
    # 3 of the 6 steps in the final segment, and the Adam penalty active on some of them.
    {"final_share": 0.7, "final_fraction": 0.9, "adam_penalty": 2.0},
])
def test_truncated_backprop_matches_finite_differences_of_the_truncation(objective):
    """The gradient of a 6-step truncation's meta-loss with respect to z (the step-size
    head, in a random 4-dim subspace of it) against central differences of fresh runs,
    for the area under the curve and for an objective weighing the end against Adam."""
    from meta.objective import MetaObjective
    from meta.subspace import SubspaceSpec, ThetaSubspace

    config = _config()
    objective = objective and MetaObjective(**objective)
    reference = 0.9 if objective else None
    space = ThetaSubspace(SubspaceSpec(("step_size_head",), 4, seed=1), _bundled())
    z = np.zeros(space.size, np.float32)
    result = _runner(space, config, gradients=True, truncation=6, objective=objective,
                     reference=reference).run_member(z, 0, 0)
    gradient = result["gradient"]
    if objective:
        assert result["losses"][0] != pytest.approx(result["normalised"])  # the objective weighs
    h = 0.05
    for k in range(space.size):
        step = np.zeros_like(z)
        step[k] = h
        up = _runner(space, config, truncation=6, objective=objective,
                     reference=reference).run_member(z + step, 0, 0)["losses"][0]
        down = _runner(space, config, truncation=6, objective=objective,
                       reference=reference).run_member(z - step, 0, 0)["losses"][0]
        difference = (up - down) / (2 * h)
        assert gradient[k] == pytest.approx(difference, rel=0.05, abs=2e-4), k
    assert np.abs(gradient).max() > 1e-3  # the step size matters: not a vacuous match


def test_a_pair_of_arms_shares_the_task_and_its_first_loss():
    from meta.subspace import SubspaceSpec, ThetaSubspace

    config = _config()
    space = ThetaSubspace(SubspaceSpec(("step_size_head",)), _bundled())
    result = _runner(space, config, arms="pair", truncation=5).run_member(space.zeros(), 0, 1)
    assert len(result["losses"]) == 2 and result["losses"][0] != result["losses"][1]
    assert result["steps"] == 5 and result["reset"] and result["family"] == "image_mlp"


class _QuadraticPool:
    """A worker pool whose members' meta-loss is a known quadratic of z.

    ES members evaluate both arms z +- eps_m with eps_m regenerated from
    (seed, iteration, member) exactly as the workers do; gradient members
    report the true gradient plus noise. The learner sees what it sees from
    real inner runs, minus the training noise.
    """

    def __init__(self, config, target, curvature, gradient_noise=0.0):
        self.config, self.target, self.curvature = config, target, curvature
        self.gradient_noise = gradient_noise
        self.rng = np.random.default_rng(0)

    def loss(self, z):
        return float(np.sum(self.curvature * (z - self.target) ** 2))

    def run(self, z, iteration, members):
        from meta.estimators import perturbation
        from meta.learner import ESTIMATORS

        arms, gradients = ESTIMATORS[self.config.estimator]
        results = []
        for member in members:
            if arms == "pair":
                eps = np.asarray(perturbation(self.config.seed, iteration, member, z.size,
                                              self.config.sigma))
                losses = [self.loss(z + eps), self.loss(z - eps)]
            else:
                losses = [self.loss(z)]
            result = {"member": member, "losses": losses, "reset": True, "steps": 1,
                      "family": "quadratic"}
            if gradients:
                noise = self.gradient_noise * self.rng.normal(size=z.size)
                result["gradient"] = 2 * self.curvature * (z - self.target) + noise
                result["gradient_finite"] = True
            results.append(result)
        return results, []


@pytest.mark.parametrize("estimator, shaping, tail", [
    ("es", "none", 0), ("es", "sign", 0), ("es", "centered_ranks", 0), ("tbptt", "none", 0),
    ("pes+tbptt", "none", 0), ("tbptt", "none", 1.0), ("pes+tbptt", "none", 1.0),
])
def test_meta_learner_descends_a_known_meta_loss(estimator, shaping, tail):
    """Each estimate + clipping + Adam, as `train` runs them, minimise a quadratic in 50
    parameters, with and without the objective's tail weights over members. A wrong sign
    anywhere (weights, perturbation regeneration, the gradients, the update) makes the
    loss grow; a learner ignoring the estimate leaves it."""
    from meta.learner import MetaLearner
    from meta.objective import MetaObjective

    rng = np.random.default_rng(0)
    config = _config(estimator=estimator, members=8, learning_rate=0.05, shaping=shaping,
                     objective=MetaObjective(tail_weight=tail))
    pool = _QuadraticPool(config, rng.normal(size=50).astype(np.float32),
                          rng.uniform(0.5, 2.0, 50), gradient_noise=1.0)
    learner = MetaLearner.start(config, 50)
    before = pool.loss(learner.z)
    for _ in range(60):
        record = learner.step(pool)
    assert record["iteration"] == 59 and record["members"] == 8
    assert pool.loss(learner.z) < 0.1 * before
    if estimator == "pes+tbptt":
        assert 0 < record["es_share"] < 1


# ------------------------------------------------------------- training runs


def test_meta_training_repairs_a_damaged_step_size(tmp_path):
    """The known-answer run, small: VeLO's step-size head scaled by 0.1 (steps 10x too
    small), truncated backprop on that head over tiny image MLPs. 12 iterations win back
    more than half of the meta-validation gap to the undamaged theta (measured: 84%; `-s` prints it)."""
    from keras_velo.weights.checkpoint import write_checkpoint
    from meta.evaluate import score_theta
    from meta.subspace import SubspaceSpec
    from meta.train import train

    write_checkpoint(f"{tmp_path}/damaged{os.sep}", _bundled(step_scale=0.1))
    config = _config(estimator="tbptt", subspace=SubspaceSpec(("step_size_head",)), members=4,
                     learning_rate=0.05, iterations=12, validate_every=12, checkpoint_every=12)
    train(config, tmp_path / "run", init=str(tmp_path / "damaged"), progress=False)
    from meta.plots import validation_records
    from meta.train import read_metrics

    valid = validation_records(read_metrics(tmp_path / "run"))
    damaged, repaired = valid[0]["meta_valid"]["final"], valid[-1]["meta_valid"]["final"]
    healthy = score_theta(_bundled(), [config.validation], workers=0)[config.validation.name]["final"]
    assert healthy < damaged
    print(f"known answer (small): damaged {damaged:.4f}, repaired {repaired:.4f}, undamaged "
          f"{healthy:.4f}: {(damaged - repaired) / (damaged - healthy):.0%} of the gap")
    assert damaged - repaired > 0.5 * (damaged - healthy), (damaged, repaired, healthy)


def test_runs_validate_the_start_once_then_every_n_iterations(tmp_path):
    from meta.evaluate import score_theta
    from meta.plots import validation_records
    from meta.subspace import SubspaceSpec
    from meta.train import read_metrics, train

    config = _config(subspace=SubspaceSpec(("step_size_head",)), iterations=4, validate_every=2,
                     checkpoint_every=2)
    train(config, tmp_path / "run", progress=False)
    valid = validation_records(read_metrics(tmp_path / "run"))
    assert [r["after_iteration"] for r in valid] == [0, 2, 4]
    start = score_theta(_bundled(), [config.validation], workers=0)[config.validation.name]
    assert valid[0]["meta_valid"] == start  # the same scoring as python -m meta.evaluate
    assert set(valid[0]["meta_valid"]["tasks"]) == {t.name for t in config.validation.tasks()}
    assert (tmp_path / "run" / "meta_valid.png").stat().st_size > 0


def test_resume_continues_exactly_from_compact_state(tmp_path):
    """Split and resumed (with particles.pkl) equals uninterrupted, bit for bit; the
    state git would keep is z and Adam (12 bytes a coordinate), not theta."""
    from meta.subspace import SubspaceSpec
    from meta.train import RUN_STATE, read_metrics, train

    config = _config(estimator="pes", subspace=SubspaceSpec(("step_size_head", "mlp_bank"), 200),
                     iterations=4, checkpoint_every=2, validate_every=2)
    whole = train(config, tmp_path / "whole", progress=False)
    train(dataclasses.replace(config, iterations=2), tmp_path / "split", progress=False)
    renamed = dataclasses.replace(config, name="continued")  # a label: a run may be renamed
    resumed = train(renamed, tmp_path / "split", resume=True, progress=False)
    np.testing.assert_array_equal(resumed.z, whole.z)
    runs = lambda out: [r for r in read_metrics(out) if r.get("kind") != "validation"]  # noqa: E731
    assert [r["meta_loss"] for r in runs(tmp_path / "split")] == \
        [r["meta_loss"] for r in runs(tmp_path / "whole")]
    assert [r["iteration"] for r in runs(tmp_path / "split")] == [0, 1, 2, 3]
    assert (tmp_path / "split" / RUN_STATE).stat().st_size < 12 * 200 + 4000
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path / "whole", progress=False)
    with pytest.raises(ValueError, match=r"another configuration .*differing: config\.sigma\)"):
        train(dataclasses.replace(config, sigma=0.02), tmp_path / "whole", resume=True,
              progress=False)


def test_resume_without_particles_starts_new_episodes(tmp_path):
    """A run committed without its (large) particles file resumes from z and Adam."""
    from meta.train import PARTICLES, load_run, train

    config = _config(iterations=2, checkpoint_every=2)
    train(config, tmp_path / "run", progress=False)
    (tmp_path / "run" / PARTICLES).unlink()
    _, _, z_before, _ = load_run(tmp_path / "run")
    learner = train(dataclasses.replace(config, iterations=3), tmp_path / "run", resume=True,
                    progress=False)
    assert learner.iteration == 3 and not np.array_equal(learner.z, z_before)


def test_meta_training_from_a_checkpoint_writes_the_learned_theta(tmp_path):
    """`--init PATH`: z moves theta away from that checkpoint; the theta written is
    theta(z), loads into VeLO, and `meta.evaluate --run` rebuilds it from the compact state."""
    from keras_velo.weights.checkpoint import read_checkpoint, write_checkpoint
    from keras_velo.maths.theta import flatten_theta
    from meta.train import load_run, train

    write_checkpoint(f"{tmp_path}/bad{os.sep}", _bundled(step_scale=0.01))
    config = _config(estimator="es", members=2, iterations=2, checkpoint_every=2)
    learner = train(config, tmp_path / "run", init=str(tmp_path / "bad"), progress=False)
    written = flatten_theta(read_checkpoint(tmp_path / "run" / "theta" / "params"))
    _, space, z, iteration = load_run(tmp_path / "run")
    assert iteration == 2 and np.array_equal(z, learner.z)
    rebuilt = flatten_theta(space.theta(z))
    assert all(np.array_equal(written[p], rebuilt[p]) for p in written)
    bad = flatten_theta(_bundled(step_scale=0.01))
    assert not all(np.array_equal(written[p], bad[p]) for p in written)
    step_size = ("rnn_params", "step_size", "b")  # one Adam step moves it by at most ~lr
    assert abs(written[step_size][0] - bad[step_size][0]) < 3 * config.learning_rate
    import keras_velo

    optimizer = keras_velo.VeLO(total_steps=10, weights=str(tmp_path / "run" / "theta"))
    assert str(tmp_path / "run" / "theta") in optimizer.weights_description


def test_evaluate_cli_scores_a_run_and_a_theta(tmp_path):
    from meta.evaluate import main

    out = tmp_path / "scores.json"
    assert main(["--theta", "bundled", "--validation", "smoke", "--workers", "0",
                 "--against", "bundled", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["scores"] == results["against"]["scores"]
    assert results["judgement"]["smoke-valid"]["final"] == [0.0, 0.0]
    assert results["judgement"]["smoke-valid"]["collapsed"] == []


# ------------------------------------------------------------- user families


def _regression_family(seed):
    """A user's family: a small regression MLP whose width and data depend on the seed."""
    import keras

    rng = np.random.default_rng(seed)
    width = int(rng.choice([8, 16]))
    x = rng.normal(size=(256, 4)).astype(np.float32)
    y = (x @ rng.normal(size=(4, 1)) + 0.1 * rng.normal(size=(256, 1))).astype(np.float32)
    init = keras.initializers.GlorotUniform(seed=seed)
    model = keras.Sequential([keras.Input((4,)),
                              keras.layers.Dense(width, activation="tanh", kernel_initializer=init),
                              keras.layers.Dense(1, kernel_initializer=init)])
    model.compile(loss="mse")
    return model, (x, y), 32


def test_meta_training_on_a_user_family(tmp_path):
    from meta.plots import validation_records
    from meta.train import meta_train, read_metrics

    learner = meta_train(tmp_path / "run", family=_regression_family, config="smoke",
                         workers=0, iterations=2, validate_every=2, validation_tasks=3,
                         progress=False)
    assert learner.iteration == 2
    records = read_metrics(tmp_path / "run")
    valid = validation_records(records)
    assert len(valid) == 2 and len(valid[0]["meta_valid"]["tasks"]) == 3
    families = {f for r in records if r.get("kind") != "validation" for f in r["families"]}
    assert families == {f"{__name__}:_regression_family"}
    config = json.loads((tmp_path / "run" / "run_config.json").read_text())["config"]
    assert config["distribution"]["families"] == [f"{__name__}:_regression_family"]


def test_a_user_family_that_returns_something_else_fails_clearly():
    from meta.user_family import UserFamily, UserTask, register

    register(UserFamily(lambda seed: "a model", name="bad_family"))
    with pytest.raises(ValueError, match=r"must return \(model, \(x, y\)\)"):
        UserTask({"family": "bad_family", "seed": 0})
    with pytest.raises(ValueError, match="module:function"):
        from meta.user_family import from_spec

        from_spec("no_colon")


# ------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"KERAS_BACKEND": "jax",
                                       "JAX_COMPILATION_CACHE_DIR":
                                           os.environ["JAX_COMPILATION_CACHE_DIR"]}})
    yield ray
    ray.shutdown()


def test_ray_workers_equal_one_process_and_survive_a_dead_worker(ray_session):
    from meta.learner import MetaLearner
    from meta.subspace import SubspaceSpec, ThetaSubspace
    from meta.workers import LocalPool, RayPool

    space = ThetaSubspace(SubspaceSpec(("step_size_head", "mlp_bank")), _bundled())
    config = _config(members=2, workers=2)
    # Episodes longer than the 4 truncations here: only the lost member restarts.
    distribution = dataclasses.replace(config.distribution, min_horizon=60, max_horizon=60)
    arguments = (space, distribution, config.seed, config.sigma,
                 config.unroll_truncation, config.max_loss_ratio, "pair", False)
    local = MetaLearner.start(config, space.size)
    local_pool = LocalPool(arguments)
    for _ in range(2):
        local.step(local_pool)
    tasks = config.validation.tasks()
    pool = RayPool(arguments, workers=2)
    try:
        assert len(set(pool.worker_pids())) == 2
        learner = MetaLearner.start(config, space.size)
        for _ in range(2):
            learner.step(pool)
        np.testing.assert_array_equal(learner.z, local.z)
        assert pool.score(learner.z, tasks) == local_pool.score(local.z, tasks)
        ray_session.kill(pool.actors[1])
        record = learner.step(pool)
        assert record["failed_members"] == [1] and record["members"] == 1
        assert np.isfinite(record["meta_loss"])
        record = learner.step(pool)  # the restarted worker starts member 1 over
        assert record["failed_members"] == [] and record["members"] == 2 and record["resets"] == 1
    finally:
        pool.close()


def test_smoke_preset_end_to_end(tmp_path):
    """`python -m meta.train --config smoke` from the command line, with its Ray worker."""
    out = tmp_path / "smoke"
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    completed = subprocess.run(
        [sys.executable, "-m", "meta.train", "--config", "smoke", "--out", str(out), "--no-progress"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("kind") != "validation"]
    assert [r["iteration"] for r in steps] == [0, 1, 2]
    assert all(np.isfinite(r["meta_loss"]) and r["wall_time_s"] > 0 for r in steps)
    assert [r["after_iteration"] for r in records if r.get("kind") == "validation"] == [0, 3]
    assert (out / "meta_loss.png").stat().st_size > 0 and (out / "meta_valid.png").exists()
    from keras_velo.weights.checkpoint import read_checkpoint
    from keras_velo.maths.theta import flatten_theta

    theta = flatten_theta(read_checkpoint(out / "theta" / "params"))
    bundled = flatten_theta(_bundled())
    assert {k: v.shape for k, v in theta.items()} == {k: v.shape for k, v in bundled.items()}
    assert not all(np.array_equal(theta[k], bundled[k]) for k in theta)  # it learned
    assert (out / "theta" / "config.gin").exists()
