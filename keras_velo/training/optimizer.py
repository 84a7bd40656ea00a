"""`VeLO`: the learned optimizer as a `keras.optimizers.Optimizer`.

The Keras shell around the packed update (`keras_velo.packed.prefab`): the
class reads as the steps of an update and delegates each to its module:
its arguments (`arguments`), theta from `weights=` (`keras_velo.weights`),
theta and the packed state in Keras variables (`state_variables`, which
also records each update's diagnostics), the checks before an update
(`guards`), the update function, compiled on PyTorch (`update_function`),
the health checks after it (`health`) and saving (`saving`). Works on JAX
(also through `stateless_apply`), TensorFlow and PyTorch.
"""

import contextlib

import keras
import numpy as np
from keras import ops

from keras_velo.maths.theta import flatten_theta, unflatten_theta
from keras_velo.packed.packing import packed_layout
from keras_velo.packed.prefab import DEFAULT_MAX_TRAINING_STEPS, Horizon, plan_horizon
from keras_velo.packed.state_view import tensor_states, unpacked_tensor_states
from keras_velo.training import arguments, guards, loss_scale_saving, saving, tf_distribute
from keras_velo.training.health import check_health_if_eager
from keras_velo.training.state_variables import StateVariables
from keras_velo.training.sharded_update import NO_ACCUMULATION_MESSAGE, sharded_layouts
from keras_velo.training.update_function import outside_torch_compile, update_function
from keras_velo.weights.pretrained import resolve_saved_weights, resolve_weights

DEFAULT_MAX_CONSECUTIVE_SKIPS = 100


def find_velo(optimizer):
    """The `VeLO` instance inside `optimizer` (itself or a wrapper's inner one), or None."""
    while optimizer is not None and not isinstance(optimizer, VeLO):
        optimizer = getattr(optimizer, "inner_optimizer", None)
    return optimizer


