"""Each stage of the VeLO step (the pure maths) against the reference's intermediates.

`shared/golden/intermediates_*.npz` hold what the reference computed inside
updates 1-4 (perturbed theta) and 1-2 (random theta). Each stage here gets
the reference's own inputs for that stage (old state, params, gradients,
loss features, LSTM inputs, controls, mixed MLP weights), packed into
keras-velo's layout, so a failure points at one stage. Tolerances are
relative to the largest magnitude of the quantity (the reference ran
eagerly, so its own jit/eager gap is ~1e-7 relative).
"""

import keras
import numpy as np
import pytest
from keras import ops

import golden_data
from keras_velo.maths.accumulators import Accumulators, update_momenta
from keras_velo.maths.hypernetwork import (
    control_heads,
    lstm_step,
    mix_mlp_weights,
    mix_tensor_features,
)
from keras_velo.maths.loss_features import LossBuffer, loss_features, update_loss_buffer
from keras_velo.packed.packing import pack, packed_layout, unpack
from keras_velo.maths.parameter_mlp import (
    LANE_TABLE_CHANNELS,
    MLP_INPUT_GROUP_NAMES,
    ROW_TABLE_CHANNELS,
    normalizers,
    parameter_step,
    table_channels,
)
from keras_velo.packed.state_view import col_moment_view, pack_accumulators, row_moment_view
from keras_velo.maths.tensor_features import (
    fraction_features,
    stack_lstm_inputs,
    tensor_statistics_features,
)
from keras_velo.maths.theta import MLP_INPUT_GROUP_WIDTHS
from keras_velo.packed.update import (
    VeLOState,
    packed_update,
    region_steps,
    static_counts,
    tensor_statistics,
    to_tensors,
)

CASES = [("perturbed", t) for t in (1, 2, 3, 4)] + [("random", t) for t in (1, 2)]
RTOL = 2e-5


def _np(x):
    return ops.convert_to_numpy(x)


def _close(actual, expected, what, rtol=RTOL):
    expected = np.asarray(expected, np.float32)
    atol = rtol * max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(_np(actual), expected, rtol=rtol, atol=atol, err_msg=what)


class Stage:
    """The reference's inputs and intermediates of update `step` (1-based), packed."""

    def __init__(self, setting, step):
        self.trajectory = golden_data.load(f"traj_{setting}_n100")
        self.intermediates = golden_data.load(f"intermediates_{setting}_n100")
        self.theta = keras.tree.map_structure(
            ops.convert_to_tensor, golden_data.theta(f"velo_{setting}_theta")
        )
        self.step = step
        self.keys = golden_data.leaf_order()
        self.shapes = [self.param(k).shape for k in self.keys]
        self.layout = packed_layout(self.shapes)
        self.sizes, self.counts = static_counts(self.layout)

    def out(self, name):
        return self.intermediates[f"step{self.step}/{name}"]

    def tensor_out(self, key, name):
        return self.out(f"tensor/{key}/{name}")

    def state(self, name):
        """State before this update."""
        return self.trajectory[f"state/{name}"][self.step - 1]

    def param(self, key):
        return self.trajectory[f"params/{key}"][self.step - 1]

    def grad(self, key):
        return self.trajectory[f"grads/{key}"][self.step - 1]

    def old_accumulators(self, key):
        """The golden old state of one tensor in keras-velo's per-tensor layout."""
        shape = self.param(key).shape

        def slot(name):
            value = self.state(f"{name}/{key}")
            if value.size == 0:
                return None
            value = golden_data.to_keras_velo_layout(name, value)
            if name in ("m", "v_diag"):
                value = value.reshape((3,) + shape)
            elif name == "rms":
                value = value.reshape(shape)
            return value

        return Accumulators(slot("m"), slot("rms"), slot("v_row"), slot("v_col"), slot("v_diag"))

    def packed_state(self):
        factored, diagonal = pack_accumulators(
            self.shapes, [self.old_accumulators(k) for k in self.keys]
        )
        lstm = [self.state(f"lstm_{kind}") for kind in ("hidden", "cell")]
        buffer = LossBuffer(
            *[self.state(f"loss_{n}") for n in ("means", "running_min", "decays", "iteration")]
        )
        state = VeLOState(
            self.state("iteration"), self.state("num_steps"), buffer, factored, diagonal, *lstm
        )
        return to_tensors(state)

    def regions(self):
        """`RegionStep`s on the reference's old state, params and gradients (passes 1-2 run)."""
        params = pack(self.layout, [ops.convert_to_tensor(self.param(k)) for k in self.keys])
        grads = pack(self.layout, [ops.convert_to_tensor(self.grad(k)) for k in self.keys])
        regions = region_steps(self.layout, self.packed_state(), params, grads)
        statistics, _ = tensor_statistics(self.layout, regions)
        return regions, statistics

    def per_tensor(self, region_values):
        """Per-tensor numpy arrays from `{is_factored: packed array}` (None where absent)."""
        tensors = unpack(self.layout, region_values.get(True), region_values.get(False))
        return [None if x is None else _np(x) for x in tensors]


