"""`VeLO`: the learned optimizer as a `keras.optimizers.Optimizer`.

A thin shell around the pure maths in `keras_velo.prefab` / `keras_velo.update`:
it holds theta and the `VeLOState` in Keras variables (one variable per
state field, per tensor), reads them, calls `prefab_update`, and writes the
results back. Works on JAX (also through `stateless_apply`), TensorFlow and
PyTorch.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_velo.accumulators import Accumulators
from keras_velo.loss_features import LossBuffer, loss_ema_decays
from keras_velo.prefab import (
    DEFAULT_MAX_TRAINING_STEPS,
    GradientAccumulation,
    plan_horizon,
    prefab_update,
)
from keras_velo.pretrained import resolve_weights
from keras_velo.theta import flatten_theta, leaf_name, unflatten_theta
from keras_velo.update import TensorState, VeLOState, init_tensor_state

_ACCUMULATOR_NAMES = Accumulators._fields

MISSING_LOSS_MESSAGE = (
    "VeLO needs the training loss of every step, and none was given. Pass it "
    "with `optimizer.apply(grads, variables, loss=loss)`, "
    "`optimizer.apply_gradients(zip(grads, variables), loss=loss)` or "
    "`optimizer.stateless_apply(opt_vars, grads, train_vars, loss=loss)`. "
    "Keras' built-in `model.fit()` does not hand the loss to optimizers."
)


def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be a positive integer (the number of training "
            f"steps), got {value!r} of type {type(value).__name__}. "
            f"Pass e.g. {name}=epochs * steps_per_epoch."
        )
    if value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer, got {value}. VeLO uses it "
            "for the fraction of training done; pass the number of updates "
            "you will run."
        )
    return int(value)


@keras.saving.register_keras_serializable(package="keras_velo")
class VeLO(keras.optimizers.Optimizer):
    """VeLO (Metz et al., 2022), the reference computation on any Keras backend.

    Every update needs the scalar training loss:

    ```python
    optimizer = keras_velo.VeLO(total_steps=1000)
    with tf.GradientTape() as tape:          # or jax.value_and_grad, torch autograd
        loss = loss_fn(y, model(x))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables, loss=loss)
    ```

    Args:
        total_steps: number of `apply` calls training will make. It sets
            VeLO's training-fraction input and the time scales of its loss
            features (the one hyper-parameter VeLO has).
        weights: VeLO's learned weights. `"velo"` (default): Google's
            published checkpoint, downloaded once and cached under
            `~/.keras/keras_velo`; a path to an official-format checkpoint
            (a folder holding `params`, or the file); a theta dict; or
            `None` for a random init from `seed` (for meta-training).
        weight_decay: coupled L2 as in the reference wrapper: adds
            `weight_decay * p` to each gradient and
            `weight_decay * sum(p**2)` to the loss VeLO sees (not Keras'
            decoupled decay). Honours `exclude_from_weight_decay`.
            The reference suggests ~1e-6.
        max_training_steps: beyond this horizon, ceil(total_steps /
            max_training_steps) consecutive gradients and losses are
            averaged into one VeLO update (the reference's default, 150,000).
        learning_rate: multiplies every VeLO step. 1.0 (default) is the
            reference; a schedule can rescale VeLO's own steps.
        seed: seed of the random init when `weights=None`.
        **kwargs: the base optimizer's keyword arguments (`clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, ...).

    State per tensor (shape S): momenta `[3, *S]`, rms `S`, factored second
    moments (or diagonal ones for rank < 2), and one 512-wide LSTM state row;
    plus the loss buffer and counters. theta is held in non-trainable
    variables too, so saved optimizer state carries the weights it ran with.
    """

    def __init__(
        self,
        total_steps,
        weights="velo",
        weight_decay=0.0,
        max_training_steps=DEFAULT_MAX_TRAINING_STEPS,
        learning_rate=1.0,
        seed=0,
        name="velo",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        total_steps = _check_positive_int("total_steps", total_steps)
        max_training_steps = _check_positive_int("max_training_steps", max_training_steps)
        if not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
            raise ValueError(
                f"`weight_decay` must be a float >= 0, got {weight_decay!r}."
            )
        self.total_steps = total_steps
        self.max_training_steps = max_training_steps
        self.weight_decay = float(weight_decay)
        self.seed = seed
        self.weights_spec = weights if isinstance(weights, str) or weights is None else None
        theta, self.weights_description = resolve_weights(weights, seed=seed)
        self._theta_init = flatten_theta(theta)
        self.horizon = plan_horizon(total_steps, max_training_steps)
        self._loss_given = False
        self.loss_variable = self.add_variable(
            (), initializer="zeros", dtype="float32", name="velo_loss"
        )

    # ------------------------------------------------------------------ state

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._theta_variables = {}
        for path, value in self._theta_init.items():
            variable = self.add_variable(
                value.shape, dtype="float32", name="theta_" + leaf_name(path).replace("/", "_").replace("~", "top")
            )
            variable.assign(value)
            self._theta_variables[path] = variable
        self._theta_init = None  # the variables own theta from here on

        decays = loss_ema_decays(self.horizon.velo_steps)
        self._iteration = self.add_variable((), dtype="int32", name="velo_iteration")
        self._num_steps = self.add_variable((), dtype="int32", name="velo_num_steps")
        self._num_steps.assign(self.horizon.velo_steps)
        self._loss_buffer = LossBuffer(
            means=self.add_variable((10,), name="loss_means"),
            running_min=self.add_variable((10,), name="loss_running_min"),
            decays=self.add_variable((10,), name="loss_decays"),
            iteration=self.add_variable((), dtype="int32", name="loss_iteration"),
        )
        self._loss_buffer.running_min.assign(np.full([10], 999999999999.0, np.float32))
        self._loss_buffer.decays.assign(decays)

        theta = unflatten_theta({p: v.numpy() for p, v in self._theta_variables.items()})
        self._tensor_states = []
        self._weight_decays = []
        for variable in variables:
            fresh = init_tensor_state(theta, tuple(variable.shape), variable.dtype)
            prefix = variable.path.replace("/", "_")
            slots = [
                None
                if value is None
                else self._add_filled(value, f"{prefix}_velo_{name}")
                for name, value in zip(_ACCUMULATOR_NAMES, fresh.accumulators)
            ]
            self._tensor_states.append(
                TensorState(
                    Accumulators(*slots),
                    self._add_filled(fresh.lstm_hidden, f"{prefix}_velo_lstm_hidden"),
                    self._add_filled(fresh.lstm_cell, f"{prefix}_velo_lstm_cell"),
                )
            )
            self._weight_decays.append(
                self.weight_decay if self._use_weight_decay(variable) else 0.0
            )
        self._accumulation = None
        if self.horizon.num_accumulated > 1:
            self._accumulation = GradientAccumulation(
                tuple(
                    self.add_variable(
                        tuple(v.shape), name=f"{v.path.replace('/', '_')}_velo_grad_sum"
                    )
                    for v in variables
                ),
                self.add_variable((), name="velo_loss_sum"),
                self.add_variable((), dtype="int32", name="velo_accumulated_calls"),
            )

    def _add_filled(self, value, name):
        variable = self.add_variable(value.shape, dtype=value.dtype, name=name)
        if np.any(value):
            variable.assign(value)
        return variable

    @property
    def theta(self):
        """VeLO's weights as a nested dict of numpy arrays (after `build`)."""
        return unflatten_theta({p: v.numpy() for p, v in self._theta_variables.items()})

    def velo_state(self):
        """The current `VeLOState` as numpy arrays, tensors in build order."""
        return keras.tree.map_structure(
            lambda v: None if v is None else ops.convert_to_numpy(v.value),
            self._state_variables(range(len(self._tensor_states))),
        )

    # ------------------------------------------------------------- entry points

    def apply(self, grads, trainable_variables=None, loss=None):
        """Applies one VeLO update; `loss` (the scalar training loss) is required."""
        if trainable_variables is not None:
            trainable_variables = list(trainable_variables)
            if len(grads) != len(trainable_variables):
                raise ValueError(
                    f"Got {len(grads)} gradients for {len(trainable_variables)} "
                    "variables; pass exactly one gradient per variable."
                )
        if loss is None and not self._loss_given:
            raise ValueError(MISSING_LOSS_MESSAGE)
        if loss is not None:
            self.assign(self.loss_variable, ops.cast(ops.reshape(loss, ()), "float32"))
        outer, self._loss_given = self._loss_given, True
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._loss_given = outer

    def apply_gradients(self, grads_and_vars, loss=None):
        """`apply` on `(gradient, variable)` pairs; `loss` is required."""
        grads, trainable_variables = zip(*grads_and_vars)
        self.apply(grads, trainable_variables, loss=loss)
        return self._iterations

    def stateless_apply(self, optimizer_variables, grads, trainable_variables, loss=None):
        """Pure (JAX) form of `apply`: returns `(trainable_values, optimizer_values)`.

        `loss` may be a traced value, so this works under `jax.jit`.
        """
        if loss is None and not self._loss_given:
            raise ValueError(MISSING_LOSS_MESSAGE)
        if loss is not None:
            index = self._get_optimizer_variable_index(self.loss_variable)
            optimizer_variables = list(optimizer_variables)
            optimizer_variables[index] = ops.cast(ops.reshape(loss, ()), "float32")
        outer, self._loss_given = self._loss_given, True
        try:
            return super().stateless_apply(optimizer_variables, grads, trainable_variables)
        finally:
            self._loss_given = outer

    def _get_optimizer_variable_index(self, variable):
        for i, v in enumerate(self.variables):
            if v is variable:
                return i
        raise KeyError(variable.path)

    def _apply_weight_decay(self, variables):
        """No-op: VeLO's weight decay is coupled and applied in `prefab_update`."""

    # ------------------------------------------------------------------ update

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "torch":
            import torch

            with torch.no_grad():
                return self._velo_update_step(grads, trainable_variables, learning_rate)
        return self._velo_update_step(grads, trainable_variables, learning_rate)

    def _velo_update_step(self, grads, trainable_variables, learning_rate):
        indices = [self._get_variable_index(v) for v in trainable_variables]
        theta = unflatten_theta({p: v.value for p, v in self._theta_variables.items()})
        state_vars = self._state_variables(indices)
        accumulation_vars = None
        if self._accumulation is not None:
            accumulation_vars = GradientAccumulation(
                tuple(self._accumulation.grad_sums[i] for i in indices),
                self._accumulation.loss_sum,
                self._accumulation.count,
            )
        read = lambda tree: keras.tree.map_structure(  # noqa: E731
            lambda v: None if v is None else v.value, tree
        )
        new_params, new_state, new_accumulation, _ = prefab_update(
            theta,
            read(state_vars),
            [v.value for v in trainable_variables],
            list(grads),
            self.loss_variable.value,
            weight_decays=[self._weight_decays[i] for i in indices],
            num_accumulated=self.horizon.num_accumulated,
            accumulation=read(accumulation_vars),
            step_scale=ops.cast(learning_rate, "float32"),
        )
        for variable, value in zip(trainable_variables, new_params):
            self.assign(variable, value)
        self._assign_tree(state_vars, new_state)
        if accumulation_vars is not None:
            self._assign_tree(accumulation_vars, new_accumulation)

    def _state_variables(self, indices):
        return VeLOState(
            iteration=self._iteration,
            num_steps=self._num_steps,
            loss_buffer=self._loss_buffer,
            tensors=tuple(self._tensor_states[i] for i in indices),
        )

    def _assign_tree(self, variables, values):
        for variable, value in zip(keras.tree.flatten(variables), keras.tree.flatten(values)):
            if variable is not None and variable is not self._num_steps:
                self.assign(variable, value)

    # ------------------------------------------------------------------ config

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "total_steps": self.total_steps,
                "weights": self.weights_spec,
                "weight_decay": self.weight_decay,
                "max_training_steps": self.max_training_steps,
                "seed": self.seed,
            }
        )
        return config
