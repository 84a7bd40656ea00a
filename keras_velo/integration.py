"""`attach(model)`: makes Keras' `fit()` give VeLO the true loss of every batch.

Keras never hands the loss to an optimizer, and VeLO cannot run without it.
After `model.compile(optimizer=VeLO(...))`, one line makes fit work:

```python
model.compile(optimizer=keras_velo.VeLO(), loss="sparse_categorical_crossentropy")
keras_velo.attach(model)
model.fit(x, y, epochs=3)            # total_steps inferred: 3 x batches per epoch
```

What it does, on the model instance only (the class is untouched):

* Its train step writes the batch's unscaled mean loss (after
  regularisation losses, before any loss scaling) into VeLO's loss variable
  right before the update, exactly once per update. On TensorFlow and
  PyTorch it reuses Keras' own train step and captures the loss where Keras
  hands it to `optimizer.scale_loss`; on JAX, where that call runs inside
  `jax.grad` and its writes are discarded, it is Keras' JAX train step with
  the loss passed to `stateless_apply`. A `LossScaleOptimizer` around VeLO
  (mixed_float16) is looked through.
* Its `fit` adds `keras_velo.callbacks.VeLOTrainingGuard`, which infers
  `total_steps` when it was not given, runs the time-budget mode, warns about
  skipped (non-finite) updates and raises after too many in a row.

A model loaded with `keras.saving.load_model` comes back with VeLO and all
of its state, but the patch is not saved: call `attach` again before
resuming (without it, VeLO raises an error saying so).
"""

import contextlib
import inspect
import types

import keras

from keras_velo.callbacks import LOG_PREFIX, VeLOTrainingGuard
from keras_velo.optimizer import find_velo


def attach(model):
    """Patches `model` (compiled with VeLO) so that `fit` feeds VeLO the loss.

    Idempotent; returns `model`. Models that override `train_step`
    themselves must pass the loss instead: `optimizer.apply(grads, vars,
    loss=loss)`.
    """
    velo = find_velo(getattr(model, "optimizer", None))
    if velo is None:
        raise ValueError(
            "keras_velo.attach(model) needs a model compiled with a VeLO "
            "optimizer: call model.compile(optimizer=keras_velo.VeLO(...), "
            f"loss=...) first (found optimizer={getattr(model, 'optimizer', None)!r})."
        )
    if getattr(model, "_keras_velo_attached", False):
        return model
    if keras.backend.backend() == "jax":
        train_step = _jax_train_step
    else:
        train_step = _capturing_train_step(type(model).train_step)
    model.train_step = types.MethodType(train_step, model)
    model.fit = types.MethodType(_guarded_fit(type(model).fit), model)
    model.train_function = None  # rebuild with the new train step
    model._keras_velo_attached = True
    return model


@contextlib.contextmanager
def _loss_fed_by_train_step(velo):
    outer, velo._loss_given = velo._loss_given, True
    try:
        yield
    finally:
        velo._loss_given = outer


def _velo_logs(velo, value_of):
    """Scalars the guard callback reads: skip counters and VeLO's iteration."""
    return {
        LOG_PREFIX + name: value_of(variable)
        for name, variable in velo.health_variables().items()
    }


def _capturing_train_step(keras_train_step):
    """TF / torch: Keras' train step, with the loss captured at `scale_loss`."""

    def train_step(self, data):
        optimizer = self.optimizer
        velo = find_velo(optimizer)
        original_scale_loss = optimizer.scale_loss

        def scale_loss(loss):
            velo.assign(
                velo.loss_variable,
                keras.ops.cast(keras.ops.stop_gradient(loss), "float32"),
            )
            return original_scale_loss(loss)

        optimizer.scale_loss = scale_loss
        try:
            with _loss_fed_by_train_step(velo):
                logs = keras_train_step(self, data)
        finally:
            del optimizer.scale_loss  # back to the class's method
        return {**logs, **_velo_logs(velo, lambda v: v.value)}

    return train_step


def _jax_train_step(self, state, data):
    """Keras' JAX train step, passing the unscaled loss to VeLO."""
    import jax

    trainable, non_trainable, optimizer_values, metrics = state
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    grad_fn = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)
    (_, aux), grads = grad_fn(
        trainable,
        non_trainable,
        metrics,
        x,
        y,
        sample_weight,
        training=True,
        optimizer_variables=optimizer_values,
    )
    unscaled_loss, y_pred, non_trainable, metrics = aux
    velo = find_velo(self.optimizer)
    index = {id(v): i for i, v in enumerate(self.optimizer.variables)}
    optimizer_values = list(optimizer_values)
    optimizer_values[index[id(velo.loss_variable)]] = unscaled_loss.astype("float32")
    with _loss_fed_by_train_step(velo):
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, grads, trainable
        )
    logs, metrics = self._update_metrics_variables(
        metrics, unscaled_loss, x, y, y_pred, sample_weight
    )
    logs = {**logs, **_velo_logs(velo, lambda v: optimizer_values[index[id(v)]])}
    return logs, (trainable, non_trainable, optimizer_values, metrics)


def _guarded_fit(keras_fit):
    """`fit` with `VeLOTrainingGuard` put first among the callbacks."""
    signature = inspect.signature(keras_fit)

    def fit(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        callbacks = list(bound.arguments.get("callbacks") or [])
        if not any(isinstance(c, VeLOTrainingGuard) for c in callbacks):
            callbacks.insert(0, VeLOTrainingGuard())
        bound.arguments["callbacks"] = callbacks
        return keras_fit(*bound.args, **bound.kwargs)

    return fit