@pytest.fixture(params=CASES, ids=[f"{s}-step{t}" for s, t in CASES])
def stage(request):
    return Stage(*request.param)


def test_loss_buffer_and_features(stage):
    buffer = LossBuffer(
        *[
            ops.convert_to_tensor(stage.state(f"loss_{n}"))
            for n in ("means", "running_min", "decays", "iteration")
        ]
    )
    loss = stage.trajectory["losses"][stage.step - 1]
    updated = update_loss_buffer(buffer, loss)
    _close(updated.means, stage.trajectory["state/loss_means"][stage.step], "loss means")
    _close(loss_features(updated), stage.out("loss_features"), "loss features", 1e-5)
    fraction = stage.state("iteration") / np.float32(stage.state("num_steps"))
    _close(fraction, stage.out("fraction_trained"), "fraction trained")


def test_per_tensor_lstm_features(stage):
    _, statistics = stage.regions()
    per_tensor = tensor_statistics_features(
        statistics.mean_sums, statistics.centred_sums, ops.convert_to_tensor(stage.sizes),
        stage.shapes,
    )
    inputs = stack_lstm_inputs(
        fraction_features(ops.convert_to_tensor(stage.out("fraction_trained"))),
        ops.convert_to_tensor(stage.out("loss_features")),
        per_tensor,
    )
    _close(inputs, stage.out("rnn/stack_input"), "LSTM input features", 1e-5)


def test_hypernetwork(stage):
    rnn = stage.theta["rnn_params"]
    features = ops.convert_to_tensor(stage.out("rnn/stack_input"))
    _close(mix_tensor_features(rnn, features), stage.out("rnn/lstm_input"), "mix layers")
    hidden, cell = lstm_step(
        rnn,
        ops.convert_to_tensor(stage.out("rnn/lstm_input")),
        ops.convert_to_tensor(stage.out("rnn/lstm_prev_hidden")),
        ops.convert_to_tensor(stage.out("rnn/lstm_prev_cell")),
    )
    _close(hidden, stage.out("rnn/lstm_out_hidden"), "LSTM hidden")
    _close(cell, stage.out("rnn/lstm_out_cell"), "LSTM cell")
    controls, lr_mult = control_heads(rnn, ops.convert_to_tensor(stage.out("rnn/lstm_out_hidden")))
    _close(controls, stage.out("rnn/controls"), "controls")
    _close(lr_mult, stage.out("rnn/lr_mult"), "lr_mult")


def test_the_lstm_state_carries_over(stage):
    """`use_bugged_next_lstm_state=False`: an update starts from the last update's LSTM state.

    From the reference's state before this update, `packed_update` gives
    the reference's next LSTM state; restarting the LSTM from the
    checkpoint's init state (what the bugged variant does) would not.
    """
    if stage.step == 1:
        pytest.skip("the first update starts from the checkpoint's init state")
    params = pack(stage.layout, [ops.convert_to_tensor(stage.param(k)) for k in stage.keys])
    grads = pack(stage.layout, [ops.convert_to_tensor(stage.grad(k)) for k in stage.keys])
    loss = stage.trajectory["losses"][stage.step - 1]
    carried = stage.packed_state()
    init = stage.theta["lstm_init_state"]
    restarted = carried._replace(
        lstm_hidden=ops.broadcast_to(init["hidden"], carried.lstm_hidden.shape),
        lstm_cell=ops.broadcast_to(init["cell"], carried.lstm_cell.shape),
    )
    expected = stage.out("rnn/lstm_out_hidden")
    _, state, _ = packed_update(stage.theta, carried, stage.layout, params, grads, loss)
    _close(state.lstm_hidden, expected, "LSTM state after the update")
    _, state, _ = packed_update(stage.theta, restarted, stage.layout, params, grads, loss)
    assert np.max(np.abs(_np(state.lstm_hidden) - expected)) > 1e-3


