"""Callbacks for training with VeLO through `fit()`.

* `VeLOTrainingGuard` (added by `keras_velo.attach`): infers `total_steps`,
  drives the time-budget mode, and watches for skipped updates.
* `VeLOMonitor` (add it yourself): puts what VeLO sees into the logs, so
  `History` and `TensorBoard` record it.
"""

import time

import keras
import numpy as np

from keras_velo.health import check_horizon, check_skips
from keras_velo.optimizer import find_velo

# Keys the patched train step adds to its logs for the guard (removed there).
LOG_PREFIX = "_velo/"


def _pop_velo_logs(logs):
    if not logs:
        return {}
    return {k[len(LOG_PREFIX):]: logs.pop(k) for k in list(logs) if k.startswith(LOG_PREFIX)}


def infer_total_steps(params, gradient_accumulation_steps=None):
    """VeLO updates in a `fit` run: epochs x batches per epoch / Keras accumulation.

    `steps_per_execution` needs no correction: `params["steps"]` counts
    batches, and every batch is one optimizer call.
    """
    steps = params.get("steps")
    if steps is None:
        raise ValueError(
            "VeLO's total_steps cannot be inferred: the dataset has no known "
            "length. Pass `steps_per_epoch=` to fit, or VeLO(total_steps=...)."
        )
    calls = int(params["epochs"]) * int(steps)
    return max(1, calls // (gradient_accumulation_steps or 1))


class VeLOTrainingGuard(keras.callbacks.Callback):
    """Sets VeLO's horizon and time fraction, and watches for skipped updates.

    * `total_steps=None`: set at the start of the first `fit` to epochs x
      batches per epoch (divided by Keras' `gradient_accumulation_steps`).
    * `time_budget=s`: before each batch, VeLO's training fraction is set to
      training seconds so far / s (evaluation time excluded), and training
      stops when the budget is spent. On JAX each batch then pays one state
      sync between host and device.
    * Each batch: a warning for every skipped (non-finite) update, an error
      after `max_consecutive_skips` in a row, and one warning when VeLO runs
      past its horizon.
    """

    def __init__(self):
        super().__init__()
        self._elapsed = 0.0
        self._clock_started = None

    def _velo(self):
        # `self._model`, not `self.model`: on JAX the property also syncs the
        # whole training state to the host, which only the time budget needs.
        return find_velo(self._model.optimizer)

    def on_train_begin(self, logs=None):
        velo = self._velo()
        if velo.horizon is None:
            velo.set_total_steps(
                infer_total_steps(self.params, velo.gradient_accumulation_steps)
            )
        self._elapsed, self._clock_started = 0.0, time.perf_counter()

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
        if velo.time_budget is not None:
            self.model  # noqa: B018 -- on JAX, makes the next step re-read variables
            fraction = self._training_seconds() / velo.time_budget
            velo.fraction_variable.assign(np.float32(fraction))

    def on_train_batch_end(self, batch, logs=None):
        velo = self._velo()
        values = _pop_velo_logs(logs)
        if values:
            check_skips(
                int(values["consecutive_skips"]),
                int(values["skipped_steps"]),
                velo.max_consecutive_skips,
            )
            check_horizon(velo, int(values["iteration"]))
        if velo.time_budget is not None and self._training_seconds() >= velo.time_budget:
            self._model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        _pop_velo_logs(logs)

    def on_train_end(self, logs=None):
        self._pause()


class VeLOMonitor(keras.callbacks.Callback):
    """Adds VeLO's view of training to the logs (History, TensorBoard, CSVLogger).

    Keys: `velo/fraction_trained`, `velo/iteration`, `velo/skipped_steps`,
    `velo/loss_feature_0` ... `_8`, `velo/lr_mult_mean|min|max`, and with
    `per_tensor=True` one `velo/lr_mult/<variable path>` per tensor.
    Put it before `TensorBoard` in the callback list.

    Args:
        update_freq: `"epoch"` (default) or an integer N: also add the keys
            to the batch logs every N batches (on JAX each such batch syncs
            the training state to the host).
        per_tensor: log each tensor's step multiplier.
    """

    def __init__(self, update_freq="epoch", per_tensor=True):
        super().__init__()
        if update_freq != "epoch" and (not isinstance(update_freq, int) or update_freq < 1):
            raise ValueError(
                f"`update_freq` must be 'epoch' or a positive integer, got {update_freq!r}."
            )
        self.update_freq = update_freq
        self.per_tensor = per_tensor
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
