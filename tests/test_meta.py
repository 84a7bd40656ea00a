"""Meta-training: the estimators against known gradients, learning from a bad theta, resume, Ray.

JAX only (meta-training runs on JAX). The tasks are image MLPs of a few
thousand parameters trained for 20-30 steps, so each test costs seconds
after the one-off compile of the inner step (shared within the process).
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


def test_normalised_loss_clips_divergence():
    from meta.estimators import normalised_loss

    values = np.asarray(normalised_loss(np.array([1.0, 0.5, 9.0, np.nan, np.inf]), 2.0, 1.5))
    np.testing.assert_allclose(values, [0.5, 0.25, 1.5, 1.5, 1.5])
    assert float(normalised_loss(1.0, np.nan, 1.5)) == 1.5


def test_centered_ranks():
    from meta.estimators import centered_ranks

    np.testing.assert_allclose(centered_ranks([3.0, 1.0, 2.0]), [0.5, -0.5, 0.0])


# -------------------------------------------------------------- inner training


def _config(**overrides):
    from meta.configs import get_preset

    return dataclasses.replace(get_preset("smoke"), **{"workers": 0, **overrides})


def _layout_and_theta(scale_step=1.0):
    from keras_velo.pretrained import resolve_weights
    from meta.theta_vector import ThetaLayout

    theta, _ = resolve_weights("bundled")
    theta["rnn_params"]["step_size"] = {
        k: v * np.float32(scale_step) for k, v in theta["rnn_params"]["step_size"].items()
    }
    layout = ThetaLayout.of(theta)
    return layout, layout.to_vector(theta)


def _episode_meta_loss(layout, vector, config, members=2):
    """Each member's whole-episode meta-loss under theta itself (no perturbation)."""
    from meta.particles import ParticleRunner

    runner = ParticleRunner(layout, config.distribution, config.seed, 0.0, None, config.max_loss_ratio)
    results = runner.run(vector, 0, list(range(members)))
    for result in results:
        assert result["loss_plus"] == result["loss_minus"]
    return np.mean([r["loss_plus"] for r in results])


def test_theta_vector_round_trip():
    layout, vector = _layout_and_theta()
    assert vector.shape == (2_320_385,)
    np.testing.assert_array_equal(layout.to_vector(layout.to_theta(vector)), vector)


def test_velo_state_initialisation_is_traceable_in_theta():
    """A perturbed lstm_init_state (traced under jit) is what the inner run starts from."""
    import jax

    from keras_velo.update import init_state

    layout, vector = _layout_and_theta()
    offset = 0
    for path, shape in zip(layout.paths, layout.shapes):
        if path == ("lstm_init_state", "hidden"):
            break
        offset += int(np.prod(shape))
    shifted = vector.copy()
    shifted[offset] += 0.5
    initial_hidden = jax.jit(lambda v: init_state(layout.to_theta(v), [(3, 4), (4,)], 10).lstm_hidden)
    np.testing.assert_allclose(initial_hidden(shifted)[:, 0], vector[offset] + 0.5, rtol=1e-6)
    np.testing.assert_allclose(initial_hidden(vector)[:, 0], vector[offset], rtol=1e-6)


class _QuadraticPool:
    """A worker pool whose members' meta-loss is a known quadratic of theta.

    Each member evaluates both arms theta +- eps_m with eps_m regenerated
    from (seed, iteration, member) exactly as the workers do, so the learner
    sees what it sees from real inner runs, minus the training noise.
    """

    def __init__(self, config, target, curvature):
        self.config, self.target, self.curvature = config, target, curvature

    def loss(self, theta):
        return float(np.sum(self.curvature * (theta - self.target) ** 2))

    def run(self, theta_vector, iteration, members):
        from meta.estimators import perturbation

        results = []
        for member in members:
            eps = np.asarray(perturbation(self.config.seed, iteration, member, theta_vector.size, self.config.sigma))
            results.append({"member": member, "loss_plus": self.loss(theta_vector + eps),
                            "loss_minus": self.loss(theta_vector - eps), "reset": True,
                            "steps": 1, "family": "quadratic"})
        return results, []


@pytest.mark.parametrize("shaping", ["none", "sign", "centered_ranks"])
def test_meta_learner_descends_a_known_meta_loss(shaping):
    """ES estimate + clipping + Adam, as `train` runs them, minimise a quadratic in 50 parameters.

    A wrong sign anywhere (weights, perturbation regeneration, the update)
    makes the loss grow instead; a learner that ignores the estimate leaves it.
    """
    from meta.learner import MetaLearner

    rng = np.random.default_rng(0)
    config = _config(estimator="es", members=8, learning_rate=0.05, shaping=shaping)
    pool = _QuadraticPool(config, rng.normal(size=50).astype(np.float32), rng.uniform(0.5, 2.0, 50))
    learner = MetaLearner.start(config, np.zeros(50, np.float32))
    before = pool.loss(learner.theta_vector)
    for _ in range(60):
        record = learner.step(pool)
    assert record["iteration"] == 59 and record["members"] == 8
    assert pool.loss(learner.theta_vector) < 0.1 * before


