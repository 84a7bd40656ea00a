"""VeLO's per-parameter MLP: 30 input channels, normalisation, 30->4->4->3, step.

Spec: `shared/spec/velo_reference.md` §5.8-§5.10.

The channels, with `s = rsqrt(rms + 1e-6)` and k over the 3 decays:

| index | group | value |
|---|---|---|
| 0 | g | g |
| 1 | clip_g | clip(g, -0.1, 0.1) |
| 2 | p | p |
| 3-5 | m | m_k |
| 6 | rms | rms |
| 7-9 | m_rsqrt_rms | m_k s |
| 10 | rsqrt_rms | s |
| 11-13 | fac_g | (g row_k) col_k (unfactored: g rsqrt(max(v_k + 1e-9, 1e-9))) |
| 14 | g_rsqrt_rms | g s |
| 15-17 | row_feat | v_row_k broadcast along d0 (unfactored: v_k) |
| 18-20 | col_feat | v_col_k broadcast along d1 (unfactored: v_k) |
| 21-23 | rsqrt_row | rsqrt(row_feat + 1e-8) |
| 24-26 | rsqrt_col | rsqrt(col_feat + 1e-8) |
| 27-29 | fac_mom_mult | (m_k row_k) col_k (unfactored: m_k v_k^-1/2, no epsilon) |

How it is computed, for all tensors of a region at once:

* Element channels are arrays of the region's shape. For factored tensors
  the 12 channels 15-26 are constant along d0 or d1, so they stay in the
  small run / lane-group tables (`table_channels`); for unfactored tensors
  row and column features coincide, so one array serves two channels
  (`DIAGONAL_ELEMENT_CHANNELS`).
* Each channel is normalised per tensor by `rsqrt(1e-5 + mean(x²))`; the
  normaliser is folded into the first-layer weights, so normalised inputs
  are never materialised, and a broadcast channel's mean square is taken
  at its table size.
* The MLP is written as unrolled scalar-times-array sums (not a
  `[n, 30] @ [30, 4]` matmul): XLA fuses them into one pass over the
  parameters. Table channels enter the first layer as per-row and per-lane
  partial sums. Output channel 2 is unused by VeLO and not computed.
"""

import numpy as np
from keras import ops

from keras_velo.maths.accumulators import diagonal_factor
from keras_velo.maths.theta import MLP_HIDDEN_SIZE

MLP_INPUT_GROUP_NAMES = (
    "g",
    "clip_g",
    "p",
    "m",
    "rms",
    "m_rsqrt_rms",
    "rsqrt_rms",
    "fac_g",
    "g_rsqrt_rms",
    "row_feat",
    "col_feat",
    "rsqrt_row",
    "rsqrt_col",
    "fac_mom_mult",
)
NUM_CHANNELS = 30
INPUT_CLIP = 0.1
RSQRT_RMS_EPSILON = 1e-6
RSQRT_MOMENT_EPSILON = 1e-8
NORMALIZER_EPSILON = 1e-5
EXP_MULT = 0.001
STEP_MULT = 0.001
NUM_OUTPUTS_USED = 2  # direction and magnitude

# Passes over the elements for the channel squares (see `segments.reduce_sums`):
# the squares sharing `1 / (rms + 1e-6)` or a diagonal moment's reciprocal
# stay in one pass.
FACTORED_SQUARE_GROUPS = (
    (0, 1, 2, 3, 4, 5, 6, 11, 12, 13),  # g², clip², p², m², rms², fac_g²
    (7, 8, 9, 10, 14, 15, 16, 17),  # the 1/(rms + eps) terms, fac_m²
)
DIAGONAL_SQUARE_GROUPS = (
    (0, 1, 2, 3, 4, 5, 6, 15, 16, 17),  # g², clip², p², m², rms², v²
    (7, 8, 9, 10, 14),  # the 1/(rms + eps) terms
    (11, 12, 13, 18, 19, 20, 21, 22, 23),  # the 1/v terms
)

