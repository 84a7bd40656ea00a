"""The inner training runs of a meta-training population, and the scoring of a theta.

`ParticleRunner.run(z, iteration, members)` advances each member's inner
run(s) by one truncation and returns, per member, what the estimator
needs: the arms' meta-losses and, where asked, the gradient of the
truncation's meta-loss with respect to z. Perturbations are regenerated
from the run's seed (`meta.estimators.perturbation`), tasks from
`meta.task_distribution.sample_member_task`, theta from z by the run's
`meta.subspace.ThetaSubspace`.

A member's runs ("particle") share one task, its initial parameters and its
batches. Its *arms* are the thetas it trains with:

* `arms="pair"` (evolution strategies): theta(z + eps) and theta(z - eps),
  eps fresh each truncation (Persistent ES) or each episode (full-unroll ES,
  `truncation=None`);
* `arms="center"`: theta(z) alone (truncated backpropagation).

With `gradients=True` the runner also backpropagates through the
truncation (Metz et al., 2019; learned_optimization's `TruncatedGrad`):
the forward pass keeps each step's inner state, then the backward pass
walks the steps in reverse, one jitted VJP of the inner step each, and
accumulates the gradient of the meta-loss with respect to the variable
leaves of theta, mapped to z by `ThetaSubspace.pullback`. Only the
leaves that depend on z are differentiated. The incoming state of the
truncation is a constant (truncated backpropagation); a non-finite
gradient is reported as zeros (and counted).

The meta-loss of an arm over a truncation is the mean over its steps of
the run's `meta.objective.MetaObjective` terms of each step's normalised
training loss, `loss / initial loss` clipped to `[0, max_loss_ratio]`
(`meta.estimators.normalised_loss`): by default the loss itself (the area
under the curve); with weights on the episode's final segment and a
penalty for ending above the task's Adam(1e-3) reference
(`meta.adam_reference`, handed to the runner by `set_references`).

One step of an ES pair is one `jax.jit`-compiled call, vmapped over the two
arms; with gradients each arm runs alone (XLA on CPU runs the backward pass
of a vmapped step ~7x slower). A `lax.scan` over steps runs convolutions
several times slower on CPU, so steps are a Python loop; compiled steps are
cached per architecture, process-wide.

`score(z, tasks)` trains each meta-validation task (`meta.validation`) for
its horizon with theta(z) and returns its normalised losses.
"""

import collections
import dataclasses
import json

import numpy as np

from meta import adam_reference
from meta.estimators import normalised_loss, perturbation
from meta.objective import MetaObjective, step_meta_losses
from meta.task_distribution import sample_member_task

# Each architecture's compiled programs hold ~0.3 GB on a worker; evicted ones
# come back from JAX's persistent cache in ~5 s (`keras_velo.enable_compilation_cache`).
ARCHITECTURE_CACHE_SIZE = 16
# Compiled steps, shared by every runner of this process:
# (architecture, variable leaves, number of arms) -> functions.
_COMPILED = collections.OrderedDict()
ARMS = {"pair": 2, "center": 1}


@dataclasses.dataclass
class Particle:
    """A member's inner runs within an episode (numpy state: picklable)."""

    task: object  # MemberTask
    episode_start: int
    step: int
    initial_loss: float
    arms: object  # (trainable, non_trainable, VeLOState), each leaf stacked [arms, ...]

    @property
    def done(self):
        return self.step >= self.task.horizon


def _architecture_key(config):
    """Configs equal up to their init seed build the same computation."""
    return json.dumps({k: v for k, v in config.items() if k != "init_seed"}, sort_keys=True,
                      default=str)


def _is_float(leaf):
    return np.issubdtype(np.asarray(leaf).dtype if not hasattr(leaf, "dtype") else leaf.dtype,
                         np.floating)


