"""Keras train steps that hand VeLO the loss of their own batch.

Keras never passes the loss to an optimizer, and VeLO reads it at every
update. `feed_loss_to_velo(model)` gives one model instance (its class is
untouched) a train step that writes the batch's unscaled mean loss (after
regularisation losses, before any loss scaling) into VeLO's loss variable
right before the update, exactly once per update:

* TensorFlow and PyTorch: Keras' own train step, with the loss captured
  where Keras hands it to `optimizer.scale_loss`;
* JAX: that call happens inside `jax.grad`, whose writes are discarded, so
  the step is Keras' JAX train step with the loss passed to
  `stateless_apply`.

A `LossScaleOptimizer` around VeLO (mixed_float16) is looked through. When
the model is compiled with another optimizer, the installed step is
exactly the class's own, so a model can leave VeLO by recompiling.

When VeLO skips an update (a NaN/inf loss, gradient or step), the step
also puts back the model's non-trainable variables (BatchNormalization's
moving mean and variance, ...), which Keras updates during the forward
pass, outside the optimizer: a NaN batch then leaves the whole model as it
was. This costs one copy of the non-trainable variables per step (small:
normalisation statistics), taken inside the compiled step.

`keras_velo.VeLOCallback` calls this when `fit` starts; `keras_velo.attach`
calls it at once (for `train_on_batch`).
"""

import contextlib
import threading
import types

import keras

from keras_velo.training.optimizer import find_velo


def feed_loss_to_velo(model):
    """Installs the loss-feeding train step on `model` (idempotent); returns `model`.

    The compiled train function is dropped the first time only, so that
    Keras rebuilds it with the new step; later calls change nothing.
    """
    if getattr(model, "_keras_velo_feeds_loss", False):
        return model
    if keras.backend.backend() == "jax":
        model.train_step = types.MethodType(_jax_train_step, model)
    else:
        model.train_step = types.MethodType(_capturing_train_step, model)
    model.train_function = None  # rebuild with the new train step
    model._keras_velo_feeds_loss = True
    return model


def _capturing_train_step(self, data):
    """TF / torch: Keras' train step, with the loss captured at `scale_loss`."""
    keras_train_step = type(self).train_step
    velo = find_velo(self.optimizer)
    if velo is None:
        return keras_train_step(self, data)
    statistics = self.non_trainable_variables
    before = [keras.ops.copy(v.value) for v in statistics]
    with _loss_captured_at_scale_loss(self.optimizer, velo), velo.loss_fed_by_train_step():
        logs = keras_train_step(self, data)
    if statistics:
        skipped = keras.ops.greater(velo.health_variables()["consecutive_skips"].value, 0)
        for variable, old in zip(statistics, before):
            variable.assign(keras.ops.where(skipped, old, variable.value))
    return logs


# Under tf.distribute the replicas run the train step in threads on one
# shared optimizer: its `scale_loss` is wrapped while any of them runs it,
# and each thread's loss goes to the VeLO whose step runs in that thread.
_capturing = threading.local()
_wrapped = {}  # id(optimizer) -> number of train steps running with the wrapper
_wrapped_lock = threading.Lock()


@contextlib.contextmanager
def _loss_captured_at_scale_loss(optimizer, velo):
    with _wrapped_lock:
        if not _wrapped.get(id(optimizer)):
            original_scale_loss = optimizer.scale_loss

            def scale_loss(loss):
                if getattr(_capturing, "velo", None) is velo:
                    velo.feed_loss(loss)
                return original_scale_loss(loss)

            optimizer.scale_loss = scale_loss
        _wrapped[id(optimizer)] = _wrapped.get(id(optimizer), 0) + 1
    _capturing.velo = velo
    try:
        yield
    finally:
        _capturing.velo = None
        with _wrapped_lock:
            _wrapped[id(optimizer)] -= 1
            if not _wrapped[id(optimizer)]:
                del _wrapped[id(optimizer)]
                del optimizer.scale_loss  # back to the class's method


def _jax_train_step(self, state, data):
    """Keras' JAX train step, passing the unscaled loss to VeLO."""
    import jax

    velo = find_velo(self.optimizer)
    if velo is None:
        return type(self).train_step(self, state, data)
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
    old_non_trainable = non_trainable
    unscaled_loss, y_pred, non_trainable, metrics = aux
    index = {id(v): i for i, v in enumerate(self.optimizer.variables)}
    optimizer_values = list(optimizer_values)
    optimizer_values[index[id(velo.loss_variable)]] = unscaled_loss.astype("float32")
    with velo.loss_fed_by_train_step():
        trainable, optimizer_values = self.optimizer.stateless_apply(
            optimizer_values, grads, trainable
        )
    skipped = optimizer_values[index[id(velo.health_variables()["consecutive_skips"])]] > 0
    non_trainable = [
        jax.numpy.where(skipped, old, new) for old, new in zip(old_non_trainable, non_trainable)
    ]
    logs, metrics = self._update_metrics_variables(
        metrics, unscaled_loss, x, y, y_pred, sample_weight
    )
    return logs, (trainable, non_trainable, optimizer_values, metrics)