def test_meta_training_from_a_checkpoint_writes_the_learned_theta(tmp_path):
    """`--init PATH`: starts from that checkpoint; the theta it writes is the learner's and loads into VeLO.

    (Whether a few ES iterations improve a real VeLO is not asserted here:
    with 4 antithetic pairs in 2.3M dimensions the estimate is mostly noise
    at any budget a test affords; the learner's descent is tested above on a
    known meta-loss.)
    """
    from keras_velo.checkpoint import read_checkpoint, write_checkpoint
    from meta.train import train

    layout, bad = _layout_and_theta(scale_step=0.01)
    write_checkpoint(f"{tmp_path}/bad{os.sep}", layout.to_theta(bad))
    config = _config(estimator="es", members=2, iterations=2, checkpoint_every=2)
    learner = train(config, tmp_path / "run", init=str(tmp_path / "bad"), progress=False)
    # It started from the checkpoint: one Adam step moves each coordinate by at most ~lr.
    step_size = slice(*_offsets(layout, ("rnn_params", "step_size", "b")))
    assert abs(learner.theta_vector[step_size][0] - bad[step_size][0]) < 3 * config.learning_rate
    written = layout.to_vector(read_checkpoint(tmp_path / "run" / "theta" / "params"))
    np.testing.assert_array_equal(written, learner.theta_vector)
    assert not np.array_equal(written, bad)
    import keras_velo

    optimizer = keras_velo.VeLO(total_steps=10, weights=str(tmp_path / "run" / "theta"))
    assert str(tmp_path / "run" / "theta") in optimizer.weights_description


def _offsets(layout, leaf):
    offset = 0
    for path, shape in zip(layout.paths, layout.shapes):
        size = int(np.prod(shape))
        if path == leaf:
            return offset, offset + size
        offset += size
    raise KeyError(leaf)


def test_resume_continues_exactly(tmp_path):
    from meta.train import read_metrics, train

    config = _config(iterations=4, checkpoint_every=2)
    whole = train(config, tmp_path / "whole", progress=False)
    train(dataclasses.replace(config, iterations=2), tmp_path / "split", progress=False)
    resumed = train(config, tmp_path / "split", resume=True, progress=False)
    np.testing.assert_array_equal(resumed.theta_vector, whole.theta_vector)
    losses = lambda out: [r["meta_loss"] for r in read_metrics(out)]  # noqa: E731
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    assert [r["iteration"] for r in read_metrics(tmp_path / "split")] == [0, 1, 2, 3]
    with pytest.raises(FileExistsError, match="--resume"):
        train(config, tmp_path / "whole", progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        train(dataclasses.replace(config, sigma=0.02), tmp_path / "whole", resume=True, progress=False)


# ------------------------------------------------------------------------ Ray


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"KERAS_BACKEND": "jax"}})
    yield ray
    ray.shutdown()


def test_ray_workers_equal_one_process_and_survive_a_dead_worker(ray_session):
    from meta.learner import MetaLearner
    from meta.workers import LocalPool, RayPool

    layout, vector = _layout_and_theta()
    config = _config(members=2, workers=2)
    # Episodes longer than the 4 truncations here: only the lost member restarts.
    distribution = dataclasses.replace(config.distribution, min_horizon=60, max_horizon=60)
    arguments = (layout, distribution, config.seed, config.sigma,
                 config.unroll_truncation, config.max_loss_ratio)
    local = MetaLearner.start(config, vector)
    local_pool = LocalPool(arguments)
    for _ in range(2):
        local.step(local_pool)
    pool = RayPool(arguments, workers=2)
    try:
        assert len(set(pool.worker_pids())) == 2
        learner = MetaLearner.start(config, vector)
        for _ in range(2):
            learner.step(pool)
        np.testing.assert_array_equal(learner.theta_vector, local.theta_vector)
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
    assert [r["iteration"] for r in records] == [0, 1, 2]
    assert all(np.isfinite(r["meta_loss"]) and r["wall_time_s"] > 0 for r in records)
    assert (out / "meta_loss.png").stat().st_size > 0
    from keras_velo.checkpoint import read_checkpoint

    from keras_velo.theta import flatten_theta

    theta = flatten_theta(read_checkpoint(out / "theta" / "params"))
    bundled = flatten_theta(_layout_and_theta()[0].to_theta(_layout_and_theta()[1]))
    assert {k: v.shape for k, v in theta.items()} == {k: v.shape for k, v in bundled.items()}
    assert not all(np.array_equal(theta[k], bundled[k]) for k in theta)  # it learned
    assert (out / "theta" / "config.gin").exists()
