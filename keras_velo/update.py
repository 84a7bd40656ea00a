"""One VeLO update as a pure function of (theta, state, params, grads, loss).

Spec: `shared/spec/velo_reference.md` §4 (order of operations). This is the
function the Keras optimizer, the meta-trainer and the tests all call;
theta is an argument so that evolution strategies can perturb it.

Example (any backend; arrays may be numpy, they are converted):

>>> from keras_velo import init_theta
>>> from keras_velo.update import init_state, velo_update
>>> theta = init_theta(seed=0)
>>> params = [np.ones((3, 2), np.float32), np.zeros((2,), np.float32)]
>>> state = init_state(theta, [p.shape for p in params], num_steps=100)
>>> grads = [np.full((3, 2), 0.1, np.float32), np.ones((2,), np.float32)]
>>> params, state, diagnostics = velo_update(theta, state, params, grads, loss=1.0)
"""

from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_velo.accumulators import (
    Accumulators,
    accumulator_shapes,
    clip_gradient,
    update_accumulators,
)
from keras_velo.hypernetwork import (
    control_heads,
    lstm_step,
    mix_mlp_weights,
    mix_tensor_features,
)
from keras_velo.loss_features import init_loss_buffer, loss_features, update_loss_buffer
from keras_velo.parameter_mlp import (
    channel_normalizers,
    mlp_direction_and_magnitude,
    mlp_input_channels,
    parameter_step,
)
from keras_velo.tensor_features import (
    fraction_features,
    stack_lstm_inputs,
    tensor_statistics_features,
)

PARAM_SCALE_EPSILON = 1e-9


class TensorState(NamedTuple):
    """VeLO's state for one parameter tensor of shape S.

    Fields:
        accumulators: `Accumulators` (momenta `[3, *S]`, rms `S`, factored or
            diagonal second moments), stored in the parameter's dtype.
        lstm_hidden: `[H]` float32, this tensor's row of the LSTM state.
        lstm_cell: `[H]` float32.
    """

    accumulators: Accumulators
    lstm_hidden: object
    lstm_cell: object


class VeLOState(NamedTuple):
    """The whole optimizer state.

    Fields:
        iteration: `[]` int32, VeLO updates done so far.
        num_steps: `[]` int32, the training horizon VeLO is told.
        loss_buffer: `LossBuffer`.
        tensors: tuple of `TensorState`, one per parameter tensor, in a fixed
            order (it decides which LSTM row belongs to which tensor).
    """

    iteration: object
    num_steps: object
    loss_buffer: object
    tensors: tuple


class StepDiagnostics(NamedTuple):
    """What VeLO saw and decided in one update (for logging, never needed).

    Fields: `fraction_trained` `[]`, `loss_features` `[9]`, `lr_mult` `[N]`
    (the per-tensor step multipliers; 0 on calls that only accumulate),
    `skipped` `[]` bool (the update was dropped: non-finite loss or gradient).
    """

    fraction_trained: object
    loss_features: object
    lr_mult: object
    skipped: object = False


def init_tensor_state(theta, shape, dtype="float32"):
    """Fresh numpy `TensorState` for a tensor of `shape` (accumulators in `dtype`)."""
    shapes = accumulator_shapes(shape)
    accumulators = Accumulators(
        *[None if s is None else np.zeros(s, dtype) for s in shapes]
    )
    init = theta["lstm_init_state"]
    return TensorState(
        accumulators,
        np.asarray(init["hidden"], np.float32)[0],
        np.asarray(init["cell"], np.float32)[0],
    )


def init_state(theta, shapes, num_steps, dtypes=None):
    """Fresh numpy `VeLOState` for tensors of the given shapes (and dtypes)."""
    dtypes = dtypes or ["float32"] * len(shapes)
    return VeLOState(
        iteration=np.zeros([], np.int32),
        num_steps=np.asarray(num_steps, np.int32),
        loss_buffer=init_loss_buffer(num_steps),
        tensors=tuple(
            init_tensor_state(theta, s, d) for s, d in zip(shapes, dtypes)
        ),
    )


def to_tensors(structure):
    """Converts numpy leaves to backend tensors (tensors pass through)."""
    return keras.tree.map_structure(
        lambda x: None if x is None else ops.convert_to_tensor(x), structure
    )