def test_the_dead_mix_layer_changes_nothing(stage):
    """Quirk: the reference's first mix layer (`linear`) is computed and discarded."""
    rnn = dict(stage.theta["rnn_params"])
    features = ops.convert_to_tensor(stage.out("rnn/stack_input"))
    reference = mix_tensor_features(rnn, features)
    rnn["linear"] = {"w": ops.ones((30, 512)) * 7.0, "b": ops.ones((512,))}
    np.testing.assert_array_equal(_np(mix_tensor_features(rnn, features)), _np(reference))


def test_mlp_weight_mixing(stage):
    weights = mix_mlp_weights(
        stage.theta["ff_mod_stack"]["~"], ops.convert_to_tensor(stage.out("rnn/controls"))
    )
    for j, key in enumerate(stage.keys):
        expected_w0 = np.concatenate(
            [stage.tensor_out(key, f"mixed_weights/w0__{i}") for i in range(14)], axis=0
        )
        _close(weights["w0"][j], expected_w0, f"{key}: mixed w0", 1e-5)
        for name in ("b0", "w1", "b1", "w2", "b2"):
            expected = stage.tensor_out(key, f"mixed_weights/{name}")
            _close(weights[name][j], expected, f"{key}: mixed {name}", 1e-5)


def _per_decay(stage, regions, field):
    """Per tensor `[3, *S]` of an element-wise per-decay field of the new accumulators."""
    per_k = [
        stage.per_tensor({r.region.factored: getattr(r, field)[k] for r in regions})
        for k in range(3)
    ]
    return [
        None if per_k[0][i] is None else np.stack([per_k[k][i] for k in range(3)])
        for i in range(len(stage.keys))
    ]


def _channels(stage, regions):
    """All 30 MLP input channels per tensor, each broadcast to the tensor's shape."""
    channels = [[None] * 30 for _ in stage.keys]
    for r in regions:
        for indices, value in zip(r.channel_map, r.element_channels()):
            tensors = stage.per_tensor({r.region.factored: value})
            for t in r.region.placements:
                for c in indices:
                    channels[t.index][c] = tensors[t.index]
        if not r.region.factored:
            continue
        for table, views, channel_map, axis_of in (
            (r.row_moment, row_moment_view, ROW_TABLE_CHANNELS, lambda t: t.axes[-1]),
            (r.col_moment, col_moment_view, LANE_TABLE_CHANNELS, lambda t: t.axes[-2]),
        ):
            values = [_np(x) for x in table_channels(table)]
            for t in r.region.placements:
                for (c,), value in zip(channel_map, values):
                    view = views(t, value[None])[0]
                    channels[t.index][c] = np.broadcast_to(
                        np.expand_dims(view, axis_of(t)), t.shape
                    )
    return channels


def test_accumulators(stage):
    regions, _ = stage.regions()
    momentum = _per_decay(stage, regions, "momentum")
    rms = stage.per_tensor({r.region.factored: r.rms for r in regions})
    channels = _channels(stage, regions)
    placements = {t.index: t for r in regions for t in r.region.placements}
    tables = {r.region.factored: r for r in regions}
    diag = _per_decay(stage, [r for r in regions if not r.region.factored], "diag_moment") \
        if False in tables else None
    for j, key in enumerate(stage.keys):
        shape = stage.shapes[j]
        ff = lambda name: stage.tensor_out(key, f"ff_arg/{name}")  # noqa: E731
        _close(momentum[j], np.moveaxis(ff("m"), -1, 0).reshape((3,) + shape), f"{key}: m")
        _close(rms[j], ff("rms").reshape(shape), f"{key}: rms")
        if len(shape) >= 2:
            t, r = placements[j], tables[True]
            _close(row_moment_view(t, _np(r.row_moment)), np.moveaxis(ff("fac_vec_row"), -1, 0),
                   f"{key}: v_row")
            _close(col_moment_view(t, _np(r.col_moment)), np.moveaxis(ff("fac_vec_col"), -1, 0),
                   f"{key}: v_col")
            assert ff("fac_vec_v").size == 0
        else:
            expected = np.moveaxis(ff("fac_vec_v"), -1, 0).reshape((3,) + shape)
            _close(diag[j], expected, f"{key}: v_diag")
        expected = np.moveaxis(ff("fac_g"), -1, 0).reshape((3,) + shape)
        _close(np.stack([channels[j][c] for c in (11, 12, 13)]), expected, f"{key}: fac_g")


