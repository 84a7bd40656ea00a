"""The synchronous meta-learner: one gradient estimate and one Adam step on z per iteration.

`MetaLearner` holds what a run needs to continue exactly: the iteration, z
(the run's coordinates in its `meta.subspace.ThetaSubspace`, d float32
values), the meta-optimizer's state (optax: Adam after global-norm
clipping) and, for Persistent ES, each member's episode start (its
accumulated perturbation is regenerated from it). The members' particles
live in the worker pool.

An iteration:

1. the pool runs one truncation of every member (`meta.particles`);
2. the estimate, by `config.estimator`:
   * "pes" / "es": `g = mean_m w_m xi_m`, `w_m` from the two arms'
     meta-losses (`meta.estimators.pair_weights`), `xi_m` the member's
     accumulated perturbation (Persistent ES) or this truncation's (ES),
     regenerated here from (seed, iteration, member) as on the worker;
   * "tbptt": the mean of the members' truncated-backprop gradients;
   * "pes+tbptt": both, combined per coordinate by inverse variance
     (`meta.estimators.inverse_variance_combination`);
   members whose worker died are left out (their particles start over);
   with the objective's tail term (`meta.objective.member_weights`) each
   member's sample is weighted by how badly it did against Adam;
3. z <- z + Adam(clip(g)).
"""

import dataclasses
import time

import numpy as np

from meta.estimators import (
    accumulate,
    inverse_variance_combination,
    pair_weights,
    perturbation,
    weighted_mean,
)
from meta.objective import member_weights, tail_scores

ESTIMATORS = {
    # estimator: (the arms each member trains, whether it backpropagates)
    "pes": ("pair", False),
    "es": ("pair", False),
    "tbptt": ("center", True),
    "pes+tbptt": ("pair", True),
}


def meta_optimizer(config):
    import optax

    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.learning_rate))


@dataclasses.dataclass
class MetaLearner:
    config: object  # MetaTrainingConfig
    size: int
    iteration: int
    z: np.ndarray
    optimizer_state: object
    accumulated: dict  # member -> np.ndarray [size]
    episode_starts: dict = dataclasses.field(default_factory=dict)  # member -> iteration

    @classmethod
    def start(cls, config, size):
        """A learner at z = 0 (theta0) with a fresh Adam state."""
        import jax.numpy as jnp

        z = np.zeros(size, np.float32)
        state = meta_optimizer(config).init(jnp.asarray(z))
        return cls(config, int(size), 0, z, _to_numpy(state), {})

    def step(self, pool):
        """One meta-iteration on `pool`; returns its metrics record."""
        import jax.numpy as jnp
        import optax

        config = self.config
        arms, gradients = ESTIMATORS[config.estimator]
        start = time.perf_counter()
        members = list(range(config.members))
        results, failed = pool.run(self.z, self.iteration, members)
        for member in failed:
            self.accumulated.pop(member, None)
            self.episode_starts.pop(member, None)
        record = {"iteration": self.iteration, "members": len(results), "failed_members": failed}
        if not results:
            record.update(meta_loss=float("nan"), gradient_norm=float("nan"))
            self.iteration += 1
            record["wall_time_s"] = time.perf_counter() - start
            return record
        losses = np.array([r["losses"] for r in results])  # [members, arms]
        tail = member_weights(config.objective, tail_scores(
            [r.get("normalised", np.mean(r["losses"])) for r in results],
            [r.get("reference") for r in results]))
        es_samples = None
        if arms == "pair":
            vectors = []
            for result in results:
                member = result["member"]
                eps = np.asarray(perturbation(config.seed, self.iteration, member, self.size,
                                              config.sigma))
                if result["reset"] or member not in self.accumulated:
                    self.episode_starts[member] = self.iteration
                self.accumulated[member] = accumulate(self.accumulated.get(member), eps,
                                                      result["reset"])
                vectors.append(jnp.asarray(self.accumulated[member]))
            weights = pair_weights(losses[:, 0], losses[:, 1], config.sigma, config.shaping) * tail
            if gradients:
                es_samples = np.stack([w * np.asarray(v) for w, v in zip(weights, vectors)])
            else:
                estimate = np.asarray(weighted_mean(weights, vectors))
            record.update(meta_loss_plus=float(losses[:, 0].mean()),
                          meta_loss_minus=float(losses[:, 1].mean()))
        if gradients:
            samples = np.stack([r["gradient"] for r in results]) * tail[:, None]
            record["nonfinite_gradients"] = int(sum(not r["gradient_finite"] for r in results))
            if es_samples is None:
                estimate = samples.mean(axis=0)
            elif len(results) >= 2:
                estimate, es_share = inverse_variance_combination(es_samples, samples)
                record["es_share"] = float(es_share.mean())
            else:
                estimate = (es_samples.mean(axis=0) + samples.mean(axis=0)) / 2
        optimizer = meta_optimizer(config)
        updates, state = optimizer.update(jnp.asarray(estimate, jnp.float32),
                                          self.optimizer_state, jnp.asarray(self.z))
        self.z = np.asarray(optax.apply_updates(jnp.asarray(self.z), updates), np.float32)
        self.optimizer_state = _to_numpy(state)
        record.update(
            meta_loss=float(losses.mean()),
            gradient_norm=float(np.linalg.norm(estimate)),
            update_norm=float(jnp.linalg.norm(updates)),
            resets=int(sum(r["reset"] for r in results)),
            steps=int(sum(r["steps"] for r in results)),
            families=sorted({r["family"] for r in results}),
        )
        if config.objective.tail_weight:
            record["tail_families"] = sorted({r["family"] for r, w in zip(results, tail) if w > 1})
        self.iteration += 1
        record["wall_time_s"] = time.perf_counter() - start
        return record

    def regenerate_accumulated(self):
        """Rebuilds each member's accumulated perturbation from its episode start (for resume).

        The sum of the same float32 draws in the same order as `step` made
        them: equal bit for bit, so checkpoints need not store them.
        """
        config = self.config
        self.accumulated = {}
        if ESTIMATORS[config.estimator][0] != "pair":
            return
        for member, start in self.episode_starts.items():
            total = None
            for iteration in range(start, self.iteration):
                eps = np.asarray(perturbation(config.seed, iteration, member, self.size, config.sigma))
                total = accumulate(total, eps, total is None)
            if total is not None:
                self.accumulated[member] = total


def _to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)
