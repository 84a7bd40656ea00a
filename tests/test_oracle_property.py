"""VeLO (the Keras optimizer, packed update) against an independent per-tensor oracle.

The golden set has ten tensors and no gradient beyond 2,500; these tests
draw trees of shapes it does not cover (ranks 0-5, size-1 axes anywhere,
tensors from one element to tens of thousands, factored and diagonal mixed)
and feed them gradient outliers up to 1e4 and loss spikes, then compare
every update with `velo_oracle` (numpy, one tensor at a time, written from
the spec): the parameters and the whole state, at the golden tests'
tolerances, with the golden theta or the bundled one, some with coupled
weight decay. One fixed case replays the report of issue 17. The oracle itself is checked against the golden trajectories
first, so a bug shared by both cannot hide.

Each case goes through the backend's real path (`optimizer_runner`: jitted
`stateless_apply` on JAX, XLA on TensorFlow, eager on PyTorch), the skip
guard included: the bug this file was written for (issue 17) lived there.
"""

import math

import keras
import numpy as np
import pytest

import golden_data
import velo_oracle
from keras_velo import VeLO
from keras_velo.weights.pretrained import resolve_weights
from optimizer_runner import run_updates
from test_golden_trajectories import LSTM_ATOL, STATE_RTOL

NUM_CASES = 6
NUM_UPDATES = 12
# Axis sizes below, at and above the packing's 16 lanes / 16 rows.
AXIS_SIZES = (2, 3, 4, 5, 7, 9, 15, 16, 17, 31, 33, 64)
MAX_ELEMENTS = 4096
LARGE_SHAPES = ((300, 1, 70), (1, 2049), (2, 3, 1, 1600), (100, 257))
THETAS = ("velo_perturbed_theta", "bundled")


def random_shape(rng, rank):
    """Axes of size 1 with probability 0.35, else a size from `AXIS_SIZES`."""
    while True:
        shape = tuple(
            1 if rng.random() < 0.35 else int(rng.choice(AXIS_SIZES)) for _ in range(rank)
        )
        if math.prod(shape) <= MAX_ELEMENTS:
            return shape


def random_tree(seed):
    """3-7 shapes of random ranks, one of them large, and at least one factored
    tensor with an axis of size 1 (whose index is returned too)."""
    rng = np.random.default_rng(seed)
    shapes = [random_shape(rng, int(rng.integers(0, 6))) for _ in range(int(rng.integers(2, 6)))]
    shapes.append(LARGE_SHAPES[seed % len(LARGE_SHAPES)])
    size_one = [i for i, s in enumerate(shapes) if len(s) >= 2 and 1 in s]
    if not size_one:
        rank = int(rng.integers(2, 6))
        shape = list(random_shape(rng, rank))
        shape[int(rng.integers(0, rank))] = 1
        shapes.append(tuple(shape))
        size_one = [len(shapes) - 1]
    order = rng.permutation(len(shapes))
    shapes = [shapes[i] for i in order]
    return shapes, int(np.argsort(order)[size_one[0]])


def random_inputs(seed, shapes, outlier_tensor):
    """Initial params, per-update gradients and losses, with outliers and spikes.

    Gradients are `scale * N(0, 1)` with a scale per tensor (1e-4 to 1); on
    each update, with probability 0.4, one element of one tensor becomes
    `±10^u`, u in [2, 4] (VeLO clips at 1e3); update 2 always puts one in
    `outlier_tensor`. Losses fall from ~3 with noise; about one in six is
    a spike of 3-50x. Some tensors start at zero (as biases do).
    """
    rng = np.random.default_rng(1000 + seed)
    params = [
        np.zeros(s, np.float32) if rng.random() < 0.15 and len(s) <= 1
        else np.asarray(rng.standard_normal(s) / math.sqrt(max(1, s[-1] if s else 1)), np.float32)
        for s in shapes
    ]
    scales = 10.0 ** rng.uniform(-4, 0, len(shapes))
    grads, losses = [], []
    for t in range(NUM_UPDATES):
        step = [(scale * rng.standard_normal(s)).astype(np.float32)
                for scale, s in zip(scales, shapes)]
        targets = [outlier_tensor] if t == 2 else []
        if rng.random() < 0.4:
            targets.append(int(rng.integers(len(shapes))))
        for j in targets:
            flat = step[j].reshape(-1)
            flat[int(rng.integers(flat.size))] = rng.choice([-1, 1]) * 10.0 ** rng.uniform(2, 4)
        grads.append(step)
        loss = 3.0 * math.exp(-t / 8) + 0.05 * rng.standard_normal()
        if rng.random() < 1 / 6:
            loss *= rng.uniform(3, 50)
        losses.append(np.float32(loss))
    return params, grads, losses


