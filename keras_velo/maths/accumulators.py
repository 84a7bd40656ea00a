"""VeLO's gradient statistics: momenta, rms, factored and diagonal 2nd moments.

Spec: `shared/spec/velo_reference.md` §2 and §5.6 (reference:
`learned_optimizers/common.py`, `factored_dims` and the Adafactor-style
accumulator).

The statistics are kept for all tensors at once, in the packed layout of
`keras_velo.packed.packing` (the decay index comes **first**, where the reference
puts it last; slices per decay are then contiguous):

* `momentum`: `[3, chunks, rows, lanes]`, EMAs of g, decays 0.9/0.99/0.999.
* `rms`: `[chunks, rows, lanes]`, EMA of g², decay 0.999.
* factored region: `row_moment` `[3, runs + 1]` (means of `g² + 1e-30` over
  axis d0, one per run) and `col_moment` `[3, lane_groups + 1, lanes]`
  (means over axis d1); `diag_moment` is None.
* diagonal region (rank 0 and 1): `diag_moment` `[3, chunks, rows, lanes]`.

For one tensor, `accumulator_shapes` gives the reference's shapes
(decay-first), which is how `keras_velo.packed.state_view` shows them.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAY = 0.999
# The reference computes the mixing rate `1 - decay` in float32 (its decays
# are float32 arrays): 1 - float32(0.999) = 0.00099998713, not 0.001. The
# difference, 1.3e-5 of `g²`, shows after a large gradient.
RMS_MIXING_RATE = float(np.float32(1.0) - np.float32(RMS_DECAY))
SECOND_MOMENT_DECAYS = (0.9, 0.99, 0.999)
GRADIENT_CLIP = 1000.0
SQUARED_GRADIENT_EPSILON = 1e-30


class Accumulators(NamedTuple):
    """Gradient statistics of a region (or, in `state_view`, of one tensor)."""

    momentum: object
    rms: object
    row_moment: object = None
    col_moment: object = None
    diag_moment: object = None


def factored_dims(shape):
    """`(d0, d1)`, the largest and second-largest axes, or None if rank < 2.

    Ties keep index order (stable sort), e.g. `(3, 3, 2, 4) -> (3, 1)` and
    `(4, 4) -> (1, 0)`.
    """
    if len(shape) < 2:
        return None
    order = np.argsort(np.asarray(shape), kind="stable")
    return int(order[-1]), int(order[-2])


def accumulator_shapes(shape):
    """The reference's per-tensor shapes of each `Accumulators` field (None if unused).

    Decay axis first: momentum `[3, *S]`, rms `S`, and row `[3, *S without
    d0]` / col `[3, *S without d1]` (rank >= 2) or diag `[3, *S]`.
    """
    shape = tuple(shape)
    dims = factored_dims(shape)
    num_decays = len(SECOND_MOMENT_DECAYS)
    if dims is None:
        return Accumulators(
            momentum=(len(MOMENTUM_DECAYS),) + shape,
            rms=shape,
            diag_moment=(num_decays,) + shape,
        )
    d0, d1 = dims
    row = tuple(s for i, s in enumerate(shape) if i != d0)
    col = tuple(s for i, s in enumerate(shape) if i != d1)
    return Accumulators(
        momentum=(len(MOMENTUM_DECAYS),) + shape,
        rms=shape,
        row_moment=(num_decays,) + row,
        col_moment=(num_decays,) + col,
    )


def decay_column(decays, rank):
    """The decays as a float32 `[3, 1, ..., 1]` array broadcasting against `[3, ...]`."""
    column = np.asarray(decays, np.float32).reshape((len(decays),) + (1,) * rank)
    return ops.convert_to_tensor(column)


def clip_gradient(gradient):
    """Elementwise clip to [-1000, 1000]; the clipped g feeds everything after."""
    return ops.clip(gradient, -GRADIENT_CLIP, GRADIENT_CLIP)


def update_momenta(momentum, rms, gradient):
    """`m <- b m + (1-b) g` for the 3 decays, `rms <- 0.999 rms + 0.001 g²` (elementwise)."""
    beta = decay_column(MOMENTUM_DECAYS, len(gradient.shape))
    new_momentum = beta * momentum + (1.0 - beta) * gradient[None]
    new_rms = RMS_DECAY * rms + RMS_MIXING_RATE * ops.square(gradient)
    return new_momentum, new_rms


def squared_gradient(gradient):
    """`q = g² + 1e-30`, the input of the second moments."""
    return ops.square(gradient) + SQUARED_GRADIENT_EPSILON


def update_second_moment(moment, mean_squared_gradient):
    """`v <- b v + (1-b) mean(q)` for the 3 decays; `mean_squared_gradient` has no decay axis."""
    beta = decay_column(SECOND_MOMENT_DECAYS, len(mean_squared_gradient.shape))
    return beta * moment + (1.0 - beta) * mean_squared_gradient[None]


def row_factor(row_moment, row_moment_mean):
    """Adafactor's row factor `rsqrt(max(v_row / (mean_d1(v_row) + 1e-9), 1e-9))`."""
    return ops.rsqrt(ops.maximum(row_moment / (row_moment_mean + 1e-9), 1e-9))


def col_factor(col_moment):
    """Adafactor's column factor `rsqrt(max(v_col, 1e-9))`."""
    return ops.rsqrt(ops.maximum(col_moment, 1e-9))


def diagonal_factor(diag_moment):
    """The unfactored preconditioner `rsqrt(max(v + 1e-9, 1e-9))`."""
    return ops.rsqrt(ops.maximum(diag_moment + 1e-9, 1e-9))
