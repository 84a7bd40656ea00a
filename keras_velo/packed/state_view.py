"""VeLO's packed state seen per tensor, in the reference's shapes (numpy).

`VeLOState` keeps all tensors together (`keras_velo.packed.packing`); this module
converts it to and from one `TensorState` per tensor, with the
reference's shapes (decay axis first, see `accumulators.accumulator_shapes`):
for diagnostics, checkpoints from other tools, and the golden tests.
Nothing here runs in the update.

>>> views = tensor_states(state, shapes)     # list of TensorState
>>> views[0].accumulators.momentum.shape     # (3, *shapes[0])
"""

from typing import NamedTuple

import numpy as np
from keras import ops

from keras_velo.maths.accumulators import Accumulators, accumulator_shapes
from keras_velo.packed.packing import LANES, pack, packed_layout, unpack


class TensorState(NamedTuple):
    """VeLO's state for one tensor of shape S (numpy, reference shapes).

    Fields:
        accumulators: `Accumulators`: momenta `[3, *S]`, rms `S`, and either
            row `[3, *S without d0]` and col `[3, *S without d1]` moments or
            diag `[3, *S]`.
        lstm_hidden: `[H]`, this tensor's row of the LSTM state.
        lstm_cell: `[H]`.
    """

    accumulators: Accumulators
    lstm_hidden: object
    lstm_cell: object


class TensorwiseState(NamedTuple):
    """`VeLOState` with its packed regions split into one `TensorState` per tensor."""

    iteration: object
    num_steps: object
    loss_buffer: object
    tensors: tuple


def _numpy(x):
    return None if x is None else np.asarray(ops.convert_to_numpy(x))


def _per_decay(layout, factored, diagonal):
    """Unpacks `[3, ...]` buffers: a list of `[3, *S]` arrays."""
    per_k = [
        unpack(layout, None if factored is None else factored[k],
               None if diagonal is None else diagonal[k])
        for k in range(3)
    ]
    return [np.stack([_numpy(per_k[k][i]) for k in range(3)]) for i in range(layout.num_tensors)]


def _reference_order(canonical_axes):
    """Permutation from canonical order to the reference's (sorted) axis order."""
    return tuple(np.argsort(canonical_axes))


def row_moment_view(placement, table):
    """`[K, *S without d0]`: one tensor's entries of a run table `[K, runs + 1]`, reference order."""
    start = placement.first_run
    values = table[:, start : start + placement.num_runs]
    values = values.reshape((table.shape[0],) + placement.canonical_shape[:-1])
    axes = placement.axes
    # Canonical axes without d0 are `rest + [d1]`; the reference keeps the
    # original order of the axes that remain.
    kept = axes[:-1]
    order = _reference_order(kept)
    return np.transpose(values, (0,) + tuple(1 + i for i in order))


def col_moment_view(placement, table):
    """`[K, *S without d1]`: one tensor's entries of a lane-group table `[K, groups + 1, LANES]`."""
    start = placement.first_lane_group
    k = table.shape[0]
    values = table[:, start : start + placement.num_lane_groups]
    values = values.reshape(k, placement.num_run_groups, placement.pieces * LANES)
    values = values[:, :, : placement.run_length]
    values = values.reshape((k,) + placement.canonical_shape[:-2] + (placement.run_length,))
    axes = placement.axes
    kept = axes[:-2] + axes[-1:]
    order = _reference_order(kept)
    return np.transpose(values, (0,) + tuple(1 + i for i in order))


