"""The bootstrap theta (meta/bootstrap_theta.py), shipped as weights="bundled".

Checks that the hand-set theta makes VeLO's real update (`velo_update`, on
every backend) do what the construction says: a per-tensor-normalised
momentum/rms direction plus a small decay toward zero, a warm-up/decay
schedule over the training fraction, a boost for tensors that start at
zero, and a loss that falls on a small real task.
"""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_velo.maths import hypernetwork
from keras_velo.maths import parameter_mlp
from keras_velo.maths import tensor_features
from keras_velo.maths.theta import flatten_theta, theta_num_parameters, validate_theta
from keras_velo.packed.state_view import tensor_states
from keras_velo.packed.update import init_state, to_tensors, velo_update
from meta import bootstrap_theta as bootstrap
from meta.bootstrap_theta import (
    DEFAULT_CONSTANTS,
    BootstrapConstants,
    boost_factor,
    bootstrap_theta,
    lr_mult_schedule,
    target_schedule,
)

PEAK = DEFAULT_CONSTANTS.peak_lr_mult


@pytest.fixture(scope="module")
def theta():
    return bootstrap_theta()


@pytest.fixture(scope="module")
def theta_tensors(theta):
    return to_tensors(theta)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _normalised(x):
    """VeLO's per-channel input normalisation (spec §5.9)."""
    return x / np.sqrt(1e-5 + np.mean(x**2))


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- structure


def test_theta_is_valid_and_mostly_zero(theta):
    validate_theta(theta, source="bootstrap theta")
    assert theta_num_parameters(theta) == 2_320_385
    flat = flatten_theta(theta)
    assert all(leaf.dtype == np.float32 for leaf in flat.values())
    assert sum(int(np.count_nonzero(leaf)) for leaf in flat.values()) < 10_000
    rnn = theta["rnn_params"]
    assert not rnn["linear"]["w"].any() and not rnn["linear"]["b"].any()  # dead layer
    assert not rnn["linear_1"]["w"].any() and not rnn["linear_1"]["b"].any()  # max-pool is 0
    assert not theta["lstm_init_state"]["hidden"].any()
    assert not theta["lstm_init_state"]["cell"].any()
    assert not rnn["rnn/linear"]["w"][512:].any()  # the LSTM ignores its hidden state
    np.testing.assert_array_equal(rnn["rnn_to_controls"]["b"], np.float32(0.01))
    # The 256 MLP sets are identical, except the magnitude bias b2[:, 1].
    for name, leaf in theta["ff_mod_stack"]["~"].items():
        if name == "b2":
            leaf = leaf[:, [0, 2]]
        np.testing.assert_array_equal(leaf, np.broadcast_to(leaf[:1], leaf.shape), err_msg=name)


def test_default_constants_are_the_defaults(theta):
    flat, again = flatten_theta(theta), flatten_theta(bootstrap_theta(**{}))
    for path, leaf in flat.items():
        np.testing.assert_array_equal(leaf, again[path])
    other = bootstrap_theta(peak_lr_mult=2 * PEAK)
    assert not np.array_equal(other["rnn_params"]["step_size"]["w"],
                              theta["rnn_params"]["step_size"]["w"])


def test_mirrored_velo_constants_match_the_package():
    assert bootstrap.FRACTION_TIMESCALES == tensor_features.FRACTION_TIMESCALES
    assert bootstrap.FRACTION_SHARPNESS == tensor_features.FRACTION_SHARPNESS
    assert bootstrap.MLP_WEIGHT_MIX_SCALE == hypernetwork.MLP_WEIGHT_MIX_SCALE
    assert bootstrap.LSTM_FORGET_BIAS == hypernetwork.LSTM_FORGET_BIAS
    assert bootstrap.EXP_MULT == parameter_mlp.EXP_MULT
    names = parameter_mlp.MLP_INPUT_GROUP_NAMES
    assert names[bootstrap.PARAM_GROUP] == "p"
    for name, index in bootstrap.DIRECTION_GROUPS.items():
        assert names[index] == name


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (dict(peak_lr_mult=-1.0), "peak_lr_mult"),
        (dict(warmup_fraction=1.5), "warmup_fraction"),
        (dict(final_lr_fraction=0.0), "final_lr_fraction"),
        (dict(direction_group="g"), "direction_group"),
        (dict(direction_decay=3), "direction_decay"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(small_tensor_boost=0.5), "small_tensor_boost"),
        (dict(boost_threshold=3.0), "boost_threshold"),
        (dict(schedule_gains=()), "schedule_gains"),
    ],
)
def test_constants_are_validated(overrides, expected):
    with pytest.raises(ValueError, match=expected):
        BootstrapConstants(**overrides)
    with pytest.raises(ValueError, match=expected):
        bootstrap_theta(**overrides)
    with pytest.raises(TypeError):
        bootstrap_theta(no_such_constant=1.0)


