"""One packed region (`keras_velo.packed.packing`) through the three passes of a VeLO update.

`RegionStep` holds a region's old accumulators, parameters and clipped
gradients, and computes, in the order `update.packed_update` calls them:

1. `first_pass`: per-tensor sums of p², m_k and rms (old values, spec
   §5.4), the row and column sums of g² (§5.6), gradient finiteness;
2. `centred_sums`: the centred sums of the LSTM features (old values);
3. `update_accumulators`: new momenta, rms and second moments (§5.6),
   which may overwrite the old ones from here on;
4. `channel_sums`: the MLP's input channels' sums of squares (its
   normalisers, §5.8-§5.9);
5. `direction_and_magnitude` / `step`: the per-parameter MLP and the step
   (§5.9-§5.10).

Factored regions keep their row/column statistics in the run and lane-group
tables; the table channels join the first layer as per-row and per-lane
partial sums. Each method works for all of the region's tensors at once.
"""

import numpy as np
from keras import ops

from keras_velo.maths.accumulators import (
    Accumulators,
    clip_gradient,
    col_factor,
    row_factor,
    squared_gradient,
    update_momenta,
    update_second_moment,
)
from keras_velo.maths.parameter_mlp import (
    DIAGONAL_ELEMENT_CHANNELS,
    DIAGONAL_SQUARE_GROUPS,
    FACTORED_ELEMENT_CHANNELS,
    FACTORED_SQUARE_GROUPS,
    LANE_TABLE_CHANNELS,
    NUM_CHANNELS,
    NUM_OUTPUTS_USED,
    ROW_TABLE_CHANNELS,
    diagonal_channel_squares,
    diagonal_element_channels,
    element_terms,
    factored_channel_squares,
    factored_element_channels,
    first_layer_coefficients,
    mlp_direction_and_magnitude,
    parameter_step,
    table_channels,
    weighted_sums,
)
from keras_velo.maths.tensor_features import centred_values
from keras_velo.maths.theta import MLP_HIDDEN_SIZE
from keras_velo.packed import segments
from keras_velo.packed.packing import LANES, ChunkIndex, materialize


def scatter_columns(sums, channel_map):
    """`[N, 30]` from `[N, len(channel_map)]`: each column to its channel(s), 0 elsewhere."""
    source = np.full(NUM_CHANNELS, len(channel_map), np.int32)
    for column, indices in enumerate(channel_map):
        source[list(indices)] = column
    padded = ops.pad(sums, ((0, 0), (0, 1)))
    return ops.take(padded, ops.convert_to_tensor(source), axis=1)