# Which of the 30 channels each computed array is, per kind of tensor.
FACTORED_ELEMENT_CHANNELS = tuple((c,) for c in range(15)) + ((27,), (28,), (29,))
ROW_TABLE_CHANNELS = ((15,), (16,), (17,), (21,), (22,), (23,))
LANE_TABLE_CHANNELS = ((18,), (19,), (20,), (24,), (25,), (26,))
DIAGONAL_ELEMENT_CHANNELS = tuple((c,) for c in range(15)) + (
    (15, 18), (16, 19), (17, 20), (21, 24), (22, 25), (23, 26), (27,), (28,), (29,)
)


def _rsqrt_rms(rms):
    return ops.rsqrt(rms + RSQRT_RMS_EPSILON)


def _shared_channels(param, gradient, momentum, rms, rsqrt_rms, fac_g):
    """Channels 0-14 (everything but the second-moment features)."""
    return (
        [gradient, ops.clip(gradient, -INPUT_CLIP, INPUT_CLIP), param]
        + [momentum[k] for k in range(3)]
        + [rms]
        + [momentum[k] * rsqrt_rms for k in range(3)]
        + [rsqrt_rms]
        + fac_g
        + [gradient * rsqrt_rms]
    )


def factored_element_channels(param, gradient, momentum, rms, row_factors, col_factors):
    """The 18 `FACTORED_ELEMENT_CHANNELS` of factored tensors.

    Args:
        param, gradient: old p and clipped g, `[chunks, rows, lanes]`.
        momentum, rms: the **updated** momenta `[3, ...]` and rms.
        row_factors, col_factors: the Adafactor factors per decay, each
            broadcasting against the elements (`[3, chunks, rows, 1]` and
            `[3, chunks, rows, lanes]`).
    """
    fac_g = [(gradient * row_factors[k]) * col_factors[k] for k in range(3)]
    fac_momentum = [(momentum[k] * row_factors[k]) * col_factors[k] for k in range(3)]
    channels = _shared_channels(param, gradient, momentum, rms, _rsqrt_rms(rms), fac_g)
    return channels + fac_momentum


def table_channels(moment):
    """The 6 second-moment channels of a run or lane-group table `[3, ...]`.

    `v_k` and `rsqrt(v_k + 1e-8)`: channels 15-17, 21-23 for the row table,
    18-20, 24-26 for the column table.
    """
    return [moment[k] for k in range(3)] + [
        ops.rsqrt(moment[k] + RSQRT_MOMENT_EPSILON) for k in range(3)
    ]


def diagonal_element_channels(param, gradient, momentum, rms, diag_moment):
    """The 24 `DIAGONAL_ELEMENT_CHANNELS` of unfactored tensors (updated `v`)."""
    factor = diagonal_factor(diag_moment)
    fac_g = [gradient * factor[k] for k in range(3)]
    channels = _shared_channels(param, gradient, momentum, rms, _rsqrt_rms(rms), fac_g)
    channels += table_channels(diag_moment)
    # No epsilon here, as in the reference.
    channels += [momentum[k] * ops.rsqrt(diag_moment[k]) for k in range(3)]
    return channels


def factored_channel_squares(param, gradient, momentum, rms, row_squares, col_squares, valid):
    """`x²` of the 18 `FACTORED_ELEMENT_CHANNELS`, for the normalisers.

    Computed from the inputs (`(m s)² = m² / (rms + 1e-6)`, `fac_g² = g² row²
    col²`, ...) rather than from the channels: the MLP pass builds the
    channels again, and the two passes then share nothing XLA would store.
    `row_squares`, `col_squares`: the squared Adafactor factors, broadcasting
    against the elements; `valid` masks padding (where `1/(rms + 1e-6)` is
    not 0).
    """
    inverse_rms = 1.0 / (rms + RSQRT_RMS_EPSILON)
    g2 = ops.square(gradient)
    m2 = [ops.square(momentum[k]) for k in range(3)]
    factors = [row_squares[k] * col_squares[k] for k in range(3)]
    return (
        [g2, ops.square(ops.clip(gradient, -INPUT_CLIP, INPUT_CLIP)), ops.square(param)]
        + m2
        + [ops.square(rms)]
        + [m2[k] * inverse_rms for k in range(3)]
        + [inverse_rms * valid]
        + [g2 * factors[k] for k in range(3)]
        + [g2 * inverse_rms]
        + [m2[k] * factors[k] for k in range(3)]
    )


