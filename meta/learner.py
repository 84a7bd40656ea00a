"""The synchronous meta-learner: one ES gradient estimate and one Adam step on theta per iteration.

`MetaLearner` holds what a run needs to continue exactly: the iteration,
theta (a flat float32 vector, `meta.theta_vector`), the meta-optimizer's
state (optax: Adam after global-norm clipping) and, for Persistent ES, each
member's accumulated perturbation since its episode began. The members'
particles live in the worker pool; `RunState` gathers both for a
checkpoint.

An iteration:

1. the pool runs one truncation of every member under theta +- eps_m;
2. each member's accumulated perturbation becomes eps_m (new episode or
   full-unroll ES) or grows by eps_m (Persistent ES), eps_m regenerated
   from (seed, iteration, member) here as on the worker;
3. `g = mean_m w_m * xi_m` with `w_m` from the two arms' meta-losses
   (`meta.estimators.pair_weights`); members whose worker died are left
   out (and their particles start over);
4. theta <- theta + Adam(clip(g)).
"""

import dataclasses
import time

import numpy as np

from meta.estimators import accumulate, pair_weights, perturbation, weighted_mean


def meta_optimizer(config):
    import optax

    return optax.chain(optax.clip_by_global_norm(config.clip_norm), optax.adam(config.learning_rate))


@dataclasses.dataclass
class MetaLearner:
    config: object  # MetaTrainingConfig
    theta_size: int
    iteration: int
    theta_vector: np.ndarray
    optimizer_state: object
    accumulated: dict  # member -> np.ndarray [theta_size]
    episode_starts: dict = dataclasses.field(default_factory=dict)  # member -> iteration

    @classmethod
    def start(cls, config, theta_vector):
        import jax.numpy as jnp

        theta_vector = np.asarray(theta_vector, np.float32)
        state = meta_optimizer(config).init(jnp.asarray(theta_vector))
        return cls(config, theta_vector.size, 0, theta_vector, _to_numpy(state), {})

    def step(self, pool):
        """One meta-iteration on `pool`; returns its metrics record."""
        import jax.numpy as jnp
        import optax

        config = self.config
        start = time.perf_counter()
        members = list(range(config.members))
        results, failed = pool.run(self.theta_vector, self.iteration, members)
        for member in failed:
            self.accumulated.pop(member, None)
            self.episode_starts.pop(member, None)
        vectors = []
        for result in results:
            member = result["member"]
            eps = np.asarray(perturbation(config.seed, self.iteration, member, self.theta_size, config.sigma))
            if result["reset"] or member not in self.accumulated:
                self.episode_starts[member] = self.iteration
            self.accumulated[member] = accumulate(self.accumulated.get(member), eps, result["reset"])
            vectors.append(jnp.asarray(self.accumulated[member]))
        record = {"iteration": self.iteration, "members": len(results), "failed_members": failed}
        if results:
            plus = np.array([r["loss_plus"] for r in results])
            minus = np.array([r["loss_minus"] for r in results])
            weights = pair_weights(plus, minus, config.sigma, config.shaping)
            gradient = weighted_mean(weights, vectors)
            optimizer = meta_optimizer(config)
            updates, state = optimizer.update(gradient, self.optimizer_state, jnp.asarray(self.theta_vector))
            theta = optax.apply_updates(jnp.asarray(self.theta_vector), updates)
            self.theta_vector = np.asarray(theta, np.float32)
            self.optimizer_state = _to_numpy(state)
            record.update(
                meta_loss=float(np.mean((plus + minus) / 2)),
                meta_loss_plus=float(plus.mean()),
                meta_loss_minus=float(minus.mean()),
                gradient_norm=float(jnp.linalg.norm(gradient)),
                update_norm=float(jnp.linalg.norm(updates)),
                resets=int(sum(r["reset"] for r in results)),
                steps=int(sum(r["steps"] for r in results)),
                families=sorted({r["family"] for r in results}),
            )
        else:
            record.update(meta_loss=float("nan"), gradient_norm=float("nan"))
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
        for member, start in self.episode_starts.items():
            total = None
            for iteration in range(start, self.iteration):
                eps = np.asarray(perturbation(config.seed, iteration, member, self.theta_size, config.sigma))
                total = accumulate(total, eps, total is None)
            if total is not None:
                self.accumulated[member] = total


def _to_numpy(tree):
    import jax

    return jax.tree_util.tree_map(np.asarray, tree)
