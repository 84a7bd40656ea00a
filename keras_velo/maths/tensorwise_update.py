"""One VeLO update tensor by tensor, each tensor whole, in its own shape.

Spec: `shared/spec/velo_reference.md` §4-§5. The same computation as the
packed update (`keras_velo.packed.update.packed_update`), written as the
reference writes it: every per-parameter quantity (momenta, rms, second
moments, the MLP's channels, the step) is an array of its tensor's shape,
and every statistic a reduction over that tensor. Nothing is packed,
reshaped or concatenated across tensors, so when the parameters are
sharded across devices (`keras.distribution.ModelParallel`) XLA's
partitioner keeps each element's work on the device that holds it: the
only values that cross devices are the per-tensor statistics (a few
numbers per tensor) and the factored second moments' row or column means
(one value per row or column).

The packed update stays the one for a single device: its program has the
same size whatever the number of tensors, where this one grows with it.

State: `UnpackedState`, the accumulators of each tensor in the
reference's shapes (`accumulators.accumulator_shapes`), the same fields as
`keras_velo.packed.state_view.TensorState` holds per tensor.
"""

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_velo.maths.accumulators import (
    Accumulators,
    clip_gradient,
    col_factor,
    factored_dims,
    row_factor,
    squared_gradient,
    update_momenta,
    update_second_moment,
)
from keras_velo.maths.hypernetwork import (
    control_heads,
    lstm_step,
    mix_mlp_weights,
    mix_tensor_features,
)
from keras_velo.maths.loss_features import loss_features, update_loss_buffer
from keras_velo.maths.parameter_mlp import (
    DIAGONAL_ELEMENT_CHANNELS,
    FACTORED_ELEMENT_CHANNELS,
    LANE_TABLE_CHANNELS,
    NUM_CHANNELS,
    NUM_OUTPUTS_USED,
    ROW_TABLE_CHANNELS,
    diagonal_element_channels,
    factored_element_channels,
    mlp_direction_and_magnitude,
    normalizers,
    parameter_step,
    table_channels,
    weighted_sums,
)
from keras_velo.maths.skip_guard import keep_unless, kept_counters, update_is_finite
from keras_velo.maths.tensor_features import (
    centred_values,
    element_means,
    fraction_features,
    stack_lstm_inputs,
    tensor_statistics_features,
)
from keras_velo.maths.theta import MLP_HIDDEN_SIZE

PARAM_SCALE_EPSILON = 1e-9


class UnpackedState(NamedTuple):
    """VeLO's state with one `Accumulators` per tensor, in the reference's shapes.

    Fields: `iteration` `[]` int32, `num_steps` `[]` int32, `loss_buffer`
    (`LossBuffer`), `accumulators` (tuple, one per tensor), `lstm_hidden`
    and `lstm_cell` `[N, H]`.
    """

    iteration: object
    num_steps: object
    loss_buffer: object
    accumulators: tuple
    lstm_hidden: object
    lstm_cell: object