class RegionStep:
    """One region's inputs and intermediate values through an update.

    Args:
        region: the `packing.Region`.
        accumulators: its old `Accumulators` (tensors).
        params: its packed parameters, `[chunks, rows, lanes]` float32.
        grads: its packed gradients (clipped here to [-1000, 1000]).
        always_true: a traced true boolean (`packing.materialize`).

    Pack params and gradients with `pack(..., always_true)` so that each
    pass reads the packed buffers rather than redoing the packing.
    """

    def __init__(self, region, accumulators, params, grads, always_true):
        self.region = region
        self.old = accumulators
        self.params = params
        self.raw_grads = grads
        self.grads = clip_gradient(grads)
        self.always_true = always_true
        self.index = ChunkIndex(region)
        self.valid = self.index.valid()

    def first_pass(self, num_tensors):
        """Pass 1: sums of the old values and of `g²`; returns `[N, 5]` mean sums.

        The per-tensor sums of p², m_0, m_1, m_2 and rms (old values) are
        returned; the row and column sums of `q = g² + 1e-30` (factored) are
        kept for `update_accumulators`, and `gradients_finite` tells whether
        every (unclipped) gradient is finite.
        """
        momentum = self.old.momentum
        values = [ops.square(self.params), momentum[0], momentum[1], momentum[2], self.old.rms]
        # NaN or inf anywhere in g makes this sum NaN: the finiteness check,
        # folded into a pass that reads g anyway.
        poison = self.raw_grads * 0.0
        if self.region.factored:
            squared = squared_gradient(self.grads) * self.valid
            per_row = segments.reduce_sums(values + [squared], (2,))
            lane_sums, poison_sum = segments.reduce_sums([squared, poison], (1,))
            self.run_squares = segments.rows_to_runs(self.region, self.index, per_row[5])
            self.lane_squares = segments.chunks_to_lane_groups(self.region, lane_sums)
            per_chunk = ops.stack(segments.reduce_sums(per_row[:5], (1,)), axis=1)
        else:
            sums = segments.reduce_sums(values + [poison], (1, 2))
            per_chunk, poison_sum = ops.stack(sums[:5], axis=1), sums[5]
        self.gradients_finite = ops.all(ops.isfinite(poison_sum))
        return segments.tensor_sums(self.region, per_chunk, num_tensors)

    def centred_sums(self, mean_momentum, num_tensors):
        """Pass 2a: `[N, 6]` centred sums of the old momenta and rms (LSTM features).

        `mean_momentum` is `[N, 3]`, each tensor's mean old momentum. Taken
        before the accumulators are updated, so that the new ones can
        overwrite the old in place.
        """
        mean_momentum = segments.per_chunk(self.region, ops.transpose(mean_momentum))
        centred = [
            v * self.valid for v in centred_values(self.old.momentum, self.old.rms, mean_momentum)
        ]
        return segments.tensor_sums(self.region, segments.chunk_sums(centred), num_tensors)

    def update_accumulators(self, keep_old=None):
        """New momenta, rms and second moments, and the Adafactor factors (after pass 1).

        With `keep_old` (a traced boolean), the old accumulators are kept
        where it is true: the guard against non-finite gradients, decided
        before the update so that the new values can be written over the
        old ones. Sets `momentum`, `rms`, and either `diag_moment` or
        `row_moment`, `col_moment`, `row_factor`, `col_factor` (tables).
        """
        region = self.region
        guard = (lambda new, old: new) if keep_old is None else (  # noqa: E731
            lambda new, old: ops.where(keep_old, old, new)
        )
        momentum, rms = update_momenta(self.old.momentum, self.old.rms, self.grads)
        self.momentum = guard(momentum, self.old.momentum)
        self.rms = guard(rms, self.old.rms)
        if not region.factored:
            diag = update_second_moment(self.old.diag_moment, squared_gradient(self.grads))
            self.diag_moment = guard(diag, self.old.diag_moment)
            return
        run_length = ops.convert_to_tensor(region.run_length.astype(np.float32))
        width = ops.convert_to_tensor(region.lane_group_width.astype(np.float32))
        self.row_moment = guard(
            update_second_moment(self.old.row_moment, self.run_squares / run_length),
            self.old.row_moment,
        )
        self.col_moment = guard(
            update_second_moment(self.old.col_moment, self.lane_squares / width[:, None]),
            self.old.col_moment,
        )
        group_width = ops.convert_to_tensor(region.run_group_width.astype(np.float32))
        row_mean = segments.run_group_sums(region, self.row_moment) / group_width
        row_mean = ops.take(row_mean, ops.convert_to_tensor(region.run_group), axis=1)
        self.row_factor = row_factor(self.row_moment, row_mean)
        self.col_factor = col_factor(self.col_moment)

    @property
    def channel_map(self):
        return FACTORED_ELEMENT_CHANNELS if self.region.factored else DIAGONAL_ELEMENT_CHANNELS

    def element_channels(self):
        """The MLP's element channels (`channel_map`), after `update_accumulators`."""
        if not self.region.factored:
            return diagonal_element_channels(
                self.params, self.grads, self.momentum, self.rms, self.diag_moment
            )
        return factored_element_channels(
            self.params,
            self.grads,
            self.momentum,
            self.rms,
            segments.per_row(self.row_factor, self.index),
            segments.per_lane(self.col_factor, self.index),
        )

    def channel_sums(self, num_tensors):
        """Pass 2b: `[N, 30]` sums of squares of the MLP's input channels (its normalisers).

        The squares are computed from the inputs and the new state, not from
        the MLP's channels, so that the two passes share no intermediate
        value XLA would have to store.
        """
        region = self.region
        if region.factored:
            squares = factored_channel_squares(
                self.params, self.grads, self.momentum, self.rms,
                segments.per_row(ops.square(self.row_factor), self.index),
                segments.per_lane(ops.square(self.col_factor), self.index),
                self.valid,
            )
        else:
            squares = diagonal_channel_squares(
                self.params, self.grads, self.momentum, self.rms, self.diag_moment, self.valid
            )
        groups = FACTORED_SQUARE_GROUPS if region.factored else DIAGONAL_SQUARE_GROUPS
        sums = segments.tensor_sums(region, segments.chunk_sums(squares, groups), num_tensors)
        channel_sums = scatter_columns(sums, self.channel_map)
        if region.factored:
            channel_sums = channel_sums + self._table_channel_sums(num_tensors)
        return channel_sums

    def _table_channel_sums(self, num_tensors):
        region = self.region
        rows = ops.stack([ops.square(x) for x in table_channels(self.row_moment)])[:, :-1]
        row_sums = segments.table_tensor_sums(region.run_tensor[:-1], rows, num_tensors)
        lanes = np.arange(LANES)[None, :] < region.lane_group_valid_lanes[:, None]
        lanes = ops.convert_to_tensor(lanes[:-1].astype(np.float32))
        cols = ops.stack([ops.square(x)[:-1] * lanes for x in table_channels(self.col_moment)])
        col_sums = segments.table_tensor_sums(region.lane_group_tensor[:-1], cols, num_tensors)
        return scatter_columns(row_sums, ROW_TABLE_CHANNELS) + scatter_columns(
            col_sums, LANE_TABLE_CHANNELS
        )

    def direction_and_magnitude(self, first_layer, weights):
        """The MLP's outputs 0 and 1 at every element, `[chunks, rows, lanes]` each.

        Args:
            first_layer: `[N, 30, 4]` first-layer weights, normalisers folded in.
            weights: the mixed MLP weights (`hypernetwork.mix_mlp_weights`):
                `b0 [N, 4]`, `w1 [N, 4, 4]`, `b1 [N, 4]`, `w2 [N, 4, 3]`,
                `b2 [N, 3]`.
        """
        terms = element_terms(self.channel_map)
        layers, per_term = self._chunk_weights(first_layer, weights, [c for _, c in terms])
        arrays = self.element_channels()
        channels = [arrays[position] for position, _ in terms]
        table_part = None
        if self.region.factored:
            row = segments.per_row(
                self._table_part(first_layer, ROW_TABLE_CHANNELS,
                                 table_channels(self.row_moment), self.region.run_tensor),
                self.index,
            )
            lane = segments.per_lane(
                self._table_part(first_layer, LANE_TABLE_CHANNELS,
                                 table_channels(self.col_moment), self.region.lane_group_tensor),
                self.index,
            )
            table_part = [row[j] + lane[j] for j in range(MLP_HIDDEN_SIZE)]
        first_table_channel = ROW_TABLE_CHANNELS[0][0]
        sums = weighted_sums(
            channels, per_term, table_part,
            extra_after=sum(1 for _, c in terms if c < first_table_channel),
        )
        return mlp_direction_and_magnitude(sums, layers)

    def step(self, first_layer, weights, lr_mult, param_scale, step_scale=1.0):
        """`(step, [N] sums of step²)` of the region (0 on padding); new params are `p + ((p - step) - p)`.

        `lr_mult` and `param_scale` are `[N]`: each tensor's step multiplier
        and `sqrt(mean(p²) + 1e-9)`. The step is materialised once
        (`packing.materialize`), its sums of squares tell how far each
        tensor moved and whether the step is finite.
        """
        def compute():
            direction, magnitude = self.direction_and_magnitude(first_layer, weights)
            scales = segments.per_chunk(self.region, ops.stack([lr_mult, param_scale]))
            step = parameter_step(direction, magnitude, scales[1], scales[0]) * step_scale
            # Padding runs the MLP on made-up inputs (a padding row's table
            # entries are the dummy's, a padding lane's column moment is 0,
            # so rsqrt(v + 1e-8) = 1e4 there): after a large gradient shrinks
            # a tensor's normalisers its padding steps overflow. They must
            # reach nothing: not the step sums (the skip guard, step_rms),
            # not the buffers. `where`, because inf * 0 is NaN.
            return ops.where(self.valid > 0, step, 0.0)

        step = materialize(compute, self.region.shape, self.always_true, fallback=self.params)
        step_squares = segments.tensor_sums(
            self.region, segments.chunk_sums([ops.square(step)]), first_layer.shape[0]
        )[:, 0]
        return step, step_squares

    def updated_accumulators(self):
        """The new `Accumulators` (after `update_accumulators`)."""
        if self.region.factored:
            return Accumulators(self.momentum, self.rms, self.row_moment, self.col_moment)
        return Accumulators(self.momentum, self.rms, diag_moment=self.diag_moment)

    def _chunk_weights(self, first_layer, weights, channels):
        """Per-tensor MLP weights broadcast to the region's chunks (`[chunks, 1, 1]` each).

        Returns `(layers, per_channel)`: the dict `mlp_direction_and_magnitude`
        takes, and for each of `channels` its 4 first-layer weights.
        """
        num_tensors = first_layer.shape[0]
        coefficients = first_layer_coefficients(first_layer, channels)
        used = NUM_OUTPUTS_USED
        pieces = {
            "first": ops.transpose(coefficients, (0, 2, 1)),  # [arrays, 4, N]
            "b0": ops.transpose(weights["b0"]),
            "w1": ops.transpose(weights["w1"], (1, 2, 0)),  # [4 (in), 4 (out), N]
            "b1": ops.transpose(weights["b1"]),
            "w2": ops.transpose(weights["w2"][:, :, :used], (1, 2, 0)),
            "b2": ops.transpose(weights["b2"][:, :used]),
        }
        table = ops.concatenate(
            [ops.reshape(x, (-1, num_tensors)) for x in pieces.values()], axis=0
        )
        chunk = segments.per_chunk(self.region, table)
        position = iter(range(len(chunk)))

        def take(count):
            return [chunk[next(position)] for _ in range(count)]

        hidden = MLP_HIDDEN_SIZE
        per_channel = [take(hidden) for _ in channels]
        layers = {
            "b0": take(hidden),
            "w1": [take(hidden) for _ in range(hidden)],
            "b1": take(hidden),
            "w2": [take(used) for _ in range(hidden)],
            "b2": take(used),
        }
        return layers, per_channel

    @staticmethod
    def _table_part(first_layer, channel_map, channels, tensor_of_entry):
        """`[4, entries, ...]`: the first layer's sum over a table's 6 channels."""
        coefficients = first_layer_coefficients(first_layer, [c for (c,) in channel_map])
        coefficients = ops.take(coefficients, ops.convert_to_tensor(tensor_of_entry), axis=1)
        extra_axes = len(channels[0].shape) - 1
        parts = []
        for j in range(MLP_HIDDEN_SIZE):
            total = None
            for c, channel in enumerate(channels):
                weight = ops.reshape(coefficients[c, :, j], (-1,) + (1,) * extra_axes)
                term = channel * weight
                total = term if total is None else total + term
            parts.append(total)
        return ops.stack(parts)