@keras.saving.register_keras_serializable(package="keras_velo")
class VeLO(keras.optimizers.Optimizer):
    """VeLO (Metz et al., 2022), the reference computation on any Keras backend.

    VeLO reads the training loss at every update; Keras never hands it to
    an optimizer, so there are two ways to feed it.

    With `fit`, pass `keras_velo.VeLOCallback()` (every batch's loss goes to
    its own update, and `total_steps` may be left out):

    ```python
    model.compile(optimizer=keras_velo.VeLO(weights="bundled"),
                  loss="sparse_categorical_crossentropy", jit_compile=True)
    model.fit(x, y, batch_size=128, epochs=5, callbacks=[keras_velo.VeLOCallback()])
    ```

    (`keras_velo.attach(model)` does the same for every `fit` and
    `train_on_batch` of one model instance, for code you cannot add a
    callback to.) In a custom training loop, pass the loss to the update:

    ```python
    optimizer = keras_velo.VeLO(total_steps=1000, weights="bundled")
    with tf.GradientTape() as tape:          # or jax.value_and_grad, torch autograd
        loss = loss_fn(y, model(x))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables, loss=loss)
    ```

    Args:
        total_steps: number of updates training will make: VeLO's one
            hyper-parameter (its training-fraction input and the time
            scales of its loss features; a sensitive one, Rezk et al.
            2023). `None`: `fit` with `VeLOCallback` sets it at the start
            of the first `fit` to epochs x batches per epoch; a custom loop
            must pass it (or `time_budget`).
        weights: VeLO's learned weights. `"velo"` (default): Google's
            published checkpoint, downloaded once and cached under
            `~/.keras/keras_velo` (needs the internet the first time);
            `"bundled"`: the weights keras-velo ships (no download; see
            the README's model card); a path to an official-format
            checkpoint (a folder holding `params`, or the file); a theta
            dict; or `None` for a random init from `seed` (meta-training).
        weight_decay: coupled L2 as in the reference wrapper: adds
            `weight_decay * p` to each gradient and
            `weight_decay * sum(p**2)` to the loss VeLO sees (not Keras'
            decoupled decay). Honours `exclude_from_weight_decay`.
            The reference suggests ~1e-6; default 0.
        max_training_steps: beyond this horizon, ceil(total_steps /
            max_training_steps) consecutive gradients and losses are
            averaged into one VeLO update (the reference's default, 150,000).
        learning_rate: multiplies every VeLO step. 1.0 (default) is the
            reference; a float below 1 damps VeLO, a schedule rescales its
            own steps over time.
        seed: seed of the random init when `weights=None`.
        time_budget: seconds. Instead of steps, VeLO's training fraction is
            training seconds so far / `time_budget` (set before every batch
            by `VeLOCallback`, or by you with `set_training_seconds`), and
            `fit` stops when it is spent. `total_steps` is still needed for
            the loss features' time scales; `fit` infers it as usual.
        max_consecutive_skips: a step whose loss or gradients are not
            finite is skipped (parameters and VeLO's state unchanged) with
            a warning; after this many in a row training stops with
            `keras_velo.NonFiniteTrainingError`. Default 100.
        compile_update: JAX and TensorFlow compile the update with the
            train step; an eager `apply` (a custom loop) runs it as one
            `jax.jit` / `tf.function` program, compiled at the first call,
            unless this is `False` (op by op, for debugging). PyTorch:
            `True`: the update runs as one
            `torch.compile` program, built at the first update (about 30 s
            on 2 CPU cores, once per model and process), several times
            faster than eager on large models; failing to compile is an
            error. `False`: eager. `"auto"` (default): compiles when
            `total_steps` and the parameter count promise to win back
            twice the compile time (ResNet-50 from 24 steps, a
            1M-parameter MLP from ~500, a 55k one from ~3,700), and if
            compiling fails it warns and runs eagerly.
        name: the optimizer's name (Keras variable paths).
        **kwargs: the base optimizer's keyword arguments (`clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`,
            `gradient_accumulation_steps`, `loss_scale_factor`, ...).

    State: for each parameter, momenta (3), rms and, for tensors of rank
    < 2, diagonal second moments (3); factored second moments per row and
    column of the others; one 512-wide LSTM state row per tensor; the loss
    buffer and counters. All tensors share a few packed variables
    (`keras_velo.packed.packing`). theta is held in non-trainable variables too,
    so saved optimizer state carries the weights it ran with.
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
        compile_update="auto",
        name="velo",
        **kwargs,
    ):
        learning_rate = arguments.step_multiplier("learning_rate", learning_rate)
        seed = arguments.integer_seed("seed", seed)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if total_steps is not None:
            total_steps = arguments.positive_int("total_steps", total_steps)
        self.max_training_steps = arguments.positive_int("max_training_steps", max_training_steps)
        self.max_consecutive_skips = arguments.positive_int(
            "max_consecutive_skips", max_consecutive_skips
        )
        self.weight_decay = arguments.non_negative_float("weight_decay", weight_decay)
        self.time_budget = arguments.optional_positive_seconds("time_budget", time_budget)
        self.seed = seed
        self.compile_update = arguments.compile_choice("compile_update", compile_update)
        self._update_functions = {}
        self._theta_error = None
        if isinstance(weights, saving.SavedWeights):
            weights = weights.spec
            theta, self.weights_description, self._theta_error = resolve_saved_weights(
                weights, seed=seed
            )
        else:
            theta, self.weights_description = resolve_weights(weights, seed=seed)
        self.weights_spec = weights if isinstance(weights, str) or weights is None else None
        self._theta_init = None if theta is None else flatten_theta(theta)
        self.horizon = None if total_steps is None else plan_horizon(
            total_steps, self.max_training_steps
        )
        self._loss_given = tf_distribute.PerThread(False)
        self._loss_shares = tf_distribute.PerThread(None)  # under tf.distribute
        self.loss_variable = self.add_variable(
            (), initializer="zeros", dtype="float32", name="velo_loss"
        )
        self.fraction_variable = self.add_variable(
            (), initializer="zeros", dtype="float32", name="velo_time_fraction"
        )
        self._variables_before_build = len(self.variables)
        self._pending_state = None  # loaded before build: restored by `build`

    # ------------------------------------------------------------------ state

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._layout = packed_layout([tuple(v.shape) for v in variables])
        self._sharded = sharded_layouts(variables)  # ModelParallel: state laid out per tensor
        self._velo = StateVariables(
            self,
            self._layout,
            self._theta_init,
            None if self.horizon is None else self.horizon.velo_steps,
            1 if self.horizon is None else self.horizon.num_accumulated,
            layouts=self._sharded,
        )
        self._theta_init = None  # the variables own theta from here on
        self._weight_decays = [
            self.weight_decay if self._use_weight_decay(v) else 0.0 for v in variables
        ]
        if self._pending_state is not None:  # `load_weights` came before the build
            pending, self._pending_state = self._pending_state, None
            self.load_own_variables(pending)

    def set_total_steps(self, total_steps):
        """Sets the horizon after construction (e.g. inferred by `fit`), before training.

        Only allowed while VeLO has not updated yet, and only for horizons
        that need no accumulation unless it was planned at construction.
        """
        total_steps = arguments.positive_int("total_steps", total_steps)
        horizon = plan_horizon(total_steps, self.max_training_steps)
        if self.built:
            done = self._velo.updates_done()
            if done > 0:
                raise ValueError(
                    "VeLO's horizon can only be set before its first update; this "
                    f"optimizer has already run {done} updates with "
                    f"total_steps={self.total_steps}. To train longer on the same "
                    "schedule's end, call optimizer.extend_total_steps(extra_steps); "
                    "for a new schedule, compile with a new VeLO(total_steps=...)."
                )
        planned = 1 if self.horizon is None else self.horizon.num_accumulated
        if self.built and horizon.num_accumulated != planned:
            raise ValueError(
                f"total_steps={total_steps} exceeds max_training_steps="
                f"{self.max_training_steps}, which needs gradient accumulation that "
                "must be planned when the optimizer is built: pass "
                f"VeLO(total_steps={total_steps}) explicitly."
            )
        self._set_horizon(horizon)

    @property
    def total_steps(self):
        """The updates training will make (None until set or inferred by `fit`).

        Assigning it is `set_total_steps(value)`: honoured before the first
        update, refused with an error after it.
        """
        horizon = getattr(self, "horizon", None)
        return None if horizon is None else horizon.total_steps

    @total_steps.setter
    def total_steps(self, value):
        self.set_total_steps(value)

    def _set_horizon(self, horizon):
        self.horizon = horizon
        if self.built:
            self._velo.set_horizon_steps(horizon.velo_steps)

    def adopt_restored_horizon(self):
        """Makes `total_steps` the horizon held in VeLO's (restored) state; returns it.

        After `load_weights` (say by `keras.callbacks.BackupAndRestore`), the
        state carries the horizon of the run it was saved from, which wins
        over one inferred or passed before the restore. No-op (returns
        `total_steps`) before the first update.
        """
        if not self.built or self._velo.updates_done() == 0:
            return self.total_steps
        velo_steps = self._velo.horizon_steps()
        if self.horizon is not None and velo_steps == self.horizon.velo_steps:
            return self.total_steps
        accumulated = 1 if self.horizon is None else self.horizon.num_accumulated
        self.horizon = Horizon(velo_steps * accumulated, accumulated, velo_steps)
        return self.total_steps

    def extend_total_steps(self, extra_steps):
        """Grows the horizon by `extra_steps` mid-run; returns whether it could.

        For runs that turn out longer than planned while under way (Keras
        replaying a partly trained epoch after `BackupAndRestore`). VeLO's
        training fraction shrinks from `t/T` to `t/(T + extra)`; the loss
        averages take the decays of the longer horizon. Not possible when
        the longer run would need a different gradient accumulation
        (`max_training_steps`): returns False, leaving it unchanged.
        """
        extra_steps = arguments.positive_int("extra_steps", extra_steps)
        if self.horizon is None:
            return False
        horizon = plan_horizon(self.total_steps + extra_steps, self.max_training_steps)
        if horizon.num_accumulated != self.horizon.num_accumulated:
            return False
        self._set_horizon(horizon)
        return True

    @property
    def theta(self):
        """VeLO's weights as a nested dict of numpy arrays (after `build`)."""
        return unflatten_theta(
            {p: ops.convert_to_numpy(v.value) for p, v in self._velo.theta.items()}
        )

    def velo_state(self):
        """The current state per tensor (`state_view.TensorwiseState`, numpy), in build order."""
        state = self._velo.read(self._velo.state)
        if self._sharded is None:
            return tensor_states(state, self._layout.shapes)
        return unpacked_tensor_states(state)

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
        guards.require_loss(loss, self._loss_given.get())
        guards.check_ready(self.horizon, self._theta_error)
        if loss is not None:
            self.feed_loss(loss)
        with self.loss_fed_by_train_step() as outer:
            result = super().apply(grads, trainable_variables)
        if not outer and self.built:  # called by the user; in fit, VeLOCallback reports (once)
            check_health_if_eager(self, self.health_variables())
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
        guards.require_loss(loss, self._loss_given.get())
        guards.check_ready(self.horizon, self._theta_error)
        if loss is not None:
            index = self._get_optimizer_variable_index(self.loss_variable)
            optimizer_variables = list(optimizer_variables)
            optimizer_variables[index] = ops.cast(ops.reshape(loss, ()), "float32")
        with self.loss_fed_by_train_step():
            return super().stateless_apply(optimizer_variables, grads, trainable_variables)

    @contextlib.contextmanager
    def loss_fed_by_train_step(self):
        """Within it, updates take the loss already in `loss_variable`.

        Yields whether one was already fed by an outer caller (a train step).
        """
        outer = self._loss_given.get()
        self._loss_given.set(True)
        try:
            yield outer
        finally:
            self._loss_given.set(outer)

    def feed_loss(self, loss):
        """Hands VeLO the loss for the next update (a train step calls it).

        In a `tf.distribute` replica, `loss` is this replica's share (Keras
        divides it by the number of replicas); the update sums the shares.
        """
        loss = ops.stop_gradient(ops.reshape(ops.cast(ops.convert_to_tensor(loss), "float32"), ()))
        if tf_distribute.replica_context() is not None:
            self._loss_shares.set(loss)
        else:
            self.assign(self.loss_variable, loss)

    def set_training_seconds(self, seconds):
        """Time-budget mode: training fraction = min(seconds / time_budget, 1).

        The one place the fraction is computed (`VeLOCallback` and the
        evaluation runner call it). Clamped at 1: past its budget VeLO is
        told training is over rather than a fraction it never saw.
        """
        if self.time_budget is None:
            raise ValueError(
                "set_training_seconds needs VeLO(time_budget=seconds); this "
                "optimizer counts steps (total_steps)."
            )
        fraction = min(max(float(seconds), 0.0) / self.time_budget, 1.0)
        self.fraction_variable.assign(np.float32(fraction))

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
            return outside_torch_compile()(
                self._velo_update_step, grads, trainable_variables, learning_rate
            )
        return self._velo_update_step(grads, trainable_variables, learning_rate)

    def _velo_update_step(self, grads, trainable_variables, learning_rate):
        context = tf_distribute.replica_context()
        if context is None:
            return self._velo_update(grads, trainable_variables, learning_rate)
        loss_share = self._loss_shares.get()
        self._loss_shares.set(None)
        if loss_share is None:  # fed before the strategy ran (a plain assign)
            loss_share = self.loss_variable.value / context.num_replicas_in_sync

        def update(grads, loss):
            self.assign(self.loss_variable, loss)
            self._velo_update(grads, trainable_variables, learning_rate)

        tf_distribute.update_once_for_all_replicas(context, update, list(grads), loss_share)

    def _velo_update(self, grads, trainable_variables, learning_rate):
        """One `prefab_update` on every tensor VeLO was built for.

        Tensors left out of this call (no gradient) keep their values and
        state, and are left out of VeLO's cross-tensor max.
        """
        velo = self._velo
        indices = [self._get_variable_index(v) for v in trainable_variables]
        all_grads = [None] * len(self._trainable_variables)
        for i, grad in zip(indices, grads):
            all_grads[i] = grad
        active = None if len(set(indices)) == len(all_grads) else tuple(
            g is not None for g in all_grads
        )
        key = (active, self.horizon)
        if self._sharded is not None and self.horizon.num_accumulated > 1:
            guards.fail(ValueError(NO_ACCUMULATION_MESSAGE))
        if key not in self._update_functions:
            self._update_functions[key] = update_function(
                self._layout, self._weight_decays, self.horizon, active, self.compile_update,
                sharded=self._sharded is not None,
            )
        new_params, new_state, new_accumulation, diagnostics = self._update_functions[key](
            velo.theta_values(),
            velo.read(velo.state),
            [v.value for v in self._trainable_variables],
            all_grads,
            self.loss_variable.value,
            accumulation=velo.read(velo.accumulation),
            step_scale=ops.cast(learning_rate, "float32"),
            fraction_trained=(self.fraction_variable.value if self.time_budget is not None
                              else None),
        )
        for i in indices:
            self.assign(self._trainable_variables[i], new_params[i])
        velo.assign(velo.state, new_state)
        if velo.accumulation is not None:
            velo.assign(velo.accumulation, new_accumulation)
        velo.record(diagnostics, active, self.loss_variable.value)

    # ------------------------------------------------------------------ saving

    def save_own_variables(self, store):
        """Keras' saving; the bundled theta is written as a fingerprint (`saving`)."""
        saving.save_variables(
            store, self.variables, self._velo.theta if self.built else None,
            by_name=saving.travels_by_name(self.weights_spec), save_all=super().save_own_variables,
        )

    def load_own_variables(self, store):
        """Keras' loading; a theta saved by name is the shipped theta with its fingerprint.

        Before VeLO is built (`model.load_weights` right after `compile`, as
        a restart from `ModelCheckpoint(save_weights_only=True)` does), the
        saved variables are kept and restored by `build`, before the first
        update, so training continues as the saved run would have.
        """
        if not self.built and len(store.keys()) > self._variables_before_build:
            saving.saved_shipped_name(store)  # a fingerprint no shipped theta has fails now
            self._pending_state = {key: np.asarray(store[key]) for key in store.keys()}
            return
        if saving.load_variables(
            store, self.variables, self._velo.theta if self.built else None,
            super().load_own_variables, self._variables_before_build,
        ):
            self._theta_error = None  # theta came back with the saved variables

    # ------------------------------------------------------------- diagnostics

    def health_variables(self):
        """`{name: variable}` of the counters the `fit` guard watches (after `build`)."""
        return self._velo.health_variables()

    @property
    def skipped_steps(self):
        """Updates dropped so far because the loss or a gradient was not finite."""
        return int(ops.convert_to_numpy(self._velo.skipped_steps.value))

    def diagnostics(self):
        """What VeLO saw at its last update, as plain Python values.

        `fraction_trained`, `loss_features` (9 floats), `lr_mult` and
        `step_rms` (one per variable, in build order: VeLO's step multiplier
        and the root mean square of the step it took), `iteration`,
        `skipped_steps`, `consecutive_skips`, `variable_paths`.
        """
        return {**self._velo.last_update(),
                "variable_paths": [v.path for v in self._trainable_variables]}

    # ------------------------------------------------------------------ config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        """Rebuilds VeLO; theta is normally restored with the saved variables."""
        config = dict(config)
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = keras.saving.deserialize_keras_object(
                config["learning_rate"], custom_objects=custom_objects
            )
        config["weights"] = saving.SavedWeights(config.get("weights"))
        return cls(**config)

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
                "compile_update": self.compile_update,
            }
        )
        return config


loss_scale_saving.install(wraps_velo=lambda wrapper: isinstance(wrapper.inner_optimizer, VeLO))
