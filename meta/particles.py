"""The inner training runs of a meta-training population: one antithetic pair per member.

`ParticleRunner.run(theta_vector, iteration, members)` advances each
member's pair of inner runs by one truncation and returns, per member, the
two arms' meta-losses and whether the member began a new episode. That is
all a worker sends back: scalars. Perturbations are regenerated from the
run's seed (`meta.estimators.perturbation`), tasks from
`meta.task_distribution.sample_member_task`.

A member's pair ("particle"): both arms start an episode from the same
initial parameters, VeLO state from their own perturbed theta (so a
perturbed `lstm_init_state` counts), and see the same batches; the "+" arm
steps with theta + eps, the "-" arm with theta - eps, eps fresh each
truncation (Persistent ES). When the episode's horizon is reached, the next
truncation starts a new episode with a newly sampled task. With
`truncation=None` every truncation is a whole episode: full-unroll ES.

The meta-loss of an arm over a truncation is the mean over its steps of
the normalised training loss of each step's batch, `loss / initial loss`
clipped to `[0, max_loss_ratio]` (`meta.estimators.normalised_loss`).

One step of both arms is one `jax.jit`-compiled call, vmapped over the two
arms (a `lax.scan` over steps runs convolutions several times slower on
CPU); compiled steps are cached per architecture, process-wide.
"""

import collections
import dataclasses
import json

import numpy as np

from meta.estimators import normalised_loss, perturbation
from meta.task_distribution import sample_member_task

ARCHITECTURE_CACHE_SIZE = 32
# Compiled steps, shared by every runner of this process: (architecture, theta size) -> functions.
_COMPILED = collections.OrderedDict()


@dataclasses.dataclass
class Particle:
    """A member's pair of inner runs within an episode (numpy state: picklable)."""

    task: object  # MemberTask
    episode_start: int
    step: int
    initial_loss: float
    arms: object  # (trainable, non_trainable, VeLOState), each leaf stacked [2, ...]

    @property
    def done(self):
        return self.step >= self.task.horizon


def _architecture_key(config):
    """Configs equal up to their init seed build the same computation."""
    return json.dumps({k: v for k, v in config.items() if k != "init_seed"}, sort_keys=True)


class ParticleRunner:
    """Runs the truncations of a set of members; holds their particles between iterations.

    Args:
        theta_layout: `meta.theta_vector.ThetaLayout`.
        distribution: `meta.task_distribution.TaskDistribution`.
        seed: the run's seed.
        sigma: perturbation scale.
        truncation: steps per truncation, or None for whole episodes.
        max_loss_ratio: the normalised loss of a diverged step.
    """

    def __init__(self, theta_layout, distribution, seed, sigma, truncation, max_loss_ratio):
        from meta.functional_task import require_jax_backend

        require_jax_backend()
        self.layout = theta_layout
        self.distribution = distribution
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.truncation = truncation
        self.max_loss_ratio = float(max_loss_ratio)
        self.particles = {}
        self._batches = {}

    # ----------------------------------------------------------- compiled steps

    def _functions(self, config):
        """`(init_arms, pair_step)` jitted for `config`'s architecture (cached)."""
        key = (_architecture_key(config), self.layout)
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
        import jax

        from keras_velo.update import init_state, velo_update
        from meta.functional_task import FunctionalTask

        task = FunctionalTask(config)
        layout = self.layout

        def init_arms(theta_pair, trainable, non_trainable, horizon):
            def one(theta_vector):
                return init_state(layout.to_theta(theta_vector), task.shapes, horizon)

            states = jax.vmap(one)(theta_pair)
            pair = jax.tree_util.tree_map(lambda x: jax.numpy.stack([x, x]), (trainable, non_trainable))
            return (*pair, states)

        def pair_step(theta_pair, arms, x, y, scale):
            def one(theta_vector, arm):
                trainable, non_trainable, state = arm
                loss, grads, non_trainable = task.loss_and_grads(trainable, non_trainable, x, y, scale)
                trainable, state, _ = velo_update(
                    layout.to_theta(theta_vector), state, trainable, grads, loss
                )
                return loss, (trainable, non_trainable, state)

            return jax.vmap(one)(theta_pair, arms)

        functions = (
            init_arms,  # eager: runs once an episode, and the horizon must stay a number
            jax.jit(pair_step),
            task,
        )
        _COMPILED[key] = functions
        if len(_COMPILED) > ARCHITECTURE_CACHE_SIZE:
            _COMPILED.popitem(last=False)
        return functions

    # ------------------------------------------------------------------ running

    def _batch_iterator(self, member, particle):
        """The particle's batches, positioned at its current step."""
        cached = self._batches.get(member)
        if cached is not None and cached[0] is particle and cached[1] == particle.step:
            return cached[2]
        # The data depends on the config's dataset and batch size, not on its
        # init seed: the architecture's cached task serves every seed.
        iterator = self._functions(particle.task.config)[2].train_batches(particle.task.data_seed)
        for _ in range(particle.step):
            next(iterator)
        return iterator

    def _new_particle(self, member, iteration, theta_pair):
        import jax

        task = sample_member_task(self.distribution, self.seed, member, iteration)
        init_arms, _, built = self._functions(task.config)
        if built.config.to_dict() != task.config:  # same architecture, other init seed
            from meta.functional_task import FunctionalTask

            built = FunctionalTask(task.config)
        trainable, non_trainable = built.initial_state(task.param_scale)
        arms = init_arms(theta_pair, trainable, non_trainable, task.horizon)
        return Particle(task, iteration, 0, float("nan"), jax.device_get(arms))

    def run_member(self, theta_vector, iteration, member):
        """One truncation of `member`: `{"member", "loss_plus", "loss_minus", "reset", "steps", "family"}`."""
        import jax
        import jax.numpy as jnp

        eps = perturbation(self.seed, iteration, member, self.layout.size, self.sigma)
        theta = jnp.asarray(theta_vector)
        theta_pair = jnp.stack([theta + eps, theta - eps])
        particle = self.particles.get(member)
        reset = particle is None or particle.done
        if reset:
            particle = self._new_particle(member, iteration, theta_pair)
        _, pair_step, _ = self._functions(particle.task.config)
        iterator = self._batch_iterator(member, particle)
        remaining = particle.task.horizon - particle.step
        steps = remaining if self.truncation is None else min(self.truncation, remaining)
        arms = particle.arms
        totals = jnp.zeros((2,), jnp.float32)
        scale = jnp.float32(particle.task.param_scale)
        for _ in range(steps):
            x, y = next(iterator)
            losses, arms = pair_step(theta_pair, arms, x, y, scale)
            if particle.step == 0:
                particle.initial_loss = float(losses[0])
            totals = totals + normalised_loss(losses, particle.initial_loss, self.max_loss_ratio)
            particle.step += 1
        particle.arms = jax.device_get(arms)
        self.particles[member] = particle
        self._batches[member] = (particle, particle.step, iterator)
        mean = np.asarray(totals) / steps
        return {
            "member": int(member),
            "loss_plus": float(mean[0]),
            "loss_minus": float(mean[1]),
            "reset": bool(reset),
            "steps": int(steps),
            "family": particle.task.config["family"],
        }

    def run(self, theta_vector, iteration, members):
        """`run_member` for each of `members`, in order."""
        return [self.run_member(theta_vector, iteration, m) for m in members]

    # ------------------------------------------------------------- checkpoints

    def get_particles(self):
        """Every particle, as picklable numpy records (member -> `Particle`)."""
        return dict(self.particles)

    def set_particles(self, particles):
        self.particles.update(particles)
        for member in particles:
            self._batches.pop(member, None)
