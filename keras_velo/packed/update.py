"""One VeLO update as a pure function of (theta, state, params, grads, loss).

Spec: `shared/spec/velo_reference.md` §4 (order of operations). The Keras
optimizer (through `prefab.py`) and the tests call these functions; theta
is an argument, so evolution strategies can perturb it (they work under
`jax.jit` and `jax.vmap` over thetas).

All tensors are updated together in the packed layout of
`keras_velo.packed.packing`, so the traced program has the same size whatever the
number of tensors (beyond a few reshapes per tensor to pack and unpack).
The passes over the parameters (`region_step.RegionStep`):

1. sums per tensor of p², m, rms (old values), the factored second
   moments' row and column sums of g², gradient finiteness;
2. centred sums of the old momenta and rms (LSTM features), then the new
   accumulators (which may overwrite the old in place), then the mean
   squares of the MLP's input channels (its normalisers);
3. the per-parameter MLP and the step;

with the loss features, the LSTM hypernetwork and the weight mixing, which
are per tensor, in between. VeLO's state is float32 whatever the
parameters' dtype (the reference keeps it in the parameters' dtype: the
same for float32 parameters).

Example (any backend; arrays may be numpy, they are converted):

>>> from keras_velo import init_theta
>>> from keras_velo.packed.update import init_state, velo_update
>>> theta = init_theta(seed=0)
>>> params = [np.ones((3, 2), np.float32), np.zeros((2,), np.float32)]
>>> state = init_state(theta, [p.shape for p in params], num_steps=100)
>>> grads = [np.full((3, 2), 0.1, np.float32), np.ones((2,), np.float32)]
>>> params, state, diagnostics = velo_update(theta, state, params, grads, loss=1.0)
"""

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_velo.maths.accumulators import Accumulators
from keras_velo.maths.hypernetwork import (
    control_heads,
    lstm_step,
    mix_mlp_weights,
    mix_tensor_features,
)
from keras_velo.maths.loss_features import (
    init_loss_buffer,
    loss_features,
    update_loss_buffer,
)
from keras_velo.maths.parameter_mlp import (
    LANE_TABLE_CHANNELS,
    NUM_CHANNELS,
    ROW_TABLE_CHANNELS,
    normalizers,
)
from keras_velo.maths.skip_guard import keep_unless, kept_counters, update_is_finite
from keras_velo.maths.tensor_features import (
    element_means,
    fraction_features,
    stack_lstm_inputs,
    tensor_statistics_features,
)
from keras_velo.packed.packing import LANES, pack, packed_layout, unpack
from keras_velo.packed.region_step import RegionStep

PARAM_SCALE_EPSILON = 1e-9


class VeLOState(NamedTuple):
    """The whole optimizer state, in the packed layout of the tensors' shapes.

    Fields:
        iteration: `[]` int32, VeLO updates done so far.
        num_steps: `[]` int32, the training horizon VeLO is told.
        loss_buffer: `LossBuffer`.
        factored: `Accumulators` of the factored region (momentum, rms,
            row_moment, col_moment; see `accumulators.py`), or None.
        diagonal: `Accumulators` of the diagonal region (momentum, rms,
            diag_moment), or None.
        lstm_hidden: `[N, H]` float32, one LSTM state row per tensor.
        lstm_cell: `[N, H]` float32.

    `keras_velo.packed.state_view.tensor_states` shows it per tensor.
    """

    iteration: object
    num_steps: object
    loss_buffer: object
    factored: object
    diagonal: object
    lstm_hidden: object
    lstm_cell: object


class StepDiagnostics(NamedTuple):
    """What VeLO saw and decided in one update (for logging, never needed).

    Fields: `fraction_trained` `[]`, `loss_features` `[9]`, `lr_mult` `[N]`
    (the per-tensor step multipliers; 0 on calls that only accumulate),
    `skipped` `[]` bool (the update was dropped: a non-finite loss, gradient,
    step or LSTM state),
    `step_rms` `[N]` (root mean square of each tensor's step; 0 on calls that
    only accumulate), `gradients_finite` `[]` bool (every gradient was finite).
    """

    fraction_trained: object
    loss_features: object
    lr_mult: object
    skipped: object = False
    step_rms: object = None
    gradients_finite: object = True


