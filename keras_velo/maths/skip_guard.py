"""Whether an update may be applied, and the state it keeps when it may not.

Not in the reference (`prefab_update(skip_non_finite=True)`): an update
whose loss, a gradient, a step or the LSTM state it carries on is NaN or
infinite is dropped. The accumulators are decided before the update (they
are kept when the loss or a gradient is not finite, so that the new ones
may overwrite the old); what is decided after it is here, shared by the
packed and the per-tensor updates.
"""

import keras
from keras import ops


def update_is_finite(inputs_finite, step_squares, hidden, cell):
    """Whether the inputs, every step (its per-tensor sums of squares) and the new LSTM state are finite.

    A NaN training fraction or theta shows first in the LSTM state.
    """
    update_finite = ops.logical_and(
        ops.all(ops.isfinite(step_squares)),
        ops.logical_and(ops.all(ops.isfinite(hidden)), ops.all(ops.isfinite(cell))),
    )
    return ops.logical_and(inputs_finite, update_finite)


def keep_unless(finite):
    """`keep(new, old)`: `new` where `finite`, else `old`."""
    return lambda new, old: ops.where(finite, new, old)


def kept_counters(finite, new_state, old_state):
    """`new_state` with its step count, loss buffer and LSTM state put back unless `finite`."""
    keep = keep_unless(finite)
    return new_state._replace(
        iteration=keep(new_state.iteration, old_state.iteration),
        loss_buffer=keras.tree.map_structure(keep, new_state.loss_buffer, old_state.loss_buffer),
        lstm_hidden=keep(new_state.lstm_hidden, old_state.lstm_hidden),
        lstm_cell=keep(new_state.lstm_cell, old_state.lstm_cell),
    )
