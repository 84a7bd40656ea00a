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

with `x~ = x * rsqrt(max(1e-9, mean(p²)))` and
`cla(v) = 0.5 clip(log(1e-8 + |10 v|), -5, 5)`. They use the **old** p, m
and rms; the gradient does not enter.
"""

import numpy as np
from keras import ops

FRACTION_TIMESCALES = (0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1)
FRACTION_SHARPNESS = 10.0
NUM_RANK_FEATURES = 5


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


def tensor_statistics_features(mean_square_param, momentum, rms, shape):
    """The 12 tensor-specific features (slices 18-29), `[12]`.

    Args:
        mean_square_param: `[]`, mean of p² over the tensor.
        momentum: `[3, *S']`, old momenta (rank-0 tensors as `S' = (1,)`).
        rms: `S'`, old rms.
        shape: the tensor's original static shape (for the rank one-hot).
    """
    inverse_scale = ops.rsqrt(ops.maximum(1e-9, mean_square_param))
    axes = tuple(range(1, len(momentum.shape)))
    scaled_momentum = inverse_scale * momentum
    # Quirk: rms is scaled by 1/rms(p), not its square.
    scaled_rms = inverse_scale * rms
    momentum_mean = ops.mean(scaled_momentum, axis=axes, keepdims=True)
    momentum_var = ops.mean(ops.square(scaled_momentum - momentum_mean), axis=axes)
    rms_mean = ops.mean(scaled_rms)
    # Quirk: the rms "variance" is centred on the momentum means -> 3 values.
    rms_var = ops.mean(ops.square(scaled_rms[None] - momentum_mean), axis=axes)
    return ops.concatenate(
        [
            ops.reshape(_clipped_log_abs(rms_mean), [1]),
            ops.convert_to_tensor(rank_one_hot(shape)),
            _clipped_log_abs(momentum_var),
            _clipped_log_abs(rms_var),
        ],
        axis=0,
    )


def stack_lstm_inputs(fraction_feats, loss_feats, per_tensor_feats):
    """`[N, 30]`: the shared 18 features next to each tensor's 12."""
    shared = ops.concatenate([fraction_feats, loss_feats], axis=0)
    per_tensor = ops.stack(per_tensor_feats, axis=0)
    num_tensors = len(per_tensor_feats)
    shared = ops.broadcast_to(shared[None], (num_tensors, shared.shape[0]))
    return ops.concatenate([shared, per_tensor], axis=1)
