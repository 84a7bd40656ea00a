"""Each stage of the VeLO step (the pure maths) against the reference's intermediates.

`shared/golden/intermediates_*.npz` hold what the reference computed inside
updates 1-4 (perturbed theta) and 1-2 (random theta). Each stage here gets
the reference's own inputs for that stage, so a failure points at one
function. Tolerances are relative to the largest magnitude of the quantity
(the reference ran eagerly, so its own jit/eager gap is ~1e-7 relative).
"""

import keras
import numpy as np
import pytest
from keras import ops

import golden_data
from keras_velo.accumulators import Accumulators, clip_gradient, update_accumulators
from keras_velo.hypernetwork import (
    control_heads,
    lstm_step,
    mix_mlp_weights,
    mix_tensor_features,
)
from keras_velo.loss_features import LossBuffer, loss_features, update_loss_buffer
from keras_velo.parameter_mlp import (
    MLP_INPUT_GROUP_NAMES,
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
from keras_velo.theta import MLP_INPUT_GROUP_WIDTHS

CASES = [("perturbed", t) for t in (1, 2, 3, 4)] + [("random", t) for t in (1, 2)]
RTOL = 2e-5


def _np(x):
    return ops.convert_to_numpy(x)


def _close(actual, expected, what, rtol=RTOL):
    expected = np.asarray(expected, np.float32)
    atol = rtol * max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(_np(actual), expected, rtol=rtol, atol=atol, err_msg=what)


class Stage:
    """The reference's inputs and intermediates of update `step` (1-based)."""

    def __init__(self, setting, step):
        self.trajectory = golden_data.load(f"traj_{setting}_n100")
        self.intermediates = golden_data.load(f"intermediates_{setting}_n100")
        self.theta = keras.tree.map_structure(
            ops.convert_to_tensor, golden_data.theta(f"velo_{setting}_theta")
        )
        self.step = step
        self.keys = golden_data.leaf_order()

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
        def slot(name):
            value = self.state(f"{name}/{key}")
            if value.size == 0:
                return None
            value = golden_data.to_keras_velo_layout(name, value)
            shape = self.param(key).shape or (1,)
            if name in ("m", "v_diag"):
                value = value.reshape((3,) + shape)
            elif name == "rms":
                value = value.reshape(shape)
            return ops.convert_to_tensor(value)

        return Accumulators(slot("m"), slot("rms"), slot("v_row"), slot("v_col"), slot("v_diag"))


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
    per_tensor = []
    for key in stage.keys:
        p = ops.convert_to_tensor(stage.param(key).reshape(stage.param(key).shape or (1,)))
        acc = stage.old_accumulators(key)
        per_tensor.append(
            tensor_statistics_features(
                ops.mean(ops.square(p)), acc.momentum, acc.rms, stage.param(key).shape
            )
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
    """`use_bugged_next_lstm_state=False`: each step starts from the last step's state."""
    if stage.step == 1:
        pytest.skip("the first update starts from the checkpoint's init state")
    previous = stage.intermediates[f"step{stage.step - 1}/rnn/lstm_out_hidden"]
    np.testing.assert_array_equal(stage.out("rnn/lstm_prev_hidden"), previous)


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


def _updated(stage, key):
    work_shape = stage.param(key).shape or (1,)
    p = ops.convert_to_tensor(stage.param(key).reshape(work_shape))
    g = clip_gradient(ops.convert_to_tensor(stage.grad(key).reshape(work_shape)))
    accumulators, preconditioners = update_accumulators(stage.old_accumulators(key), g)
    return p, g, accumulators, preconditioners, work_shape


def test_accumulators(stage):
    for key in stage.keys:
        _, g, acc, pre, work_shape = _updated(stage, key)
        ff = lambda name: stage.tensor_out(key, f"ff_arg/{name}")  # noqa: E731
        _close(acc.momentum, np.moveaxis(ff("m"), -1, 0).reshape((3,) + work_shape), f"{key}: m")
        _close(acc.rms, ff("rms").reshape(work_shape), f"{key}: rms")
        if acc.diag_moment is None:
            _close(acc.row_moment, np.moveaxis(ff("fac_vec_row"), -1, 0), f"{key}: v_row")
            _close(acc.col_moment, np.moveaxis(ff("fac_vec_col"), -1, 0), f"{key}: v_col")
            assert ff("fac_vec_v").size == 0
        else:
            expected = np.moveaxis(ff("fac_vec_v"), -1, 0).reshape((3,) + work_shape)
            _close(acc.diag_moment, expected, f"{key}: v_diag")
        expected = np.moveaxis(ff("fac_g"), -1, 0).reshape((3,) + work_shape)
        _close(g[None] * pre.row * (1.0 if pre.col is None else pre.col), expected, f"{key}: fac_g")


def test_mlp_inputs_and_normalisation(stage):
    for key in stage.keys:
        p, g, acc, pre, work_shape = _updated(stage, key)
        channels = mlp_input_channels(p, g, acc, pre)
        normalizers = _np(channel_normalizers(channels))
        offset = 0
        for i, (name, width) in enumerate(zip(MLP_INPUT_GROUP_NAMES, MLP_INPUT_GROUP_WIDTHS)):
            group = np.stack(
                [np.broadcast_to(_np(c), work_shape) for c in channels[offset : offset + width]],
                axis=-1,
            )
            raw = stage.tensor_out(key, f"mlp_in_raw/{i:02d}_{name}").reshape(work_shape + (width,))
            norm = stage.tensor_out(key, f"mlp_in_norm/{i:02d}_{name}").reshape(work_shape + (width,))
            _close(group, raw, f"{key}: input group {name}")
            _close(group * normalizers[offset : offset + width], norm, f"{key}: normalised {name}")
            offset += width


def test_mlp_outputs_and_step(stage):
    for key in stage.keys:
        p, g, acc, pre, work_shape = _updated(stage, key)
        channels = mlp_input_channels(p, g, acc, pre)
        weights = {
            "w0": np.concatenate(
                [stage.tensor_out(key, f"mixed_weights/w0__{i}") for i in range(14)], axis=0
            ),
            **{n: stage.tensor_out(key, f"mixed_weights/{n}") for n in ("b0", "w1", "b1", "w2", "b2")},
        }
        weights = {n: ops.convert_to_tensor(w) for n, w in weights.items()}
        direction, magnitude = mlp_direction_and_magnitude(
            channels, channel_normalizers(channels), weights
        )
        _close(direction, stage.tensor_out(key, "direction").reshape(work_shape), f"{key}: direction")
        _close(magnitude, stage.tensor_out(key, "magnitude").reshape(work_shape), f"{key}: magnitude")

        step = parameter_step(
            ops.convert_to_tensor(stage.tensor_out(key, "direction")),
            ops.convert_to_tensor(stage.tensor_out(key, "magnitude")),
            ops.sqrt(ops.mean(ops.square(p)) + 1e-9),
            ops.convert_to_tensor(stage.tensor_out(key, "lr_mult")),
        )
        _close(step, stage.tensor_out(key, "step_recomputed"), f"{key}: step", 1e-6)
        new_p = stage.param(key) - _np(step).reshape(stage.param(key).shape)
        expected = stage.tensor_out(key, "new_p")
        tolerance = 2 * np.spacing(np.abs(expected)) + 1e-6 * np.abs(_np(step)).max()
        assert np.all(np.abs(new_p - expected) <= tolerance), key