def test_mlp_inputs_and_normalisation(stage):
    regions, statistics = stage.regions()
    channels = _channels(stage, regions)
    norms = _np(normalizers(statistics.channel_sums / ops.convert_to_tensor(stage.counts)))
    for j, key in enumerate(stage.keys):
        shape = stage.shapes[j] or ()
        offset = 0
        for i, (name, width) in enumerate(zip(MLP_INPUT_GROUP_NAMES, MLP_INPUT_GROUP_WIDTHS)):
            group = np.stack(
                [np.broadcast_to(channels[j][c], shape) for c in range(offset, offset + width)],
                axis=-1,
            )
            raw = stage.tensor_out(key, f"mlp_in_raw/{i:02d}_{name}").reshape(shape + (width,))
            norm = stage.tensor_out(key, f"mlp_in_norm/{i:02d}_{name}").reshape(shape + (width,))
            _close(group, raw, f"{key}: input group {name}")
            _close(group * norms[j, offset : offset + width], norm, f"{key}: normalised {name}")
            offset += width


def test_mlp_outputs_and_step(stage):
    regions, statistics = stage.regions()
    weights = {
        name: ops.convert_to_tensor(
            np.stack([stage.tensor_out(k, f"mixed_weights/{name}") for k in stage.keys])
        )
        for name in ("b0", "w1", "b1", "w2", "b2")
    }
    w0 = np.stack(
        [
            np.concatenate(
                [stage.tensor_out(k, f"mixed_weights/w0__{i}") for i in range(14)], axis=0
            )
            for k in stage.keys
        ]
    )
    norms = normalizers(statistics.channel_sums / ops.convert_to_tensor(stage.counts))
    first_layer = ops.convert_to_tensor(w0) * norms[:, :, None]
    outputs = {r.region.factored: r.direction_and_magnitude(first_layer, weights) for r in regions}
    direction = stage.per_tensor({f: out[0] for f, out in outputs.items()})
    magnitude = stage.per_tensor({f: out[1] for f, out in outputs.items()})
    for j, key in enumerate(stage.keys):
        shape = stage.shapes[j]
        _close(direction[j], stage.tensor_out(key, "direction").reshape(shape), f"{key}: direction")
        _close(magnitude[j], stage.tensor_out(key, "magnitude").reshape(shape), f"{key}: magnitude")

        p = stage.param(key)
        step = parameter_step(
            ops.convert_to_tensor(stage.tensor_out(key, "direction")),
            ops.convert_to_tensor(stage.tensor_out(key, "magnitude")),
            ops.sqrt(ops.mean(ops.square(ops.convert_to_tensor(p))) + 1e-9),
            ops.convert_to_tensor(stage.tensor_out(key, "lr_mult")),
        )
        _close(step, stage.tensor_out(key, "step_recomputed"), f"{key}: step", 1e-6)
        new_p = p - _np(step).reshape(p.shape)
        expected = stage.tensor_out(key, "new_p")
        tolerance = 2 * np.spacing(np.abs(expected)) + 1e-6 * np.abs(_np(step)).max()
        assert np.all(np.abs(new_p - expected) <= tolerance), key


@pytest.mark.parametrize("setting", ["random", "perturbed"])
def test_rms_mixes_in_float32_like_the_reference(setting):
    """`rms <- 0.999 rms + (1 - 0.999) g²` with `1 - 0.999` taken in float32
    (0.00099998713, the reference's float32 decays), not 0.001: after the
    clipped 2,500 gradient of c_vec7 (update 5) the two differ by 1.3e-5,
    inside the state tolerance but not the reference. Every tensor, every
    update, against the reference's own rms (bit-equal on JAX here)."""
    trajectory = golden_data.load(f"traj_{setting}_n100")
    for key in golden_data.leaf_order():
        for t in range(golden_data.NUM_UPDATES):
            old_rms = trajectory[f"state/rms/{key}"][t][..., 0]
            old_momentum = golden_data.to_keras_velo_layout("m", trajectory[f"state/m/{key}"][t])
            gradient = np.clip(trajectory[f"grads/{key}"][t], -1000, 1000)
            _, rms = update_momenta(
                ops.convert_to_tensor(old_momentum), ops.convert_to_tensor(old_rms),
                ops.convert_to_tensor(gradient),
            )
            expected = trajectory[f"state/rms/{key}"][t + 1][..., 0]
            np.testing.assert_allclose(_np(rms), expected, rtol=2e-6, err_msg=f"{key}, update {t + 1}")
