"""Callbacks for training with VeLO through `fit()`.

* `VeLOCallback` (pass it to `fit`): hands VeLO the loss of every batch,
  infers `total_steps`, drives the time-budget mode and watches for
  skipped updates. Needed in every `fit` of a VeLO model.
* `VeLOMonitor` (optional): puts what VeLO sees into the logs, so
  `History` and `TensorBoard` record it.
"""

import time

import keras
import numpy as np

from keras_velo.training.health import (
    check_dropped_updates,
    check_horizon,
    check_skips,
    report_replayed_batches,
    report_unfinished_schedule,
)
from keras_velo.training.optimizer import find_velo
from keras_velo.training.train_step import feed_loss_to_velo


def infer_total_steps(params, gradient_accumulation_steps=None, first_epoch=0):
    """VeLO updates in a `fit` run: epochs run x batches per epoch / Keras accumulation.

    `first_epoch` is `fit`'s `initial_epoch`: epochs `first_epoch .. epochs - 1` run.

    `steps_per_execution` needs no correction: `params["steps"]` counts
    batches, and every batch is one optimizer call.
    """
    steps = params.get("steps")
    if steps is None:
        raise ValueError(
            "VeLO's total_steps cannot be inferred: the dataset has no known "
            "length. Pass `steps_per_epoch=` to fit, or VeLO(total_steps=...)."
        )
    calls = max(1, int(params["epochs"]) - int(first_epoch)) * int(steps)
    return max(1, calls // (gradient_accumulation_steps or 1))


class VeLOCallback(keras.callbacks.Callback):
    """What VeLO needs from `fit`: pass it in every `fit` of a model compiled with VeLO.

    ```python
    model.compile(optimizer=keras_velo.VeLO(weights="bundled"), loss="mse")
    model.fit(x, y, epochs=5, callbacks=[keras_velo.VeLOCallback()])
    ```

    * The loss: when Keras hands it the model (before the train function
      is built), it installs a train step on that model instance that
      writes each batch's unscaled mean loss into VeLO right before the
      update (`keras_velo.training.train_step`). Nothing is saved with the model:
      after `keras.saving.load_model`, passing the callback to `fit` again
      is all it takes. The step stays on the instance, so later
      `train_on_batch` calls feed the loss too.
    * `total_steps=None`: set at the start of the first `fit` to the epochs
      it runs x batches per epoch (divided by Keras' `gradient_accumulation_steps`);
      with `fit(initial_epoch=k)` on a VeLO that has not trained, the epochs
      k .. epochs - 1, so that its schedule spans the updates that run.
      A `total_steps` set before (`VeLO(total_steps=...)`, or assigned to
      `optimizer.total_steps` before the first update) wins.
    * On TensorFlow, the optimizer is built at the start of `fit` (once
      the model's layers are), so that Keras traces its train function
      once, not twice (`build_before_tracing`).
    * `time_budget=s`: before each batch, VeLO's training fraction is set
      to training seconds so far / s (evaluation time excluded;
      `VeLO.set_training_seconds`), and training stops when the budget is
      spent. On JAX each batch then pays one state sync.
    * After each batch: a warning for every skipped (non-finite) update,
      `NonFiniteTrainingError` after `max_consecutive_skips` in a row, and
      one warning when VeLO runs past its horizon.
    * Resuming with `keras.callbacks.BackupAndRestore` (in either order in
      the callback list): the restored state's horizon is kept; after a
      mid-epoch backup, Keras replays that epoch from its first batch, and
      VeLO's `total_steps` grows by the replayed batches so that its
      schedule still ends with the fit (one warning says so).
    * At the end of `fit`: one warning if updates never reached VeLO
      (dropped by the loss-scale optimizer under mixed_float16), and one if
      the data ran out before `steps_per_epoch x epochs` batches, leaving
      VeLO's schedule unfinished.

    With a model compiled with another optimizer it does nothing.
    """

    def __init__(self):
        super().__init__()
        self._elapsed = 0.0
        self._clock_started = None
        self._start = None
        self._inferred_horizon = False
        self._batches = self._epoch_batches = 0
        self._epochs_planned = 0

    def set_model(self, model):
        super().set_model(model)
        # Keras builds the callback list (calling this) before any callback's
        # on_train_begin: the optimizer's step count here tells whether one of
        # them (BackupAndRestore) restored a backup by the first epoch.
        self._iterations_at_set_model = _keras_iterations(model)
        self._first_epoch = True
        if find_velo(getattr(model, "optimizer", None)) is not None:
            feed_loss_to_velo(model)

    def _velo(self):
        # `self._model`, not `self.model`: on JAX the property also syncs the
        # whole training state to the host, which only the time budget needs.
        return find_velo(getattr(self._model, "optimizer", None))

    def on_train_begin(self, logs=None):
        velo = self._velo()
        if velo is None:
            return
        # Inferred from epoch 0; the first epoch's number corrects it for an initial_epoch.
        self._inferred_horizon = velo.horizon is None and velo.adopt_restored_horizon() is None
        if self._inferred_horizon:
            velo.set_total_steps(
                infer_total_steps(self.params, velo.gradient_accumulation_steps)
            )
        build_before_tracing(self._model)
        self._elapsed, self._clock_started = 0.0, time.perf_counter()
        self._start = _counters(velo)
        self._batches = self._epoch_batches = 0
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch:
            return
        self._first_epoch = False
        self._epochs_planned = int(self.params["epochs"]) - epoch
        velo = self._velo()
        if velo is None:
            return
        if self._inferred_horizon and epoch > 0 and _counters(velo)[0] == 0:
            # fit(initial_epoch=epoch) on a VeLO that has not trained: only
            # epochs `epoch .. epochs - 1` run, and its schedule spans them.
            velo.set_total_steps(
                infer_total_steps(self.params, velo.gradient_accumulation_steps, first_epoch=epoch)
            )
        iterations = _keras_iterations(self._model)
        if iterations == self._iterations_at_set_model:
            return
        # A callback restored a backup after this fit began: its horizon wins,
        # and a mid-epoch backup means Keras replays part of `epoch`.
        velo.adopt_restored_horizon()
        self._start = _counters(velo)
        steps = self.params.get("steps")
        if steps is None:
            return
        replayed = iterations - epoch * int(steps) // (velo.gradient_accumulation_steps or 1)
        if 0 < replayed < int(steps):
            extended = velo.extend_total_steps(replayed)
            report_replayed_batches(velo, epoch, replayed, extended)

    # Evaluation time does not count against a time budget.
    def on_test_begin(self, logs=None):
        self._pause()

    def on_test_end(self, logs=None):
        self._clock_started = time.perf_counter()

    def _pause(self):
        if self._clock_started is not None:
            self._elapsed += time.perf_counter() - self._clock_started
            self._clock_started = None

    def _training_seconds(self):
        running = 0.0 if self._clock_started is None else time.perf_counter() - self._clock_started
        return self._elapsed + running

    def on_train_batch_begin(self, batch, logs=None):
        velo = self._velo()
        if velo is not None and velo.time_budget is not None:
            self.model  # noqa: B018 -- on JAX, makes the next step re-read variables
            velo.set_training_seconds(self._training_seconds())

    def on_train_batch_end(self, batch, logs=None):
        velo = self._velo()
        if velo is None:
            return
        # With steps_per_execution, Keras reports the last batch of each chunk as if
        # chunks were full: an epoch of 8 batches in chunks of 3 ends on "batch 8".
        steps = self.params.get("steps")
        self._epoch_batches = batch + 1 if steps is None else min(batch + 1, int(steps))
        health = _health_values(self._model, velo)
        check_skips(health["consecutive_skips"], health["skipped_steps"],
                    velo.max_consecutive_skips, health["skip_cause"])
        check_horizon(velo, health["iteration"])
        if velo.time_budget is not None and self._training_seconds() >= velo.time_budget:
            self._model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._batches += self._epoch_batches
        self._epoch_batches = 0

    def on_train_end(self, logs=None):
        self._pause()
        velo = self._velo()
        if velo is not None and self._start is not None:
            self._batches += self._epoch_batches
            # Only Keras' LossScaleOptimizer drops updates before VeLO sees them.
            if isinstance(self._model.optimizer, keras.optimizers.LossScaleOptimizer):
                check_dropped_updates(velo, self._start, _counters(velo), self._batches)
            steps = self.params.get("steps")
            if steps is not None and not self._model.stop_training and self._epochs_planned:
                planned = int(steps) * self._epochs_planned
                if self._batches < planned:  # Keras ended the fit: the data ran out
                    report_unfinished_schedule(velo, planned, self._batches, _counters(velo)[0])


def _keras_iterations(model):
    """The model optimizer's update count (Keras' `iterations`), or None without one.

    With Keras' `gradient_accumulation_steps` it is calls // steps (a tensor,
    not a variable).
    """
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        return None
    iterations = optimizer.iterations
    return int(keras.ops.convert_to_numpy(getattr(iterations, "value", iterations)))


def _counters(velo):
    """VeLO's (iteration, skipped_steps) now, read from its variables ((0, 0) before it is built:
    TensorFlow builds it inside the first traced step)."""
    if not velo.built:
        return 0, 0
    variables = velo.health_variables()
    return tuple(
        int(keras.ops.convert_to_numpy(variables[name].value))
        for name in ("iteration", "skipped_steps")
    )


def build_before_tracing(model):
    """Builds the model's optimizer now, before `fit` traces its train function (TensorFlow).

    Keras on TensorFlow without a distribution strategy builds the
    optimizer inside the first trace of the train function, and a
    `tf.function` that creates variables is traced a second time. VeLO's
    update is thousands of operations: the second trace cost ~3 s on a
    2-layer MLP. Built here, outside the trace (its horizon is set by
    now), the function is traced once. Left to Keras while any layer is
    unbuilt (its weights are not all there yet).
    """
    optimizer = getattr(model, "optimizer", None)
    if keras.backend.backend() != "tensorflow" or optimizer is None or optimizer.built:
        return
    if not all(layer.built for layer in model._flatten_layers()):
        return
    optimizer.build(model.trainable_variables)


def _health_values(model, velo):
    """VeLO's skip counters and iteration after the last batch, as ints.

    On JAX, during `fit` the live values are in `model._jax_state` (Keras
    sets it before `on_train_batch_end` so callbacks can read the state
    without a full sync); reading three scalars from it costs one small
    transfer.
    """
    variables = velo.health_variables()
    jax_state = getattr(model, "_jax_state", None) if keras.backend.backend() == "jax" else None
    if jax_state and jax_state.get("optimizer_variables") is not None:
        index = {id(v): i for i, v in enumerate(model.optimizer.variables)}
        values = jax_state["optimizer_variables"]
        return {name: int(np.asarray(values[index[id(v)]])) for name, v in variables.items()}
    return {
        name: int(keras.ops.convert_to_numpy(v.value)) for name, v in variables.items()
    }


class VeLOMonitor(keras.callbacks.Callback):
    """Adds VeLO's view of training to the logs (History, TensorBoard, CSVLogger).

    Keys: `velo/fraction_trained`, `velo/iteration`, `velo/skipped_steps`,
    `velo/lr_mult_mean|min|max`; with `loss_features=True` also
    `velo/loss_feature_0` ... `_8`, and with `per_tensor=True` one
    `velo/lr_mult/<variable path>` per tensor. Keras' progress line
    (`verbose=1` or `2`) prints every key, so the two detailed groups are
    off unless asked for. Put it before `TensorBoard` in the callback list.

    Args:
        update_freq: `"epoch"` (default) or an integer N: also add the keys
            to the batch logs every N batches (on JAX each such batch syncs
            the training state to the host).
        per_tensor: log each tensor's step multiplier.
        loss_features: log the 9 loss features VeLO's LSTM reads.
    """

    def __init__(self, update_freq="epoch", per_tensor=False, loss_features=False):
        super().__init__()
        if update_freq != "epoch" and (not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(
                f"`update_freq` must be 'epoch' or a positive integer, got {update_freq!r}."
            )
        self.update_freq = update_freq
        self.per_tensor = per_tensor
        self.loss_features = loss_features
        self.history = []

    def _diagnostic_logs(self):
        diagnostics = find_velo(self.model.optimizer).diagnostics()
        self.history.append(diagnostics)
        lr_mult = np.asarray(diagnostics["lr_mult"])
        logs = {
            "velo/fraction_trained": diagnostics["fraction_trained"],
            "velo/iteration": diagnostics["iteration"],
            "velo/skipped_steps": diagnostics["skipped_steps"],
            "velo/lr_mult_mean": float(lr_mult.mean()),
            "velo/lr_mult_min": float(lr_mult.min()),
            "velo/lr_mult_max": float(lr_mult.max()),
        }
        if self.loss_features:
            for i, value in enumerate(diagnostics["loss_features"]):
                logs[f"velo/loss_feature_{i}"] = value
        if self.per_tensor:
            for path, value in zip(diagnostics["variable_paths"], lr_mult):
                logs[f"velo/lr_mult/{path}"] = float(value)
        return logs

    def on_train_batch_end(self, batch, logs=None):
        if self.update_freq != "epoch" and (batch + 1) % self.update_freq == 0:
            if logs is not None:
                logs.update(self._diagnostic_logs())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self._diagnostic_logs())