class _Tensor:
    """One tensor through the update (the reference reshapes a scalar to `(1,)`)."""

    def __init__(self, param, grad, accumulators):
        self.shape = tuple(param.shape)
        work_shape = self.shape or (1,)
        self.param = ops.reshape(ops.cast(param, "float32"), work_shape)
        self.raw_grad = ops.reshape(ops.cast(grad, "float32"), work_shape)
        self.grad = clip_gradient(self.raw_grad)
        if not self.shape:  # decay axis first: [3] -> [3, 1]; rms () -> (1,)
            accumulators = accumulators._replace(
                momentum=ops.reshape(accumulators.momentum, (-1, 1)),
                rms=ops.reshape(accumulators.rms, (1,)),
                diag_moment=ops.reshape(accumulators.diag_moment, (-1, 1)),
            )
        self.old = accumulators
        self.dims = factored_dims(work_shape)
        self.size = max(1, math.prod(work_shape))

    def mean_sums(self):
        """`[5]`: sums of p², m_0, m_1, m_2 and rms (old values)."""
        m = self.old.momentum
        return ops.stack([ops.sum(ops.square(self.param)), ops.sum(m[0]), ops.sum(m[1]),
                          ops.sum(m[2]), ops.sum(self.old.rms)])

    def centred_sums(self, mean_momentum):
        """`[6]`: the centred sums of the LSTM features (old values)."""
        column = ops.reshape(mean_momentum, (3,) + (1,) * len(self.param.shape))
        return ops.stack([ops.sum(x) for x in centred_values(self.old.momentum, self.old.rms, column)])

    def update_accumulators(self, keep_old):
        """New momenta, rms and second moments (§5.6); the old ones where `keep_old` (traced) is true."""
        guard = (lambda new, old: new) if keep_old is None else (  # noqa: E731
            lambda new, old: ops.where(keep_old, old, new)
        )
        momentum, rms = update_momenta(self.old.momentum, self.old.rms, self.grad)
        self.momentum, self.rms = guard(momentum, self.old.momentum), guard(rms, self.old.rms)
        q = squared_gradient(self.grad)
        if self.dims is None:
            self.diag = guard(update_second_moment(self.old.diag_moment, q), self.old.diag_moment)
            return
        d0, d1 = self.dims
        self.row = guard(update_second_moment(self.old.row_moment, ops.mean(q, axis=d0)),
                         self.old.row_moment)
        self.col = guard(update_second_moment(self.old.col_moment, ops.mean(q, axis=d1)),
                         self.old.col_moment)
        row_axis = 1 + (d1 if d1 < d0 else d1 - 1)
        self.row_factor = row_factor(self.row, ops.mean(self.row, axis=row_axis, keepdims=True))
        self.col_factor = col_factor(self.col)

    def channels(self):
        """The 30 MLP input channels in order, each broadcasting against the tensor."""
        if self.dims is None:
            arrays = diagonal_element_channels(self.param, self.grad, self.momentum, self.rms,
                                               self.diag)
            channel_map = DIAGONAL_ELEMENT_CHANNELS
        else:
            d0, d1 = self.dims
            rows = ops.expand_dims(self.row, d0 + 1)
            cols = ops.expand_dims(self.col, d1 + 1)
            arrays = factored_element_channels(
                self.param, self.grad, self.momentum, self.rms,
                ops.expand_dims(self.row_factor, d0 + 1), ops.expand_dims(self.col_factor, d1 + 1),
            ) + table_channels(rows) + table_channels(cols)
            channel_map = FACTORED_ELEMENT_CHANNELS + ROW_TABLE_CHANNELS + LANE_TABLE_CHANNELS
        channels = [None] * NUM_CHANNELS
        for array, indices in zip(arrays, channel_map):
            for c in indices:
                channels[c] = array
        return channels

    def channel_mean_squares(self, channels):
        """`[30]`: each channel's mean square over the tensor (a broadcast one at its own size)."""
        return ops.stack([ops.mean(ops.square(x)) for x in channels])


