"""The losses task families sample, as Keras losses on integer labels or images."""

import keras
from keras import ops

CLASSIFICATION_LOSSES = ("cross_entropy", "squared_error")
RECONSTRUCTION_LOSSES = ("sigmoid_cross_entropy", "squared_error")


def classification_loss(kind, num_classes):
    """Loss on integer labels `[batch, ...]` and logits `[batch, ..., num_classes]`."""
    if kind == "cross_entropy":
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if kind == "squared_error":
        return OneHotSquaredError(num_classes)
    raise ValueError(f"unknown classification loss {kind!r}; choose one of {CLASSIFICATION_LOSSES}.")


def reconstruction_loss(kind):
    """Per-pixel loss between target images in [0, 1] and reconstruction logits."""
    if kind == "sigmoid_cross_entropy":
        return keras.losses.BinaryCrossentropy(from_logits=True)
    if kind == "squared_error":
        return SigmoidSquaredError()
    raise ValueError(f"unknown reconstruction loss {kind!r}; choose one of {RECONSTRUCTION_LOSSES}.")


class OneHotSquaredError(keras.losses.Loss):
    """Mean over classes of `(logits - one_hot(labels))^2` (the "MSE on logits" classifier loss)."""

    def __init__(self, num_classes, name="one_hot_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes

    def call(self, y_true, y_pred):
        target = ops.one_hot(ops.cast(y_true, "int32"), self.num_classes, dtype=y_pred.dtype)
        return ops.mean(ops.square(y_pred - target), axis=-1)


class SigmoidSquaredError(keras.losses.Loss):
    """Mean squared error between targets and `sigmoid(logits)`."""

    def __init__(self, name="sigmoid_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return ops.mean(ops.square(ops.sigmoid(y_pred) - ops.cast(y_true, y_pred.dtype)), axis=-1)


class NegativeELBO(keras.losses.Loss):
    """VAE loss per input dimension: `(sum_pixels BCE(x, logits) + KL) / num_pixels`.

    `y_pred` is `[batch, num_pixels + 1]`: the reconstruction logits with the
    example's KL divergence appended as the last column (the VAE model
    computes it), so the loss is an ordinary `loss(y_true, y_pred)`.
    """

    def __init__(self, name="negative_elbo", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        logits, kl = y_pred[:, :-1], y_pred[:, -1]
        target = ops.reshape(ops.cast(y_true, logits.dtype), ops.shape(logits))
        bce = ops.maximum(logits, 0) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
        return (ops.sum(bce, axis=-1) + kl) / ops.cast(ops.shape(logits)[-1], logits.dtype)