def _region_accumulators(region):
    """Zeroed numpy `Accumulators` for one region (None if it is empty)."""
    if region.empty:
        return None
    zeros = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    if region.factored:
        return Accumulators(
            momentum=zeros(3, *region.shape),
            rms=zeros(*region.shape),
            row_moment=zeros(3, region.num_runs + 1),
            col_moment=zeros(3, region.num_lane_groups + 1, LANES),
        )
    return Accumulators(
        momentum=zeros(3, *region.shape),
        rms=zeros(*region.shape),
        diag_moment=zeros(3, *region.shape),
    )


def init_state(theta, shapes, num_steps):
    """A fresh `VeLOState` for tensors of the given shapes.

    Accumulators are numpy zeros; the LSTM state rows are the checkpoint's
    `lstm_init_state` tiled to one row per tensor, computed with `keras.ops`
    so that a traced (e.g. perturbed) theta reaches them.
    """
    layout = packed_layout(shapes)
    init = theta["lstm_init_state"]

    def tiled(value):
        value = ops.cast(ops.convert_to_tensor(value), "float32")
        return ops.broadcast_to(value, (layout.num_tensors, value.shape[-1]))

    return VeLOState(
        iteration=np.zeros([], np.int32),
        num_steps=np.asarray(num_steps, np.int32),
        loss_buffer=init_loss_buffer(num_steps),
        factored=_region_accumulators(layout.factored),
        diagonal=_region_accumulators(layout.diagonal),
        lstm_hidden=tiled(init["hidden"]),
        lstm_cell=tiled(init["cell"]),
    )


def to_tensors(structure):
    """Converts numpy leaves to backend tensors (tensors pass through)."""
    return keras.tree.map_structure(
        lambda x: None if x is None else ops.convert_to_tensor(x), structure
    )


def static_counts(layout):
    """`(sizes [N], channel_counts [N, 30])` float32: elements per tensor and channel.

    A factored tensor's row channels have one value per run (`R1 X`), its
    column channels one per `(r1, d0)` (`R1 D0`); all others one per element.
    """
    sizes = np.asarray([max(1, math.prod(s)) for s in layout.shapes], np.float32)
    counts = np.repeat(sizes[:, None], NUM_CHANNELS, axis=1)
    for t in layout.factored.placements:
        for (c,) in ROW_TABLE_CHANNELS:
            counts[t.index, c] = t.num_runs
        for (c,) in LANE_TABLE_CHANNELS:
            counts[t.index, c] = t.num_run_groups * t.run_length
    return sizes, counts


class TensorStatistics(NamedTuple):
    """Per-tensor sums of passes 1 and 2, `[N, ...]` each.

    Fields: `mean_sums` `[N, 5]` (p², m_k, rms; old values), `centred_sums`
    `[N, 6]` (see `tensor_features.CENTRED_STATISTICS`), `channel_sums`
    `[N, 30]` (sums of squares of the MLP's input channels).
    """

    mean_sums: object
    centred_sums: object
    channel_sums: object


def region_steps(layout, state, params, grads):
    """One `RegionStep` per non-empty region, factored first."""
    always_true = state.iteration >= 0
    return [
        RegionStep(region, accumulators, p, g, always_true)
        for region, accumulators, p, g in zip(
            (layout.factored, layout.diagonal), (state.factored, state.diagonal), params, grads
        )
        if not region.empty
    ]


def tensor_statistics(layout, regions, loss=None):
    """Passes 1 and 2 over `regions`, updating their accumulators; `TensorStatistics`.

    With `loss`, the accumulators keep their old values unless the loss and
    every gradient are finite (`RegionStep.update_accumulators`); the
    finiteness of the inputs is the fourth value returned.
    """
    num_tensors = layout.num_tensors
    sizes = ops.convert_to_tensor(static_counts(layout)[0])
    mean_sums = sum(r.first_pass(num_tensors) for r in regions)
    _, mean_momentum, _ = element_means(mean_sums, sizes)
    centred_sums = sum(r.centred_sums(mean_momentum, num_tensors) for r in regions)
    inputs_finite = None
    if loss is not None:
        # Also asks that the statistics of the old state be finite: besides
        # guarding against a corrupted state, the dependence orders the
        # in-place update after the passes that read the old values (XLA
        # would copy them otherwise).
        inputs_finite = ops.all(ops.isfinite(ops.concatenate(
            [ops.reshape(loss, (1,)), ops.reshape(centred_sums, (-1,)),
             ops.reshape(mean_sums, (-1,))]
        )))
        for r in regions:
            inputs_finite = ops.logical_and(inputs_finite, r.gradients_finite)
    for r in regions:
        r.update_accumulators(None if loss is None else ops.logical_not(inputs_finite))
    channel_sums = sum(r.channel_sums(num_tensors) for r in regions)
    return TensorStatistics(mean_sums, centred_sums, channel_sums), inputs_finite