def _theta(name):
    if name == "bundled":
        return resolve_weights("bundled")[0]
    return golden_data.theta(name)


def issue_17_inputs():
    """The report's set-up: size-1 factored tensors among others, gradients
    0.1 N(0, 1), a loss falling from 3, one element of 3000 at update 3 in
    each size-1 tensor (before the fix every update after it was skipped)."""
    shapes = [(1, 1), (1, 7), (7, 1), (3, 1, 1), (), (128,), (10, 10), (32, 1, 16)]
    rng = np.random.default_rng(17)
    params = [np.asarray(rng.standard_normal(s), np.float32) for s in shapes]
    grads, losses = [], []
    for t in range(NUM_UPDATES):
        step = [np.asarray(0.1 * rng.standard_normal(s), np.float32) for s in shapes]
        if t == 2:
            for j in range(4):
                step[j].reshape(-1)[0] = 3000.0
        grads.append(step)
        losses.append(np.float32(3.0 - 0.1 * t))
    return shapes, params, grads, losses


def compare(shapes, params, grads, losses, theta, total_steps, weight_decay=0.0,
            **velo_kwargs):
    """`(shapes, per-update oracle (params, state), per-update VeLO (params, state,
    diagnostics), init)`; `velo_kwargs` go to `VeLO` (e.g. `compile_update`)."""
    oracle, state, current = [], velo_oracle.init_state(theta, shapes, total_steps), params
    for g, loss in zip(grads, losses):
        current, state = velo_oracle.update(theta, state, current, g, loss, weight_decay)
        oracle.append((current, state))

    variables = [keras.Variable(p, name=f"t{i}") for i, p in enumerate(params)]
    optimizer = VeLO(total_steps=total_steps, weights=theta, weight_decay=weight_decay,
                     **velo_kwargs)
    velo = []

    def record(t):
        velo.append(([keras.ops.convert_to_numpy(v.value) for v in variables],
                     optimizer.velo_state(), optimizer.diagnostics()))

    run_updates(optimizer, variables, grads, losses, record)
    return shapes, oracle, velo, params


CASES = ["issue17"] + [f"tree{seed}" for seed in range(NUM_CASES)]


def run_case(name, **velo_kwargs):
    """`compare` on one of `CASES`."""
    if name == "issue17":
        return compare(*issue_17_inputs(), _theta("velo_perturbed_theta"), total_steps=250,
                       **velo_kwargs)
    seed = int(name[len("tree"):])
    shapes, outlier_tensor = random_tree(seed)
    params, grads, losses = random_inputs(seed, shapes, outlier_tensor)
    return compare(
        shapes, params, grads, losses, _theta(THETAS[seed % 2]),
        total_steps=(20, 100, 1000)[seed % 3],
        weight_decay=1e-2 if seed % 4 == 3 else 0.0, **velo_kwargs,
    )


@pytest.fixture(scope="module", params=CASES)
def case(request):
    return run_case(request.param)


def _close(actual, expected, what, rtol=STATE_RTOL):
    atol = rtol * max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def test_the_oracle_follows_the_golden_trajectories():
    """The oracle is the reference on every golden file it can run (not the
    >150k-step accumulation one: that is the wrapper, not the update)."""
    for name in golden_data.TRAJECTORIES:
        if "accum" in name:
            continue
        data, info = golden_data.load(name), golden_data.trajectory_info(name)
        keys = golden_data.leaf_order()
        theta = golden_data.theta(info["theta"])
        params = [data[f"init/{k}"] for k in keys]
        state = velo_oracle.init_state(theta, [p.shape for p in params], info["num_steps"])
        for t in range(golden_data.NUM_UPDATES):
            grads = [data[f"grads/{k}"][t] for k in keys]
            params, state = velo_oracle.update(
                theta, state, params, grads, data["losses"][t], info["weight_decay"]
            )
            for j, key in enumerate(keys):
                reference = data[f"params/{key}"]
                tolerance = golden_data.param_tolerance(
                    reference[t + 1], reference[0], reference[-1], 1e-4
                )
                assert np.all(np.abs(params[j] - reference[t + 1]) <= tolerance), (name, key, t)


def test_the_trees_cover_what_the_golden_set_does_not():
    shapes = [s for seed in range(NUM_CASES) for s in random_tree(seed)[0]]
    ranks = {len(s) for s in shapes}
    assert ranks == {0, 1, 2, 3, 4, 5}, ranks
    assert any(len(s) >= 2 and s[0] == 1 for s in shapes)
    assert any(len(s) >= 2 and s[-1] == 1 for s in shapes)
    assert any(len(s) >= 3 and 1 in s[1:-1] for s in shapes)
    assert any(len(s) >= 2 and all(d == 1 for d in s) for s in shapes)
    assert max(math.prod(s) for s in shapes) > 20_000