def diagonal_channel_squares(param, gradient, momentum, rms, diag_moment, valid):
    """`x²` of the 24 `DIAGONAL_ELEMENT_CHANNELS`, from the channels themselves.

    Unfactored tensors are few and small; their squares follow the
    reference's rounding exactly (which matters for scalars, whose single
    value is its own normaliser).
    """
    channels = diagonal_element_channels(param, gradient, momentum, rms, diag_moment)
    masked = {10, 15, 16, 17, 21, 22, 23}  # not zero on padding
    return [
        ops.square(x) * valid if masked.intersection(indices) else ops.square(x)
        for x, indices in zip(channels, DIAGONAL_ELEMENT_CHANNELS)
    ]


def normalizers(mean_squares):
    """`rsqrt(1e-5 + mean(x²))` per tensor and channel, `[N, 30]`."""
    return ops.rsqrt(NORMALIZER_EPSILON + mean_squares)


def element_terms(channel_map):
    """`[(array position, channel)]`: the first layer's element terms in channel order.

    An array serving two channels (unfactored row and column features)
    gives two terms, so the sum runs over channels in the reference's order.
    """
    terms = [(position, c) for position, indices in enumerate(channel_map) for c in indices]
    return sorted(terms, key=lambda term: term[1])


def first_layer_coefficients(first_layer, channels):
    """`[len(channels), N, 4]`: the first-layer weights (normalisers folded in) of these channels.

    One gather with constant indices: a slice per channel would be a
    compiled kernel per channel on XLA (about 50 over the two regions).
    """
    chosen = ops.take(first_layer, np.asarray(channels, dtype="int32"), axis=1)
    return ops.transpose(chosen, (1, 0, 2))


def weighted_sums(channels, coefficients, extra=None, extra_after=0):
    """`[4]` list: `sum_c channels[c] * coefficients[c][j]` for each hidden unit j.

    `extra` (4 arrays, optional) joins the sum after the first `extra_after`
    terms: the factored table channels (15-26), between channels 14 and 27.
    """
    totals = []
    for j in range(MLP_HIDDEN_SIZE):
        total = None
        for i, (channel, coefficient) in enumerate(zip(channels, coefficients)):
            if extra is not None and i == extra_after:
                total = total + extra[j]
            term = channel * coefficient[j]
            total = term if total is None else total + term
        if extra is not None and extra_after == len(channels):
            total = total + extra[j]
        totals.append(total)
    return totals


def mlp_direction_and_magnitude(first_layer_sums, layers):
    """The rest of the MLP; returns `(direction, magnitude)`.

    Args:
        first_layer_sums: 4 arrays, `sum_c w0[c, j] x_c` (normalised inputs).
        layers: `b0 [4]`, `w1 [4][4]`, `b1 [4]`, `w2 [4][2]`, `b2 [2]`,
            each entry broadcasting against the elements.
    """
    hidden = [ops.relu(first_layer_sums[j] + layers["b0"][j]) for j in range(MLP_HIDDEN_SIZE)]
    second = []
    for i in range(MLP_HIDDEN_SIZE):
        total = layers["b1"][i]
        for j in range(MLP_HIDDEN_SIZE):
            total = total + hidden[j] * layers["w1"][j][i]
        second.append(ops.relu(total))
    outputs = []
    for o in range(NUM_OUTPUTS_USED):
        total = layers["b2"][o]
        for i in range(MLP_HIDDEN_SIZE):
            total = total + second[i] * layers["w2"][i][o]
        outputs.append(total)
    return outputs[0], outputs[1]


def parameter_step(direction, magnitude, param_scale, lr_mult):
    """`lr_mult * direction * param_scale * exp(0.001 magnitude) * 0.001`."""
    return lr_mult * (direction * (param_scale * ops.exp(EXP_MULT * magnitude)) * STEP_MULT)
