"""The 30 per-tensor features that VeLO's LSTM reads.

Spec: `shared/spec/velo_reference.md` §5.3 and §5.4.

Per tensor, in the reference's (alphabetical) order:

| slice | content |
|---|---|
| 0-8 | training-fraction features `tanh(10 (frac - tau_k))` |
| 9-17 | loss features (`loss_features.py`) |
| 18 | `cla(mean rms~)` |
| 19-23 | one-hot of the number of axes with size > 1 (all zero if >= 5) |
| 24-26 | `cla(var m~)` per momentum decay |
| 27-29 | `cla(mean((rms~ - mean m~)²))`, see the quirk below |

with `x~ = x * nu`, `nu = rsqrt(max(1e-9, mean(p²)))` and
`cla(v) = 0.5 clip(log(1e-8 + |10 v|), -5, 5)`. They use the **old** p, m
and rms; the gradient does not enter.

The tensors' statistics come as sums over their elements, computed for all
tensors at once (`TENSOR_STATISTICS`); since `x~ - mean m~ = nu (x - mean m)`
the centred sums are taken on unscaled values and scaled by `nu²` here.
"""

import numpy as np
from keras import ops

FRACTION_TIMESCALES = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
FRACTION_SHARPNESS = 10.0
NUM_RANK_FEATURES = 5
NU_EPSILON = 1e-9

# Columns of the per-tensor sums (`[num_tensors, 5]` then `[num_tensors, 6]`).
MEAN_STATISTICS = ("sum_p2", "sum_m0", "sum_m1", "sum_m2", "sum_rms")
CENTRED_STATISTICS = (
    "sum_dm0", "sum_dm1", "sum_dm2",  # sum((m_k - mean m_k)²)
    "sum_dr0", "sum_dr1", "sum_dr2",  # quirk: sum((rms - mean m_k)²)
)


def fraction_features(fraction_trained):
    """`[9]`: `tanh(10 * (fraction_trained - tau))` for the 9 timescales."""
    timescales = ops.convert_to_tensor(np.asarray(FRACTION_TIMESCALES, np.float32))
    return ops.tanh(FRACTION_SHARPNESS * (fraction_trained - timescales))


def _clipped_log_abs(value):
    return 0.5 * ops.clip(ops.log(1e-8 + ops.abs(10.0 * value)), -5.0, 5.0)


def rank_one_hot(shape):
    """`[5]` numpy one-hot of the number of axes of size > 1 (zeros if >= 5)."""
    rank = sum(1 for size in shape if size > 1)
    one_hot = np.zeros([NUM_RANK_FEATURES], np.float32)
    if rank < NUM_RANK_FEATURES:
        one_hot[rank] = 1.0
    return one_hot


def element_means(mean_sums, sizes):
    """`(mean p² [N], mean m [N, 3], mean rms [N])` from `[N, 5]` sums and `[N]` sizes."""
    means = mean_sums / sizes[:, None]
    return means[:, 0], means[:, 1:4], means[:, 4]


def centred_values(momentum, rms, mean_momentum):
    """The 6 element-wise values whose sums give the centred statistics.

    `momentum` `[3, ...]`, `rms` and `mean_momentum` (`[3, ...]`,
    broadcasting) hold old values; returns `(m_k - mean m_k)²` and the quirk
    `(rms - mean m_k)²` for k = 0, 1, 2.
    """
    return [ops.square(momentum[k] - mean_momentum[k]) for k in range(3)] + [
        ops.square(rms - mean_momentum[k]) for k in range(3)
    ]


def tensor_statistics_features(mean_sums, centred_sums, sizes, shapes):
    """The 12 tensor-specific features (slices 18-29) of every tensor, `[N, 12]`.

    Args:
        mean_sums: `[N, 5]` sums of `MEAN_STATISTICS` over each tensor.
        centred_sums: `[N, 6]` sums of `CENTRED_STATISTICS`.
        sizes: `[N]` float32 element counts.
        shapes: the tensors' static shapes (for the rank one-hot).
    """
    mean_square, mean_momentum, mean_rms = element_means(mean_sums, sizes)
    inverse_scale = ops.rsqrt(ops.maximum(NU_EPSILON, mean_square))
    # Quirk: rms is scaled by 1/rms(p), not its square.
    scaled_rms_mean = inverse_scale * mean_rms
    centred = centred_sums / sizes[:, None] * ops.square(inverse_scale)[:, None]
    one_hot = ops.convert_to_tensor(np.stack([rank_one_hot(s) for s in shapes]))
    return ops.concatenate(
        [
            _clipped_log_abs(scaled_rms_mean)[:, None],
            one_hot,
            _clipped_log_abs(centred[:, 0:3]),
            _clipped_log_abs(centred[:, 3:6]),
        ],
        axis=1,
    )


def stack_lstm_inputs(fraction_feats, loss_feats, per_tensor_feats):
    """`[N, 30]`: the shared 18 features next to each tensor's 12 (`[N, 12]`)."""
    shared = ops.concatenate([fraction_feats, loss_feats], axis=0)
    num_tensors = per_tensor_feats.shape[0]
    shared = ops.broadcast_to(shared[None], (num_tensors, shared.shape[0]))
    return ops.concatenate([shared, per_tensor_feats], axis=1)