def test_params_follow_the_oracle_at_every_update(case):
    shapes, oracle, velo, initial = case
    for j, shape in enumerate(shapes):
        final = oracle[-1][0][j]
        displacement = np.max(np.abs(final - initial[j]))
        for t, ((expected, _), (actual, _, _)) in enumerate(zip(oracle, velo)):
            tolerance = 2 * np.spacing(np.abs(expected[j])) + 1e-3 * displacement
            error = np.abs(actual[j] - expected[j])
            assert np.all(error <= tolerance), (
                f"tensor {j} {shape} after update {t + 1}: error {error.max():.3g}, "
                f"tolerance {tolerance.min():.3g}, displacement {displacement:.3g}"
            )


def test_every_tensor_moves_beyond_the_tolerance(case):
    """A VeLO leaving a tensor unchanged (or skipping an update) fails the test above."""
    shapes, oracle, _, initial = case
    for j, shape in enumerate(shapes):
        final = oracle[-1][0][j]
        displacement = np.max(np.abs(final - initial[j]))
        tolerance = 2 * np.spacing(np.abs(final)) + 1e-3 * displacement
        assert np.any(np.abs(final - initial[j]) > tolerance), (j, shape)
        before_last = oracle[-2][0][j]
        assert np.any(np.abs(final - before_last) > tolerance), (j, shape, "last update")


def test_state_follows_the_oracle_at_every_update(case):
    shapes, oracle, velo, _ = case
    for t, ((_, expected), (_, actual, _)) in enumerate(zip(oracle, velo)):
        where = f"after update {t + 1}"
        assert int(actual.iteration) == expected.iteration, where
        assert int(actual.num_steps) == expected.num_steps, where
        buffer, reference = actual.loss_buffer, expected.loss_buffer
        assert int(buffer.iteration) == reference.iteration, where
        _close(buffer.decays, reference.decays, f"{where}: loss decays", 1e-6)
        _close(buffer.means, reference.means, f"{where}: loss means")
        _close(buffer.running_min, reference.running_min, f"{where}: loss running min")
        for j, shape in enumerate(shapes):
            mine, ref = actual.tensors[j].accumulators, expected.tensors[j]
            what = f"{where}: tensor {j} {shape}"
            _close(mine.momentum, np.moveaxis(ref.m, -1, 0), f"{what}: m")
            _close(mine.rms, ref.rms[..., 0], f"{what}: rms")
            if len(shape) >= 2:
                _close(mine.row_moment, np.moveaxis(ref.v_row, -1, 0), f"{what}: v_row")
                _close(mine.col_moment, np.moveaxis(ref.v_col, -1, 0), f"{what}: v_col")
                assert mine.diag_moment is None, what
            else:
                _close(mine.diag_moment, np.moveaxis(ref.v_diag, -1, 0), f"{what}: v_diag")
                assert mine.row_moment is None and mine.col_moment is None, what
            np.testing.assert_allclose(actual.tensors[j].lstm_hidden, expected.lstm_hidden[j],
                                       atol=LSTM_ATOL["default"], err_msg=f"{what}: lstm hidden")
            np.testing.assert_allclose(actual.tensors[j].lstm_cell, expected.lstm_cell[j],
                                       atol=LSTM_ATOL["default"], err_msg=f"{what}: lstm cell")


def test_no_update_is_skipped_and_step_rms_is_the_real_step(case):
    """Finite inputs are never taken for non-finite ones, and the reported
    step size is that of the real elements (padding once inflated both)."""
    shapes, oracle, velo, initial = case
    previous = initial
    for t, ((expected, _), (_, _, diagnostics)) in enumerate(zip(oracle, velo)):
        assert diagnostics["skipped_steps"] == 0, f"update {t + 1} skipped"
        for j, shape in enumerate(shapes):
            step = expected[j] - previous[j]
            rms = float(np.sqrt(np.mean(np.square(step.astype(np.float64)))))
            rounding = 2 * float(np.max(np.spacing(np.abs(expected[j]))))
            assert abs(diagnostics["step_rms"][j] - rms) <= 1e-3 * rms + rounding, (
                f"tensor {j} {shape}, update {t + 1}: step_rms "
                f"{diagnostics['step_rms'][j]:.4g}, real {rms:.4g}"
            )
        previous = expected