# --- the schedule (numpy side)


def test_fitted_schedule_follows_the_target():
    fraction = np.linspace(0.0, 1.0, 1001)
    fitted = lr_mult_schedule(fraction) / PEAK
    target = target_schedule(fraction)
    assert np.sqrt(np.mean((fitted - target) ** 2)) < 0.03
    # Away from the corner at the end of the warm-up, which the fit rounds off.
    corner = np.abs(fraction - DEFAULT_CONSTANTS.warmup_fraction) < 0.05
    assert np.max(np.abs(fitted - target)[~corner]) < 0.05
    assert fitted[0] < 0.1  # the warm-up starts near zero
    # Past the end of training it stays small and positive (never a negative step).
    late = lr_mult_schedule(np.linspace(1.0, 5.0, 401)) / PEAK
    assert late.min() > 0 and late.max() < 2 * DEFAULT_CONSTANTS.final_lr_fraction
    assert lr_mult_schedule(np.linspace(0.0, 5.0, 2001)).min() > 0


def test_boost_factor_range():
    assert boost_factor(-2.5) == pytest.approx(1.0, abs=1e-6)
    assert boost_factor(-1.0) == pytest.approx(1.0, abs=1e-3)
    top = DEFAULT_CONSTANTS.small_tensor_boost
    assert 0.5 * top < boost_factor(2.5) <= top
    values = boost_factor(np.linspace(-2.5, 2.5, 51))
    assert np.all(np.diff(values) > 0)


# --- VeLO's real update with the bootstrap theta