def packed_update(theta, state, layout, params, grads, loss, step_scale=1.0,
                  fraction_trained=None, active=None, skip_non_finite=False):
    """`velo_update` on packed buffers: returns `(new (factored, diagonal), new_state, diagnostics)`.

    Args:
        layout: the `PackedLayout` of the tensors.
        params, grads: `(factored, diagonal)` float32 buffers (`packing.pack`).
        active: None (every tensor takes part) or one static bool per
            tensor: inactive tensors keep their state and LSTM rows, and are
            left out of the cross-tensor max, as if they were not there.
        skip_non_finite: if the loss, a gradient or a step is NaN or
            infinite, return params and state unchanged (`diagnostics.skipped`).
            Not in the reference. Only if the loss and gradients are finite
            but a step is not (e.g. a theta or learning rate that is not) do
            the accumulators advance: they depend only on the gradients, and
            deciding before the update lets the new ones overwrite the old.
    """
    theta, state = to_tensors((theta, state))
    rnn_params = theta["rnn_params"]
    sizes, counts = static_counts(layout)
    sizes, counts = ops.convert_to_tensor(sizes), ops.convert_to_tensor(counts)
    loss = ops.cast(loss, "float32")

    buffer = update_loss_buffer(state.loss_buffer, loss)
    loss_feats = loss_features(buffer)
    if fraction_trained is None:
        fraction = ops.cast(state.iteration, "float32") / ops.cast(state.num_steps, "float32")
    else:
        fraction = ops.cast(fraction_trained, "float32")

    regions = region_steps(layout, state, params, grads)
    statistics, inputs_finite = tensor_statistics(
        layout, regions, loss if skip_non_finite else None
    )
    mean_square, _, _ = element_means(statistics.mean_sums, sizes)
    mean_sums, centred_sums, channel_sums = statistics

    per_tensor = tensor_statistics_features(mean_sums, centred_sums, sizes, layout.shapes)
    lstm_inputs = stack_lstm_inputs(fraction_features(fraction), loss_feats, per_tensor)
    mask = None if active is None else np.asarray(active, bool)
    hidden, cell = lstm_step(
        rnn_params,
        mix_tensor_features(rnn_params, lstm_inputs, mask),
        ops.cast(state.lstm_hidden, "float32"),
        ops.cast(state.lstm_cell, "float32"),
    )
    controls, lr_mult = control_heads(rnn_params, hidden)
    weights = mix_mlp_weights(theta["ff_mod_stack"]["~"], controls)
    first_layer = weights["w0"] * normalizers(channel_sums / counts)[:, :, None]
    param_scale = ops.sqrt(mean_square + PARAM_SCALE_EPSILON)

    # Pass 3: the per-parameter MLP and the step.
    steps, step_squares = [], 0.0
    for r in regions:
        step, squares = r.step(first_layer, weights, lr_mult, param_scale, step_scale)
        steps.append(step)
        step_squares = step_squares + squares
    if mask is not None:
        lr_mult = ops.where(ops.convert_to_tensor(mask), lr_mult, 0.0)
        step_squares = ops.where(ops.convert_to_tensor(mask), step_squares, 0.0)
    gradients_finite = regions[0].gradients_finite
    for r in regions[1:]:
        gradients_finite = ops.logical_and(gradients_finite, r.gradients_finite)

    accumulators = {r.region.factored: r.updated_accumulators() for r in regions}
    new_state = VeLOState(
        iteration=state.iteration + 1,
        num_steps=state.num_steps,
        loss_buffer=buffer,
        factored=accumulators.get(True),
        diagonal=accumulators.get(False),
        lstm_hidden=hidden,
        lstm_cell=cell,
    )
    if mask is not None:
        new_state = keep_inactive(layout, mask, new_state, state)
    new_params = [None, None]
    for r, step in zip(regions, steps):
        p = r.params
        new_params[0 if r.region.factored else 1] = p + ((p - step) - p)
    skipped = ops.convert_to_tensor(False)
    if skip_non_finite:
        # The accumulators were already kept if the loss or a gradient was
        # not finite; a non-finite step also keeps the rest.
        finite = update_is_finite(inputs_finite, step_squares, hidden, cell)
        keep = keep_unless(finite)
        new_params = [
            None if new is None else keep(new, old)
            for new, old in zip(new_params, _packed_params(regions))
        ]
        new_state = kept_counters(finite, new_state, state)
        skipped = ops.logical_not(finite)
    diagnostics = StepDiagnostics(
        fraction, loss_feats, lr_mult, skipped=skipped,
        step_rms=ops.sqrt(step_squares / sizes), gradients_finite=gradients_finite,
    )
    return tuple(new_params), new_state, diagnostics


