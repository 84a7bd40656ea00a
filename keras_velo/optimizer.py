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

from keras_velo.accumulators import Accumulators, accumulator_shapes
from keras_velo.loss_features import RUNNING_MIN_INIT, LossBuffer, loss_ema_decays
from keras_velo.prefab import (
    DEFAULT_MAX_TRAINING_STEPS,
    GradientAccumulation,
    plan_horizon,
    prefab_update,
)
from keras_velo.health import check_horizon, check_skips
from keras_velo.pretrained import PUBLISHED_WEIGHTS, load_published_weights, resolve_weights
from keras_velo.theta import (
    CheckpointError,
    flatten_theta,
    leaf_name,
    theta_shapes,
    unflatten_theta,
)
from keras_velo.update import TensorState, VeLOState

_ACCUMULATOR_NAMES = Accumulators._fields
# VeLO's state stays float32 whatever the parameters' dtype (the reference
# stores it in the parameter dtype; identical for float32 parameters).
STATE_DTYPE = "float32"
DEFAULT_MAX_CONSECUTIVE_SKIPS = 100

MISSING_LOSS_MESSAGE = (
    "VeLO needs the training loss of every step, and none was given. Pass it "
    "with `optimizer.apply(grads, variables, loss=loss)`, "
    "`optimizer.apply_gradients(zip(grads, variables), loss=loss)` or "
    "`optimizer.stateless_apply(opt_vars, grads, train_vars, loss=loss)`. "
    "Keras' `model.fit()` does not hand the loss to optimizers: call "
    "`keras_velo.attach(model)` after `model.compile(...)` (and again after "
    "`keras.saving.load_model`)."
)