def tensor_states(state, shapes):
    """`TensorwiseState`: `state` (a `VeLOState`, numpy or tensors) per tensor."""
    layout = packed_layout(shapes)
    factored = None if state.factored is None else [_numpy(x) for x in state.factored]
    diagonal = None if state.diagonal is None else [_numpy(x) for x in state.diagonal]
    momentum = _per_decay(
        layout, factored and factored[0], diagonal and diagonal[0]
    )
    rms = [
        _numpy(x)
        for x in unpack(layout, factored and factored[1], diagonal and diagonal[1])
    ]
    diag = {}
    if diagonal is not None:
        values = _per_decay(layout, None, diagonal[4])
        diag = {t.index: values[t.index] for t in layout.diagonal.placements}
    rows, cols = {}, {}
    for t in layout.factored.placements:
        rows[t.index] = row_moment_view(t, factored[2])
        cols[t.index] = col_moment_view(t, factored[3])
    hidden, cell = _numpy(state.lstm_hidden), _numpy(state.lstm_cell)
    tensors = tuple(
        TensorState(
            Accumulators(
                momentum[i].reshape(accumulator_shapes(shapes[i]).momentum),
                rms[i].reshape(tuple(shapes[i])),
                rows.get(i),
                cols.get(i),
                diag.get(i),
            ),
            hidden[i],
            cell[i],
        )
        for i in range(layout.num_tensors)
    )
    return TensorwiseState(
        _numpy(state.iteration),
        _numpy(state.num_steps),
        type(state.loss_buffer)(*[_numpy(x) for x in state.loss_buffer]),
        tensors,
    )


def unpacked_tensor_states(state):
    """`TensorwiseState` (numpy) of an `UnpackedState` (sharded parameters: already per tensor)."""
    hidden, cell = _numpy(state.lstm_hidden), _numpy(state.lstm_cell)
    return TensorwiseState(
        _numpy(state.iteration),
        _numpy(state.num_steps),
        type(state.loss_buffer)(*[_numpy(x) for x in state.loss_buffer]),
        tuple(
            TensorState(Accumulators(*(None if a is None else _numpy(a) for a in accumulators)),
                        hidden[i], cell[i])
            for i, accumulators in enumerate(state.accumulators)
        ),
    )


def _packed_table_from_rows(layout, tensors):
    table = np.zeros((3, layout.factored.num_runs + 1), np.float32)
    for t in layout.factored.placements:
        values = np.asarray(tensors[t.index].row_moment, np.float32)
        axes = t.axes
        kept = axes[:-1]
        # Reference order -> canonical order of the kept axes.
        inverse = np.argsort(_reference_order(kept))
        values = np.transpose(values, (0,) + tuple(1 + i for i in inverse))
        table[:, t.first_run : t.first_run + t.num_runs] = values.reshape(3, -1)
    return table


def _packed_table_from_cols(layout, tensors):
    table = np.zeros((3, layout.factored.num_lane_groups + 1, LANES), np.float32)
    for t in layout.factored.placements:
        values = np.asarray(tensors[t.index].col_moment, np.float32)
        axes = t.axes
        kept = axes[:-2] + axes[-1:]
        inverse = np.argsort(_reference_order(kept))
        values = np.transpose(values, (0,) + tuple(1 + i for i in inverse))
        values = values.reshape(3, t.num_run_groups, t.run_length)
        padded = np.zeros((3, t.num_run_groups, t.pieces * LANES), np.float32)
        padded[:, :, : t.run_length] = values
        table[:, t.first_lane_group : t.first_lane_group + t.num_lane_groups] = padded.reshape(
            3, t.num_lane_groups, LANES
        )
    return table


def pack_accumulators(shapes, accumulators):
    """`(factored, diagonal)` packed `Accumulators` (numpy) from per-tensor ones.

    The inverse of the accumulator part of `tensor_states`.
    """
    layout = packed_layout(shapes)

    def packed(values):
        return [None if x is None else _numpy(x) for x in pack(layout, values)]

    per_decay = lambda field: [  # noqa: E731
        packed([np.asarray(getattr(a, field))[k] for a in accumulators]) for k in range(3)
    ]
    momentum = per_decay("momentum")
    rms = packed([a.rms for a in accumulators])
    factored = diagonal = None
    if not layout.factored.empty:
        factored = Accumulators(
            np.stack([m[0] for m in momentum]),
            rms[0],
            _packed_table_from_rows(layout, accumulators),
            _packed_table_from_cols(layout, accumulators),
        )
    if not layout.diagonal.empty:
        diag = [
            packed(
                [
                    np.zeros(tuple(s), np.float32) if a.diag_moment is None
                    else np.asarray(a.diag_moment)[k]
                    for a, s in zip(accumulators, shapes)
                ]
            )[1]
            for k in range(3)
        ]
        diagonal = Accumulators(
            np.stack([m[1] for m in momentum]), rms[1], diag_moment=np.stack(diag)
        )
    return factored, diagonal
