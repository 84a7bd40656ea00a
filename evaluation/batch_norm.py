"""BatchNorm statistics re-estimated on training data, so that a score measures the optimizer.

BatchNormalization keeps moving averages of each batch's mean and variance
(momentum 0.99 by default: a memory of ~100 steps that starts at mean 0,
variance 1). After a few hundred steps they still lag the statistics of
the network that training produced, and the sharper that network (the
better the optimizer did), the more an inference-mode score suffers: on a
small residual convnet, `model.evaluate` read VeLO's training loss as 12.3
where the loss it minimised was 0.028. `reestimate_batch_norm` replaces
the moving statistics by their values over training batches ("precise
BatchNorm"): every BatchNormalization layer's moving mean becomes the mean
of its batch means and its moving variance the mean of its batch
variances, the batches run through the model in training mode (so each
layer sees the inputs it saw in training). Inference-mode scores taken
after it are what the trained weights achieve.

>>> examples = reestimate_batch_norm(model, [x[i:i + 500] for i in range(0, 10_000, 500)])
>>> model.evaluate(x, y)          # inference mode, statistics of the trained network
"""

import contextlib

import keras


def batch_norm_layers(model):
    """The trainable BatchNormalization layers of `model` (nested models included), in order."""
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]


def _no_gradients():
    if keras.backend.backend() == "torch":
        import torch

        return torch.no_grad()
    return contextlib.nullcontext()


def reestimate_batch_norm(model, batches):
    """Sets every BatchNormalization layer's moving statistics to their average over `batches`.

    Args:
        model: a built Keras model.
        batches: an iterable of model inputs (the `x` of training batches).

    Returns the number of examples used: 0 when the model has no
    BatchNormalization layer (nothing is run or changed). Each layer's
    `momentum` is restored afterwards; other state that a training-mode
    call touches (dropout's seed generators) advances as in a training
    step. Raises `ValueError` if `batches` is empty and there is something
    to estimate.
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    momenta = [layer.momentum for layer in layers]
    examples = 0
    try:
        with _no_gradients():
            for count, x in enumerate(batches):
                for layer in layers:  # running average: the k-th batch weighs 1 / (k + 1)
                    layer.momentum = count / (count + 1)
                model(x, training=True)
                examples += len(x)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if examples == 0:
        raise ValueError("reestimate_batch_norm needs at least one batch of training inputs.")
    return examples


def batches_of(x, batch_size):
    """`x` cut into consecutive batches of `batch_size` (the last one may be shorter)."""
    return (x[start:start + batch_size] for start in range(0, len(x), batch_size))
