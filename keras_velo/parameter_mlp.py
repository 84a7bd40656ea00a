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

from keras import ops

from keras_velo.accumulators import diagonal_factor
from keras_velo.theta import MLP_HIDDEN_SIZE

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

# Which of the 30 channels each computed array is, per kind of tensor.
FACTORED_ELEMENT_CHANNELS = tuple((c,) for c in range(15)) + ((27,), (28,), (29,))
ROW_TABLE_CHANNELS = ((15,), (16,), (17,), (21,), (22,), (23,))
LANE_TABLE_CHANNELS = ((18,), (19,), (20,), (24,), (25,), (26,))
DIAGONAL_ELEMENT_CHANNELS = tuple((c,) for c in range(15)) + (
    (15, 18), (16, 19), (17, 20), (21, 24), (22, 25), (23, 26), (27,), (28,), (29,)
)
# Element channels that are not zero on padding elements (p = g = m = rms = 0
# there); their sums need the validity mask.
_NONZERO_ON_PADDING = {10, 15, 16, 17, 21, 22, 23}


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


def masked_squares(channels, channel_map, valid):
    """`x²` of every channel, times `valid` where padding would not give 0."""
    squares = []
    for channel, indices in zip(channels, channel_map):
        square = ops.square(channel)
        if _NONZERO_ON_PADDING.intersection(indices):
            square = square * valid
        squares.append(square)
    return squares


def normalizers(mean_squares):
    """`rsqrt(1e-5 + mean(x²))` per tensor and channel, `[N, 30]`."""
    return ops.rsqrt(NORMALIZER_EPSILON + mean_squares)


def first_layer_coefficients(first_layer, channel_map):
    """`[len(channel_map), N, 4]`: folded first-layer weights per computed array.

    `first_layer` is `[N, 30, 4]` (normalisers folded in); an array serving
    two channels gets the sum of their weights.
    """
    rows = []
    for indices in channel_map:
        weight = first_layer[:, indices[0], :]
        for extra in indices[1:]:
            weight = weight + first_layer[:, extra, :]
        rows.append(weight)
    return ops.stack(rows, axis=0)


def weighted_sums(channels, coefficients):
    """`[4]` list: `sum_c channels[c] * coefficients[c][j]` for each hidden unit j."""
    totals = []
    for j in range(MLP_HIDDEN_SIZE):
        total = channels[0] * coefficients[0][j]
        for channel, coefficient in zip(channels[1:], coefficients[1:]):
            total = total + channel * coefficient[j]
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
