"""VeLO's per-tensor gradient statistics: momenta, rms, factored 2nd moments.

Spec: `shared/spec/velo_reference.md` §2 and §5.6 (reference:
`learned_optimizers/common.py`, `factored_dims` and the Adafactor-style
accumulator).

Layout: the decay index comes **first** here (`[3, *S]`), where the reference
puts it last (`[*S, 3]`); slices per decay are then contiguous, which is what
every backend's elementwise kernels want. The rms keeps no decay axis (`S`).
For a tensor of shape `S`:

* `momentum`: `[3, *S]`, EMAs of g with decays 0.9, 0.99, 0.999.
* `rms`: `S`, EMA of g² with decay 0.999.
* factored (rank >= 2): `row_moment` `[3, *S without d0]` (means over axis
  d0), `col_moment` `[3, *S without d1]` (means over axis d1);
  `diag_moment` is None.
* unfactored (rank 0 or 1): `diag_moment` `[3, *S]`; row/col are None.
"""

from typing import NamedTuple

import numpy as np
from keras import ops

MOMENTUM_DECAYS = (0.9, 0.99, 0.999)
RMS_DECAY = 0.999
SECOND_MOMENT_DECAYS = (0.9, 0.99, 0.999)
GRADIENT_CLIP = 1000.0


class Accumulators(NamedTuple):
    """Gradient statistics of one tensor (see the module docstring)."""

    momentum: object
    rms: object
    row_moment: object = None
    col_moment: object = None
    diag_moment: object = None


class Preconditioners(NamedTuple):
    """Second-moment factors derived during the update, `[3, ...]` each.

    `row` and `col` broadcast against `[3, *S]`. For a factored tensor they
    are the Adafactor row and column factors; for an unfactored one `row` is
    `rsqrt(max(v + 1e-9, 1e-9))` and `col` is None.
    """

    row: object
    col: object


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
    """Shapes of each `Accumulators` field for a tensor of `shape` (None if unused)."""
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


def _decay_column(decays, rank):
    """The decays as a float32 `[3, 1, ..., 1]` array broadcasting against `[3, *S]`."""
    column = np.asarray(decays, np.float32).reshape((len(decays),) + (1,) * rank)
    return ops.convert_to_tensor(column)


def clip_gradient(gradient):
    """Elementwise clip to [-1000, 1000]; the clipped g feeds everything after."""
    return ops.clip(gradient, -GRADIENT_CLIP, GRADIENT_CLIP)


def update_accumulators(accumulators, gradient):
    """Folds a clipped float32 gradient `g` (shape S, rank >= 1) into the statistics.

    Returns `(new Accumulators, Preconditioners)`. With `q = g² + 1e-30`:
    `m <- b m + (1-b) g`, `rms <- 0.999 rms + 0.001 g²`, and either
    `v_row <- b v_row + (1-b) mean_d0(q)`, `v_col <- b v_col + (1-b) mean_d1(q)`
    or `v <- b v + (1-b) q`.
    """
    rank = len(gradient.shape)
    beta_m = _decay_column(MOMENTUM_DECAYS, rank)
    beta_v = _decay_column(SECOND_MOMENT_DECAYS, rank)
    grad = gradient[None]
    momentum = beta_m * accumulators.momentum + (1.0 - beta_m) * grad
    rms = RMS_DECAY * accumulators.rms + (1.0 - RMS_DECAY) * ops.square(gradient)
    squared = ops.square(gradient) + 1e-30

    dims = factored_dims(gradient.shape)
    if dims is None:
        diag = beta_v * accumulators.diag_moment + (1.0 - beta_v) * squared[None]
        new = Accumulators(momentum, rms, diag_moment=diag)
        factor = ops.rsqrt(ops.maximum(diag + 1e-9, 1e-9))
        return new, Preconditioners(row=factor, col=None)

    d0, d1 = dims
    beta_reduced = _decay_column(SECOND_MOMENT_DECAYS, rank - 1)
    row = beta_reduced * accumulators.row_moment + (1.0 - beta_reduced) * ops.mean(
        squared, axis=d0
    )[None]
    col = beta_reduced * accumulators.col_moment + (1.0 - beta_reduced) * ops.mean(
        squared, axis=d1
    )[None]
    d1_in_row = 1 + (d1 if d1 < d0 else d1 - 1)
    row_mean = ops.mean(row, axis=d1_in_row, keepdims=True)
    row_factor = ops.rsqrt(ops.maximum(row / (row_mean + 1e-9), 1e-9))
    col_factor = ops.rsqrt(ops.maximum(col, 1e-9))
    new = Accumulators(momentum, rms, row_moment=row, col_moment=col)
    return new, Preconditioners(
        row=ops.expand_dims(row_factor, 1 + d0),
        col=ops.expand_dims(col_factor, 1 + d1),
    )


def preconditioned_gradient(gradient, preconditioners):
    """`fac_g`, `[3, *S]`: the Adafactor-preconditioned gradient per decay."""
    result = gradient[None] * preconditioners.row
    if preconditioners.col is not None:
        result = result * preconditioners.col
    return result
