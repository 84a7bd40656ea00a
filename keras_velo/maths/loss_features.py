"""VeLO's loss buffer: 10 EMAs of the training loss and the 9 loss features.

Spec: `shared/spec/velo_reference.md` §5.1 (reference:
`learned_optimizers/common.py::BufferLossAccumulators`, non-bugged variant).

The buffer keeps 10 exponential moving averages of the loss whose half-lives
are spaced geometrically from 10 steps to `num_steps`, and the running
minimum of their bias-corrected values. The 9 features say where each
shorter EMA sits between the running minimum and the next-longer EMA.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

NUM_LOSS_EMAS = 10
NUM_LOSS_FEATURES = NUM_LOSS_EMAS - 1
RUNNING_MIN_INIT = 999999999999.0
SHORTEST_HALFLIFE_LOG10 = 1.0  # 10 steps


class LossBuffer(NamedTuple):
    """State of the loss EMAs.

    Fields:
        means: `[10]` float32, the raw (not bias-corrected) EMAs.
        running_min: `[10]` float32, running min of the bias-corrected EMAs.
        decays: `[10]` float32, from `loss_ema_decays(num_steps)`.
        iteration: `[]` int32, number of losses seen.
    """

    means: object
    running_min: object
    decays: object
    iteration: object


def loss_ema_decays(num_steps):
    """The 10 EMA decays for a training horizon of `num_steps` (numpy float32).

    Half-lives are `10**lin_i` with `lin` linearly spaced from 1 to
    log10(num_steps), so they run from 10 steps to `num_steps` steps.

    >>> loss_ema_decays(100)[0]
    0.9048374
    """
    num_steps = np.float32(num_steps)
    log10_steps = np.float32(np.log(num_steps)) / np.float32(np.log(10.0))
    i = np.arange(NUM_LOSS_EMAS, dtype=np.float32) / np.float32(NUM_LOSS_EMAS - 1)
    lin = np.float32(SHORTEST_HALFLIFE_LOG10) * (np.float32(1.0) - i) + log10_steps * i
    lin[-1] = log10_steps  # the endpoint is exact, as in linspace
    halflife = np.power(np.float32(10.0), lin, dtype=np.float32)
    return np.exp(np.float32(-1.0) / halflife).astype(np.float32)


def init_loss_buffer(num_steps):
    """A fresh buffer for `num_steps` as numpy arrays (see `LossBuffer`)."""
    return LossBuffer(
        means=np.zeros([NUM_LOSS_EMAS], np.float32),
        running_min=np.full([NUM_LOSS_EMAS], RUNNING_MIN_INIT, np.float32),
        decays=loss_ema_decays(num_steps),
        iteration=np.zeros([], np.int32),
    )


def _bias_correction(decays, count):
    """`1 - decays**count`, with a float-to-integer power (`count` int32)."""
    return 1.0 - ops.power(decays, ops.cast(count, "float32"))


def update_loss_buffer(buffer, loss):
    """Adds a scalar `loss` to the buffer and returns the new `LossBuffer`.

    The loss is first clipped from above at `2 * |max bias-corrected EMA|`
    (upward spikes only; the first loss passes unclipped).
    """
    loss = ops.cast(loss, "float32")
    decays, iteration = buffer.decays, buffer.iteration
    correction = _bias_correction(decays, iteration + 1)
    largest_mean = ops.max(buffer.means / correction)
    reference = ops.where(ops.equal(iteration, 0), loss, largest_mean)
    clipped_loss = ops.minimum(2.0 * ops.abs(reference), loss)
    means = decays * buffer.means + (1.0 - decays) * clipped_loss
    running_min = ops.minimum(buffer.running_min, means / correction)
    return LossBuffer(means, running_min, decays, iteration + 1)


def loss_features(buffer):
    """The 9 loss features `[9]` in [-1, 1], computed on an updated buffer.

    `f_i = clip((ema_i - min_i) / max(1e-8, ema_{i+1} - min_i) - 1, -1, 1)`
    on bias-corrected EMAs; all zero while the buffer has seen <= 2 losses.
    """
    corrected = buffer.means / _bias_correction(buffer.decays, buffer.iteration)
    shorter, longer = corrected[:-1], corrected[1:]
    running_min = buffer.running_min[:-1]
    denominator = ops.maximum(1e-8, longer - running_min)
    features = ops.clip((shorter - running_min) / denominator - 1.0, -1.0, 1.0)
    # Reference quirk kept as is: zeroed by multiplication, not replaced.
    warmed_up = ops.cast(ops.greater(buffer.iteration, 2), "float32")
    return features * warmed_up