def _packed_params(regions):
    """`[factored, diagonal]` packed params of the regions (None for an empty one)."""
    params = [None, None]
    for r in regions:
        params[0 if r.region.factored else 1] = r.params
    return params


def keep_inactive(layout, active, new_state, old_state):
    """`new_state` with the slots of inactive tensors taken from `old_state`."""
    active = np.asarray(active, bool)

    def choose(mask, new, old, axis_shape):
        keep = ops.convert_to_tensor(mask.reshape(axis_shape))
        return ops.where(keep, new, old)

    def region_state(region, new, old):
        if new is None:
            return None
        chunk = active[region.chunk_tensor]
        element = (1, -1, 1, 1)
        fields = {
            "momentum": choose(chunk, new.momentum, old.momentum, element),
            "rms": choose(chunk, new.rms, old.rms, element[1:]),
        }
        if region.factored:
            fields["row_moment"] = choose(
                active[region.run_tensor], new.row_moment, old.row_moment, (1, -1)
            )
            fields["col_moment"] = choose(
                active[region.lane_group_tensor], new.col_moment, old.col_moment, (1, -1, 1)
            )
        else:
            fields["diag_moment"] = choose(chunk, new.diag_moment, old.diag_moment, element)
        return new._replace(**fields)

    rows = (-1, 1)
    return new_state._replace(
        factored=region_state(layout.factored, new_state.factored, old_state.factored),
        diagonal=region_state(layout.diagonal, new_state.diagonal, old_state.diagonal),
        lstm_hidden=choose(active, new_state.lstm_hidden, old_state.lstm_hidden, rows),
        lstm_cell=choose(active, new_state.lstm_cell, old_state.lstm_cell, rows),
    )


def velo_update(theta, state, params, grads, loss, step_scale=1.0, fraction_trained=None):
    """Applies one VeLO update; returns `(new_params, new_state, StepDiagnostics)`.

    Args:
        theta: nested dict of VeLO's weights (numpy or backend tensors).
        state: `VeLOState` for these tensors (`init_state`).
        params: list of the current parameter tensors (any float dtype).
        grads: list of gradients, same shapes.
        loss: scalar training loss of this step.
        step_scale: multiplies every step (the optimizer's learning rate;
            1.0 is the reference).
        fraction_trained: overrides `iteration / num_steps` (e.g. elapsed
            time / time budget); None is the reference.

    New params are `p + ((p - step) - p)`, the reference optax adapter's
    round trip, and keep the dtype of the old ones.
    """
    params, grads = list(params), list(grads)
    layout = packed_layout([tuple(p.shape) for p in params])
    state, params, grads = to_tensors((state, params, grads))
    always_true = state.iteration >= 0
    new_packed, new_state, diagnostics = packed_update(
        theta, state, layout, pack(layout, params, always_true),
        pack(layout, grads, always_true), loss, step_scale, fraction_trained,
    )
    dtypes = [keras.backend.standardize_dtype(p.dtype) for p in params]
    return unpack(layout, *new_packed, dtypes), new_state, diagnostics