def tensorwise_update(theta, state, params, grads, loss, step_scale=1.0,
                      fraction_trained=None, skip_non_finite=False):
    """One VeLO update; returns `(new_params, new_state, diagnostics)`.

    Args:
        theta: nested dict of VeLO's weights.
        state: `UnpackedState` for these tensors.
        params, grads: lists of tensors (any float dtype; new params keep it).
        loss, step_scale, fraction_trained, skip_non_finite: as for
            `keras_velo.packed.update.packed_update`.

    `diagnostics` is a dict: `fraction_trained`, `loss_features`, `lr_mult`
    `[N]`, `skipped`, `step_rms` `[N]`, `gradients_finite`.
    """
    theta, state = keras.tree.map_structure(
        lambda x: None if x is None else ops.convert_to_tensor(x), (theta, state)
    )
    rnn_params = theta["rnn_params"]
    loss = ops.cast(loss, "float32")
    buffer = update_loss_buffer(state.loss_buffer, loss)
    loss_feats = loss_features(buffer)
    if fraction_trained is None:
        fraction = ops.cast(state.iteration, "float32") / ops.cast(state.num_steps, "float32")
    else:
        fraction = ops.cast(fraction_trained, "float32")

    tensors = [_Tensor(p, g, a) for p, g, a in zip(params, grads, state.accumulators)]
    sizes = ops.convert_to_tensor(np.asarray([t.size for t in tensors], np.float32))
    mean_sums = ops.stack([t.mean_sums() for t in tensors])
    mean_square, mean_momentum, _ = element_means(mean_sums, sizes)
    centred_sums = ops.stack([t.centred_sums(mean_momentum[i]) for i, t in enumerate(tensors)])
    gradients_finite = ops.all(ops.stack([ops.all(ops.isfinite(t.raw_grad)) for t in tensors]))
    inputs_finite = None
    if skip_non_finite:
        inputs_finite = ops.logical_and(gradients_finite, ops.all(ops.isfinite(ops.concatenate(
            [ops.reshape(loss, (1,)), ops.reshape(centred_sums, (-1,)),
             ops.reshape(mean_sums, (-1,))]
        ))))
    for t in tensors:
        t.update_accumulators(None if inputs_finite is None else ops.logical_not(inputs_finite))
    channels = [t.channels() for t in tensors]
    mean_squares = ops.stack([t.channel_mean_squares(c) for t, c in zip(tensors, channels)])

    per_tensor = tensor_statistics_features(mean_sums, centred_sums, sizes,
                                            [t.shape for t in tensors])
    lstm_inputs = stack_lstm_inputs(fraction_features(fraction), loss_feats, per_tensor)
    hidden, cell = lstm_step(
        rnn_params, mix_tensor_features(rnn_params, lstm_inputs),
        ops.cast(state.lstm_hidden, "float32"), ops.cast(state.lstm_cell, "float32"),
    )
    controls, lr_mult = control_heads(rnn_params, hidden)
    weights = mix_mlp_weights(theta["ff_mod_stack"]["~"], controls)
    first_layer = weights["w0"] * normalizers(mean_squares)[:, :, None]
    param_scale = ops.sqrt(mean_square + PARAM_SCALE_EPSILON)

    new_params, step_squares = [], []
    for i, (t, tensor_channels) in enumerate(zip(tensors, channels)):
        coefficients = [[first_layer[i, c, j] for j in range(MLP_HIDDEN_SIZE)]
                        for c in range(NUM_CHANNELS)]
        layers = {
            "b0": [weights["b0"][i, j] for j in range(MLP_HIDDEN_SIZE)],
            "w1": [[weights["w1"][i, j, k] for k in range(MLP_HIDDEN_SIZE)]
                   for j in range(MLP_HIDDEN_SIZE)],
            "b1": [weights["b1"][i, j] for j in range(MLP_HIDDEN_SIZE)],
            "w2": [[weights["w2"][i, j, o] for o in range(NUM_OUTPUTS_USED)]
                   for j in range(MLP_HIDDEN_SIZE)],
            "b2": [weights["b2"][i, o] for o in range(NUM_OUTPUTS_USED)],
        }
        direction, magnitude = mlp_direction_and_magnitude(
            weighted_sums(tensor_channels, coefficients), layers
        )
        step = parameter_step(direction, magnitude, param_scale[i], lr_mult[i]) * step_scale
        step_squares.append(ops.sum(ops.square(step)))
        p = t.param
        new_params.append(p + ((p - step) - p))
    step_squares = ops.stack(step_squares)

    new_accumulators = tuple(
        Accumulators(t.momentum, t.rms, diag_moment=t.diag) if t.dims is None
        else Accumulators(t.momentum, t.rms, t.row, t.col)
        for t in tensors
    )
    new_state = UnpackedState(state.iteration + 1, state.num_steps, buffer, new_accumulators,
                                hidden, cell)
    skipped = ops.convert_to_tensor(False)
    if skip_non_finite:
        finite = update_is_finite(inputs_finite, step_squares, hidden, cell)
        keep = keep_unless(finite)
        new_params = [keep(new, t.param) for new, t in zip(new_params, tensors)]
        new_state = kept_counters(finite, new_state, state)
        skipped = ops.logical_not(finite)
    new_params = [
        ops.cast(ops.reshape(new, t.shape), keras.backend.standardize_dtype(p.dtype))
        for new, t, p in zip(new_params, tensors, params)
    ]
    new_state = new_state._replace(accumulators=tuple(
        acc._replace(momentum=ops.reshape(acc.momentum, (-1,)), rms=ops.reshape(acc.rms, ()),
                     diag_moment=ops.reshape(acc.diag_moment, (-1,)))
        if not t.shape else acc
        for acc, t in zip(new_state.accumulators, tensors)
    ))
    diagnostics = {
        "fraction_trained": fraction, "loss_features": loss_feats, "lr_mult": lr_mult,
        "skipped": skipped, "step_rms": ops.sqrt(step_squares / sizes),
        "gradients_finite": gradients_finite,
    }
    return new_params, new_state, diagnostics