@pytest.fixture(scope="module")
def update():
    """`velo_update`, compiled where the backend allows it (keeps the file fast).

    JAX: `jax.jit`; TensorFlow: `tf.function` (graph mode); PyTorch: eager.
    Every test uses the same tensor shapes, so each backend compiles once.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(velo_update)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(velo_update)
    return velo_update


SHAPES = [(64, 10), (10,)]  # a dense layer: kernel and bias


def _initial_params(rng, zero_bias):
    limit = math.sqrt(6.0 / sum(SHAPES[0]))  # Glorot uniform, as Keras' Dense
    kernel = rng.uniform(-limit, limit, SHAPES[0]).astype(np.float32)
    bias = np.zeros(SHAPES[1]) if zero_bias else rng.uniform(-limit, limit, SHAPES[1])
    return [kernel, bias.astype(np.float32)]


def _run(update, theta_tensors, params, rng, num_steps, updates, grad_scale=0.01):
    """`updates` VeLO updates with random gradients (mean 0.3 grad_scale, std grad_scale).

    Returns the state and diagnostics of the last update, its step
    (`p - p_new`, float64) and the parameters it started from.
    """
    state = to_tensors(init_state(theta_tensors, SHAPES, num_steps=num_steps))
    for _ in range(updates):
        grads = [(rng.normal(0.3, 1.0, p.shape) * grad_scale).astype(np.float32) for p in params]
        new_params, state, diagnostics = update(
            theta_tensors, state, params, grads, np.float32(1.0)
        )
        before = params
        params = [_np(p).astype(np.float32) for p in new_params]
    steps = [p.astype(np.float64) - q for p, q in zip(before, params)]
    return state, diagnostics, steps, before


def test_step_is_the_normalised_momentum_direction(update, theta_tensors):
    assert DEFAULT_CONSTANTS.direction_group == "m_rsqrt_rms"  # what this test rebuilds
    rng = np.random.default_rng(0)
    params = _initial_params(rng, zero_bias=False)
    state, diagnostics, steps, before = _run(update, theta_tensors, params, rng, 50, 6)
    lr_mult = _np(diagnostics.lr_mult)
    kappa = DEFAULT_CONSTANTS.weight_decay
    for j, (p, step) in enumerate(zip(before, steps)):
        p = p.astype(np.float64)
        accumulators = tensor_states(state, SHAPES).tensors[j].accumulators
        momentum = _np(accumulators.momentum)[DEFAULT_CONSTANTS.direction_decay]
        direction = momentum / np.sqrt(_np(accumulators.rms) + 1e-6)
        intended = _normalised(direction) + kappa * _normalised(p)
        # p_new = p - step: the step points along +direction (against the gradient).
        assert _cosine(step, intended) > 0.999, j
        assert _cosine(step, direction) > 0.99, j
        expected = lr_mult[j] * 1e-3 * np.sqrt(np.mean(p**2)) * np.sqrt(np.mean(intended**2))
        # The momentum is small next to these parameters: no boost (within 2%).
        assert np.sqrt(np.mean(step**2)) / expected == pytest.approx(1.0, abs=0.02), j


def test_zero_initialised_bias_is_boosted(update, theta_tensors):
    rng = np.random.default_rng(1)
    params = _initial_params(rng, zero_bias=True)
    _, diagnostics, steps, _ = _run(update, theta_tensors, params, rng, 50, 3, grad_scale=0.1)
    # Unboosted, a zero tensor moves by lr_mult * 1e-3 * sqrt(1e-9) per unit direction.
    unboosted = float(_np(diagnostics.lr_mult)[1]) * 1e-3 * math.sqrt(1e-9)
    assert np.sqrt(np.mean(steps[1] ** 2)) > 0.5 * DEFAULT_CONSTANTS.small_tensor_boost * unboosted


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.1, 0.3, 0.5, 0.8, 0.95, 1.0, 1.5])
def test_lr_mult_follows_the_schedule(update, theta_tensors, fraction):
    num_steps = 1000
    rng = np.random.default_rng(2)
    params = _initial_params(rng, zero_bias=False)
    state = to_tensors(init_state(theta_tensors, SHAPES, num_steps=num_steps))
    state = state._replace(iteration=ops.convert_to_tensor(round(fraction * num_steps), "int32"))
    grads = [rng.normal(0.0, 0.01, p.shape).astype(np.float32) for p in params]
    _, _, diagnostics = update(theta_tensors, state, params, grads, np.float32(1.0))
    lr_mult = _np(diagnostics.lr_mult)
    np.testing.assert_allclose(lr_mult, lr_mult[0], atol=1e-5 * PEAK)  # same for every tensor
    assert lr_mult[0] == pytest.approx(lr_mult_schedule(fraction), rel=1e-4, abs=1e-4 * PEAK)
    assert lr_mult[0] == pytest.approx(PEAK * target_schedule(fraction), abs=0.2 * PEAK)
    if fraction == 0.0:
        assert lr_mult[0] < 0.25 * PEAK  # warm-up starts low
    elif target_schedule(fraction) > 0.9:  # near the peak
        assert lr_mult[0] > 0.75 * PEAK
    elif fraction >= 0.95:
        assert 0 < lr_mult[0] < 0.1 * PEAK  # decayed to a small value


def _softmax_regression(params, x, y):
    """Mean cross-entropy of softmax regression and its gradients, in numpy."""
    kernel, bias = params
    logits = x @ kernel + bias
    logits = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    loss = -np.mean(np.sum(y * np.log(probs + 1e-12), axis=1))
    delta = (probs - y) / len(x)
    return np.float32(loss), [(x.T @ delta).astype(np.float32), delta.sum(axis=0)]


def _adam(params, grads, moments, t, learning_rate=1e-3):
    """One Keras-style Adam step in numpy (bias-corrected step size, epsilon 1e-7)."""
    first, second = moments
    first = [0.9 * m + 0.1 * g for m, g in zip(first, grads)]
    second = [0.999 * v + 0.001 * g * g for v, g in zip(second, grads)]
    step_size = learning_rate * math.sqrt(1 - 0.999**t) / (1 - 0.9**t)
    params = [p - step_size * m / (np.sqrt(v) + 1e-7) for p, m, v in zip(params, first, second)]
    return params, (first, second)


def test_trains_softmax_regression_on_digits(update, theta_tensors):
    """100 steps on sklearn's digits: the loss falls by > 40% and below Adam(1e-3)'s."""
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[digits.target]
    num_steps, batch = 100, 128
    initial = _initial_params(np.random.default_rng(0), zero_bias=True)
    batches = np.random.default_rng(1)
    batches = [batches.choice(len(x), batch, replace=False) for _ in range(num_steps)]

    params = list(initial)
    state = to_tensors(init_state(theta_tensors, SHAPES, num_steps=num_steps))
    for index in batches:
        loss, grads = _softmax_regression(params, x[index], y[index])
        params, state, _ = update(theta_tensors, state, params, grads, loss)
        params = [_np(p).astype(np.float32) for p in params]
    velo_loss = _softmax_regression(params, x, y)[0]

    adam_params = list(initial)
    moments = ([np.zeros_like(p) for p in initial], [np.zeros_like(p) for p in initial])
    for t, index in enumerate(batches, start=1):
        _, grads = _softmax_regression(adam_params, x[index], y[index])
        adam_params, moments = _adam(adam_params, grads, moments, t)
    adam_loss = _softmax_regression(adam_params, x, y)[0]

    initial_loss = _softmax_regression(initial, x, y)[0]
    assert np.all(np.isfinite(params[0])) and np.abs(params[1]).max() > 0.01  # the bias moved
    assert velo_loss < 0.6 * initial_loss, (initial_loss, velo_loss)
    assert velo_loss < adam_loss, (velo_loss, adam_loss)
