"""A task-family task as pure JAX functions, for meta-training.

`FunctionalTask(config)` builds the task's Keras model once and exposes:

* `initial_state()`: the initial trainable and non-trainable values (those
  the config's `init_seed` gives), as lists of JAX arrays;
* `loss(trainable, non_trainable, x, y)`: the training loss through Keras'
  `model.stateless_call` (training mode), and the updated non-trainable
  values (BatchNorm moving statistics, seed-generator states);
* `train_batches(seed)`: the task's numpy batches.

`config` is a task-family config (dict) or, for a user's family
(`meta.user_family`), `{"family": name, "seed": seed}`.

With a `param_scale` s (the reference's `ReparamWeightsFamily`
augmentation), the optimizer sees parameters `p / s` and the model uses
`s * (p / s)`: the task is unchanged, but the parameters and gradients the
optimizer works with are rescaled by `1/s` and `s`, so a learned optimizer
cannot rely on one parameter scale.

Everything here is traceable: an inner training step built from `loss`
is `jax.jit`-compiled and `jax.vmap`-ed over the two arms of an antithetic
pair. Runs on the JAX backend only (meta-training does); the weights it
learns work on every backend.
"""

import keras
import numpy as np


def require_jax_backend():
    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "Meta-training runs on the JAX backend; set KERAS_BACKEND=jax before "
            f"importing keras (current backend: {keras.backend.backend()!r})."
        )


class FunctionalTask:
    """The pure-function view of `task_families.build_task(config)`.

    `param_scale` (the reparameterisation factor s > 0; 1 = none) may be a
    traced scalar, so one compiled step serves every scale.
    """

    def __init__(self, config):
        require_jax_backend()
        from meta.user_family import build_user_task, is_user_family
        from task_families import build_task

        family = config.get("family") if isinstance(config, dict) else None
        self.task = build_user_task(config) if is_user_family(family) else build_task(config)
        self.config = self.task.config
        model = self.task.model
        self._model = model
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]

    def initial_state(self, param_scale=1.0):
        """`(trainable, non_trainable)`: lists of float arrays; trainable as the optimizer sees it."""
        import jax.numpy as jnp

        if not (np.isfinite(param_scale) and param_scale > 0):
            raise ValueError(f"param_scale must be a finite number > 0, got {param_scale!r}.")
        trainable = [jnp.asarray(v.value) / param_scale for v in self._model.trainable_variables]
        non_trainable = [jnp.asarray(v.value) for v in self._model.non_trainable_variables]
        return trainable, non_trainable

    def loss(self, trainable, non_trainable, x, y, param_scale=1.0):
        """`(loss, new_non_trainable)` of one training batch."""
        scaled = [p * param_scale for p in trainable]
        prediction, non_trainable = self._model.stateless_call(
            scaled, non_trainable, x, training=True
        )
        return self.task.loss(y, prediction), non_trainable

    def loss_and_grads(self, trainable, non_trainable, x, y, param_scale=1.0):
        """`(loss, grads, new_non_trainable)`: gradients with respect to `trainable`."""
        import jax

        def objective(params):
            return self.loss(params, non_trainable, x, y, param_scale)

        (loss, non_trainable), grads = jax.value_and_grad(objective, has_aux=True)(trainable)
        return loss, grads, non_trainable

    def train_batches(self, seed):
        """The task's infinite iterator of `(x, y)` numpy batches, in the order `seed` gives."""
        return self.task.train_batches(seed)