class _Constant(keras.initializers.Initializer):
    """Initializer returning a fixed numpy array (not serialised: state only)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __call__(self, shape, dtype=None):
        return ops.cast(ops.reshape(ops.convert_to_tensor(self.value), shape), dtype)


def _is_concrete(value):
    """True outside tracing (eager TF/torch/JAX), where values can be read."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(value, jax.core.Tracer)
    return True


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
        total_steps=None,
        weights="velo",
        weight_decay=0.0,
        max_training_steps=DEFAULT_MAX_TRAINING_STEPS,
        learning_rate=1.0,
        seed=0,
        time_budget=None,
        max_consecutive_skips=DEFAULT_MAX_CONSECUTIVE_SKIPS,
        name="velo",
        **kwargs,
    ):
        defer_weights = kwargs.pop("_defer_weights", False)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if total_steps is not None:
            total_steps = _check_positive_int("total_steps", total_steps)
        max_training_steps = _check_positive_int("max_training_steps", max_training_steps)
        max_consecutive_skips = _check_positive_int(
            "max_consecutive_skips", max_consecutive_skips
        )
        if not isinstance(weight_decay, numbers.Real) or weight_decay < 0:
            raise ValueError(
                f"`weight_decay` must be a float >= 0, got {weight_decay!r}."
            )
        if time_budget is not None and (
            not isinstance(time_budget, numbers.Real) or time_budget <= 0
        ):
            raise ValueError(
                f"`time_budget` must be a positive number of seconds, got {time_budget!r}."
            )
        self.total_steps = total_steps
        self.max_training_steps = max_training_steps
        self.weight_decay = float(weight_decay)
        self.seed = seed
        self.time_budget = None if time_budget is None else float(time_budget)
        self.max_consecutive_skips = max_consecutive_skips
        self.weights_spec = weights if isinstance(weights, str) or weights is None else None
        self._theta_init, self._theta_error = None, None
        if defer_weights:
            # Restoring (`from_config`): theta normally comes back with the
            # saved optimizer variables, so a failure here is only fatal if
            # nothing restores it before the first update.
            try:
                if isinstance(weights, str) and weights in PUBLISHED_WEIGHTS:
                    # Never download while restoring: the saved state has theta.
                    theta = load_published_weights(weights, download=False)
                    self.weights_description = weights
                else:
                    theta, self.weights_description = resolve_weights(weights, seed=seed)
                self._theta_init = flatten_theta(theta)
            except (CheckpointError, ValueError, OSError) as error:
                self._theta_error = error
                self.weights_description = f"not loaded ({weights!r}): {error}"
        else:
            theta, self.weights_description = resolve_weights(weights, seed=seed)
            self._theta_init = flatten_theta(theta)
        self.horizon = None if total_steps is None else plan_horizon(
            total_steps, max_training_steps
        )
        self._loss_given = False
        self.loss_variable = self.add_variable(
            (), initializer="zeros", dtype="float32", name="velo_loss"
        )
        self.fraction_variable = self.add_variable(
            (), initializer="zeros", dtype="float32", name="velo_time_fraction"
        )

    # ------------------------------------------------------------------ state

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        # Initial values go in through initializers, never `assign`: on
        # TensorFlow, build may run inside the first traced train step,
        # where an assign would become part of every step.
        theta = self._theta_init or {p: None for p in theta_shapes()}
        self._theta_variables = {
            path: self._new_variable(
                theta_shapes()[path] if value is None else value.shape,
                "theta_" + leaf_name(path).replace("/", "_").replace("~", "top"),
                value,
            )
            for path, value in theta.items()
        }
        self._theta_init = None  # the variables own theta from here on

        velo_steps = None if self.horizon is None else self.horizon.velo_steps
        self._iteration = self._new_variable((), "velo_iteration", dtype="int32")
        self._num_steps = self._new_variable(
            (), "velo_num_steps", None if velo_steps is None else np.int32(velo_steps), "int32"
        )
        self._loss_buffer = LossBuffer(
            means=self._new_variable((10,), "loss_means"),
            running_min=self._new_variable(
                (10,), "loss_running_min", np.full([10], RUNNING_MIN_INIT, np.float32)
            ),
            decays=self._new_variable(
                (10,), "loss_decays", None if velo_steps is None else loss_ema_decays(velo_steps)
            ),
            iteration=self._new_variable((), "loss_iteration", dtype="int32"),
        )
        self._skipped_steps = self._new_variable((), "velo_skipped_steps", dtype="int32")
        self._consecutive_skips = self._new_variable((), "velo_consecutive_skips", dtype="int32")
        self._last_loss_features = self._new_variable((9,), "velo_last_loss_features")
        self._last_fraction = self._new_variable((), "velo_last_fraction_trained")
        self._last_lr_mult = self._new_variable((len(variables),), "velo_last_lr_mult")

        init_state = theta[("lstm_init_state", "hidden")], theta[("lstm_init_state", "cell")]
        lstm_width = theta_shapes()[("lstm_init_state", "hidden")][1] if init_state[0] is None \
            else init_state[0].shape[1]
        self._tensor_states = []
        self._weight_decays = []
        for variable in variables:
            prefix = variable.path.replace("/", "_")
            slots = [
                None if shape is None else self._new_variable(shape, f"{prefix}_velo_{name}")
                for name, shape in zip(_ACCUMULATOR_NAMES, accumulator_shapes(variable.shape))
            ]
            hidden, cell = (
                self._new_variable(
                    (lstm_width,), f"{prefix}_velo_lstm_{kind}", None if init is None else init[0]
                )
                for kind, init in zip(("hidden", "cell"), init_state)
            )
            self._tensor_states.append(TensorState(Accumulators(*slots), hidden, cell))
            self._weight_decays.append(
                self.weight_decay if self._use_weight_decay(variable) else 0.0
            )
        self._accumulation = None
        if self.horizon is not None and self.horizon.num_accumulated > 1:
            self._accumulation = GradientAccumulation(
                tuple(
                    self._new_variable(tuple(v.shape), f"{v.path.replace('/', '_')}_velo_grad_sum")
                    for v in variables
                ),
                self._new_variable((), "velo_loss_sum"),
                self._new_variable((), "velo_accumulated_calls", dtype="int32"),
            )

    def _new_variable(self, shape, name, value=None, dtype=STATE_DTYPE):
        """An optimizer variable starting at `value` (numpy) or zeros."""
        initializer = "zeros" if value is None else _Constant(value)
        return self.add_variable(tuple(shape), initializer=initializer, dtype=dtype, name=name)

    def _assign_horizon(self):
        self._num_steps.assign(self.horizon.velo_steps)
        self._loss_buffer.decays.assign(loss_ema_decays(self.horizon.velo_steps))

    def set_total_steps(self, total_steps):
        """Sets the horizon after construction (e.g. inferred by `fit`), before training.

        Only allowed while VeLO has not updated yet, and only for horizons
        that need no accumulation unless it was planned at construction.
        """
        total_steps = _check_positive_int("total_steps", total_steps)
        horizon = plan_horizon(total_steps, self.max_training_steps)
        if self.built and int(ops.convert_to_numpy(self._iteration.value)) > 0:
            raise ValueError(
                "VeLO's horizon can only be set before its first update; this "
                f"optimizer has already run {int(ops.convert_to_numpy(self._iteration.value))} updates "
                f"with total_steps={self.total_steps}."
            )
        planned = 1 if self.horizon is None else self.horizon.num_accumulated
        if self.built and horizon.num_accumulated != planned:
            raise ValueError(
                f"total_steps={total_steps} exceeds max_training_steps="
                f"{self.max_training_steps}, which needs gradient accumulation that "
                "must be planned when the optimizer is built: pass "
                f"VeLO(total_steps={total_steps}) explicitly."
            )
        self.total_steps, self.horizon = total_steps, horizon
        if self.built:
            self._assign_horizon()

    @property
    def theta(self):
        """VeLO's weights as a nested dict of numpy arrays (after `build`)."""
        return unflatten_theta(
            {p: ops.convert_to_numpy(v.value) for p, v in self._theta_variables.items()}
        )

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
        self._check_ready()
        if loss is not None:
            self.assign(self.loss_variable, ops.cast(ops.reshape(loss, ()), "float32"))
        outer, self._loss_given = self._loss_given, True
        try:
            result = super().apply(grads, trainable_variables)
        finally:
            self._loss_given = outer
        self._check_health_if_eager()
        return result

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
        self._check_ready()
        if loss is not None:
            index = self._get_optimizer_variable_index(self.loss_variable)
            optimizer_variables = list(optimizer_variables)
            optimizer_variables[index] = ops.cast(ops.reshape(loss, ()), "float32")
        outer, self._loss_given = self._loss_given, True
        try:
            return super().stateless_apply(optimizer_variables, grads, trainable_variables)
        finally:
            self._loss_given = outer

    def _check_ready(self):
        if self.horizon is None:
            raise ValueError(
                "VeLO does not know how many steps training will run: pass "
                "VeLO(total_steps=...), or train with `model.fit` after "
                "`keras_velo.attach(model)`, which infers it from epochs x steps."
            )
        if self._theta_error is not None:
            raise CheckpointError(
                "VeLO was restored from a config without its saved variables, "
                f"and its weights could not be loaded: {self._theta_error}"
            ) from self._theta_error

    def _check_health_if_eager(self):
        """Warns on skipped updates and raises after too many in a row (eager only).

        Compiled training loops (fit) are watched by `keras_velo.attach`'s
        callback instead, from the values the train step logs.
        """
        if not self.built or not _is_concrete(self._consecutive_skips.value):
            return
        check_skips(
            int(ops.convert_to_numpy(self._consecutive_skips.value)),
            int(ops.convert_to_numpy(self._skipped_steps.value)),
            self.max_consecutive_skips,
        )
        check_horizon(self, int(ops.convert_to_numpy(self._iteration.value)))

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
        fraction = self.fraction_variable.value if self.time_budget is not None else None
        new_params, new_state, new_accumulation, diagnostics = prefab_update(
            theta,
            read(state_vars),
            [v.value for v in trainable_variables],
            list(grads),
            self.loss_variable.value,
            weight_decays=[self._weight_decays[i] for i in indices],
            num_accumulated=self.horizon.num_accumulated,
            accumulation=read(accumulation_vars),
            step_scale=ops.cast(learning_rate, "float32"),
            fraction_trained=fraction,
        )
        for variable, value in zip(trainable_variables, new_params):
            self.assign(variable, value)
        self._assign_tree(state_vars, new_state)
        if accumulation_vars is not None:
            self._assign_tree(accumulation_vars, new_accumulation)
        self._record(diagnostics, indices)

    def _record(self, diagnostics, indices):
        """Keeps the last update's diagnostics and the skip counters in variables."""
        skipped = ops.cast(diagnostics.skipped, "int32")
        self.assign(self._skipped_steps, self._skipped_steps.value + skipped)
        self.assign(self._consecutive_skips, (self._consecutive_skips.value + 1) * skipped)
        self.assign(self._last_fraction, diagnostics.fraction_trained)
        self.assign(self._last_loss_features, diagnostics.loss_features)
        lr_mult = diagnostics.lr_mult
        if len(indices) != len(self._tensor_states):
            old = self._last_lr_mult.value
            by_index = dict(zip(indices, range(len(indices))))
            lr_mult = ops.stack(
                [lr_mult[by_index[i]] if i in by_index else old[i] for i in range(old.shape[0])]
            )
        self.assign(self._last_lr_mult, lr_mult)

    def _state_variables(self, indices):
        """`VeLOState` of variables for the tensors at `indices`.

        Rebuilt from the stored pieces each time: TensorFlow's attribute
        tracking wraps tuples stored on the optimizer in proxies that
        `keras.tree` does not always see through.
        """

        def tensor_state(stored):
            return TensorState(
                Accumulators(*stored.accumulators), stored.lstm_hidden, stored.lstm_cell
            )

        return VeLOState(
            iteration=self._iteration,
            num_steps=self._num_steps,
            loss_buffer=LossBuffer(*self._loss_buffer),
            tensors=tuple(tensor_state(self._tensor_states[i]) for i in indices),
        )

    def _assign_tree(self, variables, values):
        for variable, value in zip(keras.tree.flatten(variables), keras.tree.flatten(values)):
            if variable is not None and variable is not self._num_steps:
                self.assign(variable, value)

    def load_own_variables(self, store):
        super().load_own_variables(store)
        self._theta_error = None  # theta came back with the saved variables

    @property
    def skipped_steps(self):
        """Updates dropped so far because the loss or a gradient was not finite."""
        return int(ops.convert_to_numpy(self._skipped_steps.value))

    def diagnostics(self):
        """What VeLO saw at its last update, as plain Python values.

        `fraction_trained`, `loss_features` (9 floats), `lr_mult` (one per
        variable, in build order), `iteration`, `skipped_steps`,
        `consecutive_skips`, `variable_paths`.
        """
        value = lambda v: ops.convert_to_numpy(v.value)  # noqa: E731
        return {
            "fraction_trained": float(value(self._last_fraction)),
            "loss_features": value(self._last_loss_features).tolist(),
            "lr_mult": value(self._last_lr_mult).tolist(),
            "iteration": int(value(self._iteration)),
            "skipped_steps": int(value(self._skipped_steps)),
            "consecutive_skips": int(value(self._consecutive_skips)),
            "variable_paths": [v.path for v in self._trainable_variables],
        }

    # ------------------------------------------------------------------ config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuilds VeLO; theta is normally restored with the saved variables."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(
                config["learning_rate"], custom_objects=custom_objects
            )
        return cls(**config, _defer_weights=True)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "total_steps": self.total_steps,
                "weights": self.weights_spec,
                "weight_decay": self.weight_decay,
                "max_training_steps": self.max_training_steps,
                "seed": self.seed,
                "time_budget": self.time_budget,
                "max_consecutive_skips": self.max_consecutive_skips,
            }
        )
        return config