class ParticleRunner:
    """Runs the truncations of a set of members; holds their particles between iterations.

    Args:
        subspace: `meta.subspace.ThetaSubspace` (z -> theta).
        distribution: `meta.task_distribution.TaskDistribution`.
        seed: the run's seed.
        sigma: perturbation scale (in z).
        truncation: steps per truncation, or None for whole episodes.
        max_loss_ratio: the normalised loss of a diverged step.
        arms: "pair" or "center" (see the module docstring).
        gradients: also backpropagate through each truncation.
        objective: the `meta.objective.MetaObjective` (default: the area
            under the curve).
    """

    def __init__(self, subspace, distribution, seed, sigma, truncation, max_loss_ratio,
                 arms="pair", gradients=False, objective=None):
        from meta.functional_task import require_jax_backend

        require_jax_backend()
        distribution.register_user_families()
        if arms not in ARMS:
            raise ValueError(f"arms must be one of {sorted(ARMS)}, got {arms!r}.")
        self.subspace = subspace
        self.distribution = distribution
        self.seed = int(seed)
        self.sigma = float(sigma)
        self.truncation = truncation
        self.max_loss_ratio = float(max_loss_ratio)
        self.arms = arms
        self.gradients = bool(gradients)
        self.objective = objective or MetaObjective()
        self.references = {}  # reference key -> record (meta.adam_reference)
        self.particles = {}
        self._batches = {}
        self._constants = None

    # ----------------------------------------------------------- compiled steps

    def _constant_leaves(self):
        import jax.numpy as jnp

        if self._constants is None:
            self._constants = {p: jnp.asarray(v) for p, v in self.subspace.constant_leaves.items()}
        return self._constants

    def _functions(self, config, num_arms):
        """`(init_arms, arms_step, arm_step, arm_step_vjp, task)` for `config`'s architecture (cached).

        `arms_step` steps all arms at once (vmapped), `arm_step` one arm,
        `arm_step_vjp` pulls cotangents back through one arm's step.
        """
        key = (_architecture_key(config), self.subspace.variable_paths, num_arms)
        if key in _COMPILED:
            _COMPILED.move_to_end(key)
            return _COMPILED[key]
        import jax

        from keras_velo.packed.update import init_state, velo_update
        from meta.functional_task import FunctionalTask

        task = FunctionalTask(config)
        merge = self.subspace.merge

        def init_arms(variable_arms, constant, trainable, non_trainable, horizon):
            def one(variable):
                return init_state(merge(variable, constant), task.shapes, horizon)

            states = jax.vmap(one)(variable_arms)
            stack = lambda x: jax.numpy.stack([x] * num_arms)  # noqa: E731
            pair = jax.tree_util.tree_map(stack, (trainable, non_trainable))
            return (*pair, states)

        def arm_step(variable, constant, arm, x, y, scale):
            trainable, non_trainable, state = arm
            loss, grads, non_trainable = task.loss_and_grads(trainable, non_trainable, x, y, scale)
            trainable, state, _ = velo_update(merge(variable, constant), state, trainable, grads,
                                              loss)
            return loss, (trainable, non_trainable, state)

        def arms_step(variable_arms, constant, arms, x, y, scale):
            return jax.vmap(arm_step, in_axes=(0, None, 0, None, None, None))(
                variable_arms, constant, arms, x, y, scale)

        def arm_step_vjp(variable, constant, arm, x, y, scale, loss_cotangent, float_cotangents):
            leaves, treedef = jax.tree_util.tree_flatten(arm)
            is_float = [_is_float(leaf) for leaf in leaves]

            def on_floats(variable, floats):
                it = iter(floats)
                full = [next(it) if f else leaf for leaf, f in zip(leaves, is_float)]
                loss, new_arm = arm_step(variable, constant, treedef.unflatten(full), x, y, scale)
                new = jax.tree_util.tree_leaves(new_arm)
                return loss, [leaf for leaf, f in zip(new, is_float) if f]

            floats = [leaf for leaf, f in zip(leaves, is_float) if f]
            _, vjp = jax.vjp(on_floats, variable, floats)
            return vjp((loss_cotangent, float_cotangents))

        # The batched step serves ES pairs without gradients; one arm at a time
        # otherwise: XLA on CPU runs a vmapped backward pass ~7x slower (the
        # transposed gathers and segment sums become batched scatters).
        functions = (
            init_arms,  # eager: runs once an episode, and the horizon must stay a number
            jax.jit(arms_step),
            jax.jit(arm_step),
            jax.jit(arm_step_vjp),
            task,
        )
        _COMPILED[key] = functions
        if len(_COMPILED) > ARCHITECTURE_CACHE_SIZE:
            _COMPILED.popitem(last=False)
        return functions

    # ------------------------------------------------------------------ running

    def _arm_thetas(self, z, iteration, member):
        """`(variable leaves stacked per arm, eps or None)` for this member's truncation."""
        import jax
        import jax.numpy as jnp

        z = jnp.asarray(z)
        if self.arms == "center":
            points = z[None]
            eps = None
        else:
            eps = perturbation(self.seed, iteration, member, self.subspace.size, self.sigma)
            points = jnp.stack([z + eps, z - eps])
        return jax.vmap(self.subspace.variable_leaves)(points), eps

    def _task_and_arms(self, task, iteration, variable_arms, num_arms):
        """A fresh particle's built task and arms for `task` (a `MemberTask`)."""
        import jax

        from meta.functional_task import FunctionalTask

        init_arms, _, _, _, built = self._functions(task.config, num_arms)
        if built.config.to_dict() != task.config:  # same architecture, other init seed
            built = FunctionalTask(task.config)
        trainable, non_trainable = built.initial_state(task.param_scale)
        arms = init_arms(variable_arms, self._constant_leaves(), trainable, non_trainable,
                         task.horizon)
        return Particle(task, iteration, 0, float("nan"), jax.device_get(arms))

    def _batch_iterator(self, member, particle):
        """The particle's batches, positioned at its current step."""
        cached = self._batches.get(member)
        if cached is not None and cached[0] is particle and cached[1] == particle.step:
            return cached[2]
        # The data depends on the config's dataset and batch size, not on its
        # init seed: the architecture's cached task serves every seed.
        num_arms = ARMS[self.arms]
        iterator = self._functions(particle.task.config, num_arms)[4].train_batches(
            particle.task.data_seed)
        for _ in range(particle.step):
            next(iterator)
        return iterator

    def run_member(self, z, iteration, member):
        """One truncation of `member`.

        Returns `{"member", "losses" [arms], "reset", "steps", "family"}`,
        with `"gradient"` (`[d]`, mean over the arms) and `"gradient_finite"`
        when the runner computes gradients.
        """
        import jax
        import jax.numpy as jnp

        num_arms = ARMS[self.arms]
        variable_arms, _ = self._arm_thetas(z, iteration, member)
        particle = self.particles.get(member)
        reset = particle is None or particle.done
        if reset:
            task = sample_member_task(self.distribution, self.seed, member, iteration)
            particle = self._task_and_arms(task, iteration, variable_arms, num_arms)
        _, arms_step, arm_step, arm_step_vjp, _ = self._functions(particle.task.config, num_arms)
        iterator = self._batch_iterator(member, particle)
        remaining = particle.task.horizon - particle.step
        steps = remaining if self.truncation is None else min(self.truncation, remaining)
        batches = [next(iterator) for _ in range(steps)]
        constant = self._constant_leaves()
        scale = jnp.float32(particle.task.param_scale)
        first_step = particle.step == 0
        if num_arms == 2 and not self.gradients:
            arms, losses = particle.arms, []
            for x, y in batches:
                loss, arms = arms_step(variable_arms, constant, arms, x, y, scale)
                losses.append(loss)
            losses = jnp.stack(losses)  # [steps, arms]
            if first_step:
                particle.initial_loss = float(losses[0, 0])
            gradient = None
        else:
            arms, losses, gradient = [], [], 0.0
            for a in range(num_arms):
                variable = {p: v[a] for p, v in variable_arms.items()}
                arm = jax.tree_util.tree_map(lambda leaf: leaf[a], particle.arms)  # noqa: B023
                history, arm_losses = [], []
                for x, y in batches:
                    if self.gradients:
                        history.append(arm)
                    loss, arm = arm_step(variable, constant, arm, x, y, scale)
                    arm_losses.append(loss)
                arm_losses = jnp.stack(arm_losses)
                if first_step and a == 0:
                    particle.initial_loss = float(arm_losses[0])
                if self.gradients:
                    cotangent = self._backward(variable, constant, history, batches, arm_losses,
                                               particle, scale, arm_step_vjp)
                    gradient = gradient + self.subspace.pullback(jnp.asarray(z), cotangent)
                arms.append(arm)
                losses.append(arm_losses)
            arms = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *arms)
            losses = jnp.stack(losses, axis=1)
            gradient = gradient / num_arms if self.gradients else None
        positions = np.arange(particle.step, particle.step + steps)
        reference = self._reference_at(particle.task, positions)
        particle.step += steps
        normalised = normalised_loss(losses, particle.initial_loss, self.max_loss_ratio)
        terms = step_meta_losses(self.objective, normalised, positions, particle.task.horizon,
                                 reference)
        result = {
            "member": int(member),
            "losses": [float(v) for v in np.asarray(jnp.mean(terms, axis=0))],
            "normalised": float(jnp.mean(normalised)),
            "reference": None if reference is None else float(np.mean(reference)),
            "reset": bool(reset),
            "steps": int(steps),
            "family": particle.task.config["family"],
        }
        if gradient is not None:
            finite = bool(jnp.all(jnp.isfinite(gradient)))
            result["gradient"] = np.asarray(gradient if finite else jnp.zeros_like(gradient))
            result["gradient_finite"] = finite
        particle.arms = jax.device_get(arms)
        self.particles[member] = particle
        self._batches[member] = (particle, particle.step, iterator)
        return result

    def _backward(self, variable, constant, history, batches, losses, particle, scale,
                  arm_step_vjp):
        """Cotangents of one arm's variable leaves: d(truncation meta-loss)/d(leaf).

        `particle` is still at the truncation's first step.
        """
        import jax
        import jax.numpy as jnp

        positions = np.arange(particle.step, particle.step + losses.shape[0])
        reference = self._reference_at(particle.task, positions)

        def meta_loss(losses):
            normalised = normalised_loss(losses, particle.initial_loss, self.max_loss_ratio)
            return jnp.mean(step_meta_losses(self.objective, normalised, positions,
                                             particle.task.horizon, reference))

        slope = jax.grad(meta_loss)(losses)
        leaves = jax.tree_util.tree_leaves(history[0])
        float_cotangents = [jnp.zeros_like(leaf) for leaf in leaves if _is_float(leaf)]
        total = jax.tree_util.tree_map(jnp.zeros_like, variable)
        for t in range(len(history) - 1, -1, -1):
            x, y = batches[t]
            variable_cotangent, float_cotangents = arm_step_vjp(
                variable, constant, history[t], x, y, scale, slope[t], float_cotangents)
            total = jax.tree_util.tree_map(jnp.add, total, variable_cotangent)
        return total

    def run(self, z, iteration, members):
        """`run_member` for each of `members`, in order."""
        return [self.run_member(z, iteration, m) for m in members]

    def compile_tasks(self, configs):
        """Compiles (and runs once) every program this runner uses on each config.

        With JAX's persistent cache on, later processes load them instead
        of compiling (`benchmarks/meta_estimators.py --warm`).
        """
        import jax
        import jax.numpy as jnp

        from meta.task_distribution import MemberTask

        z = jnp.asarray(self.subspace.zeros())
        for config in configs:
            task = MemberTask(config, 2, 1.0, 0)
            for num_arms in sorted({ARMS[self.arms], 1}):
                variable_arms = jax.vmap(self.subspace.variable_leaves)(jnp.stack([z] * num_arms))
                particle = self._task_and_arms(task, 0, variable_arms, num_arms)
                _, arms_step, arm_step, arm_step_vjp, built = self._functions(config, num_arms)
                x, y = next(built.train_batches(0))
                scale = jnp.float32(1.0)
                constant = self._constant_leaves()
                variable = {p: v[0] for p, v in variable_arms.items()}
                arm = jax.tree_util.tree_map(lambda leaf: leaf[0], particle.arms)
                if num_arms == 2 and not self.gradients:
                    jax.block_until_ready(arms_step(variable_arms, constant, particle.arms, x, y,
                                                    scale))
                    continue
                _, new_arm = arm_step(variable, constant, arm, x, y, scale)
                if self.gradients and num_arms == ARMS[self.arms]:
                    floats = [jnp.zeros_like(leaf) for leaf in jax.tree_util.tree_leaves(new_arm)
                              if _is_float(leaf)]
                    jax.block_until_ready(arm_step_vjp(variable, constant, arm, x, y, scale,
                                                       jnp.float32(1.0), floats))
            for key in [k for k in _COMPILED if k[0] == _architecture_key(config)]:
                del _COMPILED[key]  # in the persistent cache now; memory is what is short
        return len(configs)

    # --------------------------------------------------------- Adam references

    def member_reference_key(self, config):
        """The key of the reference a member on `config` is compared with (longest horizon, seed 0)."""
        return adam_reference.reference_key(config, self.distribution.max_horizon, 0)

    def set_references(self, records):
        """`{key: record}` of `meta.adam_reference` curves the members may need."""
        self.references.update(records)

    def _reference_at(self, task, positions):
        """Adam's smoothed normalised loss at `positions` of `task`'s config, or None."""
        if not self.objective.needs_references:
            return None
        record = self.references.get(self.member_reference_key(task.config))
        return None if record is None else adam_reference.value_at(record, positions)

    def compute_references(self, specs):
        """Adam(1e-3) references for `specs` (`(config, steps, data_seed)`); `{key: record}`."""
        from meta.functional_task import FunctionalTask

        records = {}
        for config, steps, data_seed in specs:
            key = adam_reference.reference_key(config, steps, data_seed)
            normalised = adam_reference.compute_reference(
                FunctionalTask(config), steps, data_seed, self.max_loss_ratio)
            records[key] = {"config": config, "steps": int(steps), "data_seed": int(data_seed),
                            "learning_rate": adam_reference.LEARNING_RATE,
                            **adam_reference.summarise_curve(normalised)}
        return records

    # ---------------------------------------------------------------- scoring

    def score_task(self, z, task):
        """Trains `task` (`meta.validation.ValidationTask`) for its horizon with theta(z).

        Returns `{"name", "family", "normalised" [horizon]}`: each step's
        training loss over the first, clipped to `[0, max_loss_ratio]`.
        """
        import jax
        import jax.numpy as jnp

        from meta.task_distribution import MemberTask

        variable = {p: v[None] for p, v in self.subspace.variable_leaves(jnp.asarray(z)).items()}
        member_task = MemberTask(task.config, task.horizon, task.param_scale, task.data_seed)
        particle = self._task_and_arms(member_task, 0, variable, 1)
        _, _, arm_step, _, built = self._functions(task.config, 1)
        iterator = built.train_batches(task.data_seed)
        arm = jax.tree_util.tree_map(lambda leaf: leaf[0], particle.arms)
        variable = {p: v[0] for p, v in variable.items()}
        losses = []
        scale = jnp.float32(task.param_scale)
        constant = self._constant_leaves()
        for _ in range(task.horizon):
            x, y = next(iterator)
            loss, arm = arm_step(variable, constant, arm, x, y, scale)
            losses.append(loss)
        losses = np.asarray(jnp.stack(losses), np.float64)
        normalised = np.asarray(normalised_loss(losses, losses[0], self.max_loss_ratio))
        return {"name": task.name, "family": task.config["family"],
                "normalised": normalised.tolist()}

    def score(self, z, tasks):
        """`score_task` for each task, in order."""
        return [self.score_task(z, task) for task in tasks]

    # ------------------------------------------------------------- checkpoints

    def get_particles(self):
        """Every particle, as picklable numpy records (member -> `Particle`)."""
        return dict(self.particles)

    def set_particles(self, particles):
        self.particles.update(particles)
        for member in particles:
            self._batches.pop(member, None)