def _as_work_shape(accumulators, work_shape):
    """float32 copies, with a rank-0 tensor's slots reshaped as for shape [1]."""

    def convert(slot, has_decay_axis):
        if slot is None:
            return None
        shape = (slot.shape[0],) + work_shape if has_decay_axis else work_shape
        if len(shape) != len(slot.shape):
            slot = ops.reshape(slot, shape)
        return ops.cast(slot, "float32")

    momentum, rms, row, col, diag = accumulators
    return Accumulators(
        convert(momentum, True),
        convert(rms, False),
        None if row is None else ops.cast(row, "float32"),
        None if col is None else ops.cast(col, "float32"),
        convert(diag, True),
    )


def velo_update(theta, state, params, grads, loss, step_scale=1.0, fraction_trained=None):
    """Applies one VeLO update; returns `(new_params, new_state, StepDiagnostics)`.

    Args:
        theta: nested dict of VeLO's weights (numpy or backend tensors).
        state: `VeLOState` for these tensors.
        params: list of the current parameter tensors (any float dtype).
        grads: list of gradients, same shapes.
        loss: scalar training loss of this step.
        step_scale: multiplies every step (the optimizer's learning rate;
            1.0 is the reference).
        fraction_trained: overrides `iteration / num_steps` (e.g. elapsed
            time / time budget); None is the reference.

    New params are `p + ((p - step) - p)`, the reference optax adapter's
    round trip, and every new leaf keeps the dtype of the old one.
    """
    theta, state, params, grads = to_tensors((theta, state, list(params), list(grads)))
    rnn_params = theta["rnn_params"]
    buffer = update_loss_buffer(state.loss_buffer, loss)
    loss_feats = loss_features(buffer)
    if fraction_trained is None:
        fraction = ops.cast(state.iteration, "float32") / ops.cast(state.num_steps, "float32")
    else:
        fraction = ops.cast(fraction_trained, "float32")
    fraction_feats = fraction_features(fraction)

    # Rank-0 tensors are handled as shape [1] throughout.
    work_shapes = [tuple(p.shape) or (1,) for p in params]
    params32 = [
        ops.reshape(ops.cast(p, "float32"), s) for p, s in zip(params, work_shapes)
    ]
    grads32 = [
        clip_gradient(ops.reshape(ops.cast(g, "float32"), s))
        for g, s in zip(grads, work_shapes)
    ]
    old_accumulators = [
        _as_work_shape(t.accumulators, s) for t, s in zip(state.tensors, work_shapes)
    ]
    mean_squares = [ops.mean(ops.square(p)) for p in params32]

    per_tensor = [
        tensor_statistics_features(msq, acc.momentum, acc.rms, p.shape)
        for msq, acc, p in zip(mean_squares, old_accumulators, params)
    ]
    lstm_inputs = stack_lstm_inputs(fraction_feats, loss_feats, per_tensor)
    hidden = ops.stack([ops.cast(t.lstm_hidden, "float32") for t in state.tensors])
    cell = ops.stack([ops.cast(t.lstm_cell, "float32") for t in state.tensors])
    hidden, cell = lstm_step(
        rnn_params, mix_tensor_features(rnn_params, lstm_inputs), hidden, cell
    )
    controls, lr_mult = control_heads(rnn_params, hidden)
    mlp_weights = mix_mlp_weights(theta["ff_mod_stack"]["~"], controls)

    new_params, new_tensors = [], []
    for j, (p, g, acc, msq) in enumerate(
        zip(params32, grads32, old_accumulators, mean_squares)
    ):
        accumulators, preconditioners = update_accumulators(acc, g)
        channels = mlp_input_channels(p, g, accumulators, preconditioners)
        weights = {name: value[j] for name, value in mlp_weights.items()}
        direction, magnitude = mlp_direction_and_magnitude(
            channels, channel_normalizers(channels), weights
        )
        param_scale = ops.sqrt(msq + PARAM_SCALE_EPSILON)
        step = parameter_step(direction, magnitude, param_scale, lr_mult[j]) * step_scale
        new_p = p + ((p - step) - p)
        old = state.tensors[j]
        new_params.append(ops.cast(ops.reshape(new_p, params[j].shape), params[j].dtype))
        new_tensors.append(
            TensorState(
                Accumulators(
                    *[
                        None if new is None else ops.cast(ops.reshape(new, o.shape), o.dtype)
                        for new, o in zip(accumulators, old.accumulators)
                    ]
                ),
                hidden[j],
                cell[j],
            )
        )
    new_state = VeLOState(
        iteration=state.iteration + 1,
        num_steps=state.num_steps,
        loss_buffer=buffer,
        tensors=tuple(new_tensors),
    )
    return new_params, new_state, StepDiagnostics(fraction, loss_feats, lr_mult)
