"""The `VeLO` Keras optimizer: contract, bad input, JAX functional use.

Numerics against the reference live in `test_golden_trajectories.py`; here
the optimizer's behaviour around the maths.
"""

import time
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
from keras import ops

import golden_data
from keras_velo import CheckpointError, VeLO, WeightsUnavailableError

GOLDEN_THETA = str(golden_data.GOLDEN_DIR / "velo_perturbed_theta")


def _variables(seed=0):
    rng = np.random.default_rng(seed)
    return [
        keras.Variable(rng.normal(size=(4, 3)).astype("float32"), name="kernel"),
        keras.Variable(np.zeros(3, "float32"), name="bias"),
    ]


def _grads(seed=1):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(4, 3)).astype("float32"), rng.normal(size=3).astype("float32")]


def _values(variables):
    return [ops.convert_to_numpy(v.value) for v in variables]


@pytest.fixture
def theta_optimizer():
    return lambda **kw: VeLO(**{"total_steps": 100, "weights": GOLDEN_THETA, **kw})


# ----------------------------------------------------------------- the loss


def test_apply_without_loss_raises(theta_optimizer):
    optimizer, variables = theta_optimizer(), _variables()
    with pytest.raises(ValueError, match="VeLO needs the training loss"):
        optimizer.apply(_grads(), variables)
    with pytest.raises(ValueError, match=r"apply\(grads, variables, loss=loss\)"):
        optimizer.apply_gradients(zip(_grads(), variables))


@pytest.mark.backends("jax")
def test_stateless_apply_without_loss_raises(theta_optimizer):
    optimizer, variables = theta_optimizer(), _variables()
    optimizer.build(variables)
    with pytest.raises(ValueError, match="VeLO needs the training loss"):
        optimizer.stateless_apply(
            [v.value for v in optimizer.variables], _grads(), [v.value for v in variables]
        )


def test_loss_changes_the_update(theta_optimizer):
    """The loss reaches the maths: different loss histories, different steps."""
    finals = []
    for losses in ([1.0, 1.0, 1.0, 1.0], [1.0, 0.5, 0.2, 0.1]):
        optimizer, variables = theta_optimizer(), _variables()
        for loss in losses:
            optimizer.apply(_grads(), variables, loss=loss)
        finals.append(_values(variables)[0])
    assert not np.allclose(finals[0], finals[1], rtol=0, atol=1e-9)


def test_apply_and_apply_gradients_agree(theta_optimizer):
    a, b = theta_optimizer(), theta_optimizer()
    va, vb = _variables(), _variables()
    for loss in (2.0, 1.5):
        a.apply(_grads(), va, loss=loss)
        b.apply_gradients(zip(_grads(), vb), loss=ops.convert_to_tensor(loss))
    for x, y in zip(_values(va), _values(vb)):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------- bad arguments


@pytest.mark.parametrize("bad", [0, -5])
def test_total_steps_must_be_positive(bad):
    with pytest.raises(ValueError, match=rf"`total_steps` must be a positive integer .*, got {bad}\. Pass"):
        VeLO(total_steps=bad, weights=None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"learning_rate": float("nan")}, r"`learning_rate` must be a positive, finite .* got nan"),
        ({"learning_rate": float("inf")}, r"`learning_rate` .* got inf"),
        ({"learning_rate": -1.0}, r"`learning_rate` must be a positive multiplier .* got -1.0"),
        ({"learning_rate": 0}, r"`learning_rate` must be a positive multiplier .* got 0"),
        ({"time_budget": float("nan")}, r"`time_budget` must be a positive, finite number of seconds .* got nan"),
        ({"time_budget": -3}, r"`time_budget` .* got -3"),
        ({"weight_decay": float("nan")}, r"`weight_decay` must be a finite number >= 0, got nan"),
        ({"weight_decay": float("inf")}, r"`weight_decay` .* got inf"),
        ({"weight_decay": True}, r"`weight_decay` .* got True of type bool"),
        ({"weight_decay": -1e-3}, r"`weight_decay` .* got -0.001"),
        ({"seed": "abc"}, r"`seed` must be an integer .* got 'abc' of type str"),
        ({"seed": 1.5}, r"`seed` must be an integer"),
        ({"max_consecutive_skips": 0}, r"`max_consecutive_skips` must be a positive integer \(how many updates"),
        ({"max_consecutive_skips": True}, r"`max_consecutive_skips` .* got True of type bool"),
        ({"max_training_steps": 0}, r"`max_training_steps` must be a positive integer \(the longest horizon"),
    ],
)
def test_every_argument_is_validated(kwargs, message):
    """Each bad value is named, with what the argument means; nothing is accepted silently."""
    with pytest.raises(ValueError, match=message):
        VeLO(total_steps=10, weights=None, **kwargs)


@pytest.mark.parametrize("bad", [2.5, 100.0, "100", True])
def test_total_steps_must_be_an_integer(bad):
    with pytest.raises(ValueError, match=r"`total_steps` must be a positive integer .* got"):
        VeLO(total_steps=bad, weights=None)


def test_unknown_total_steps_must_be_set_before_the_first_update():
    optimizer, variables = VeLO(weights=None), _variables()
    with pytest.raises(ValueError, match="does not know how many steps"):
        optimizer.apply(_grads(), variables, loss=1.0)
    optimizer.set_total_steps(50)
    optimizer.apply(_grads(), variables, loss=1.0)
    assert int(optimizer.velo_state().num_steps) == 50
    with pytest.raises(ValueError, match="before its first update"):
        optimizer.set_total_steps(60)


def test_numpy_integers_are_accepted():
    assert VeLO(total_steps=np.int64(10), weights=None).total_steps == 10


@pytest.mark.parametrize("bad", [-1.0, "0.1"])
def test_weight_decay_must_be_non_negative(bad):
    with pytest.raises(ValueError, match="`weight_decay` must be a finite number >= 0"):
        VeLO(total_steps=10, weights=None, weight_decay=bad)


def test_truncated_checkpoint_is_rejected(tmp_path):
    params = golden_data.GOLDEN_DIR / "velo_random_theta" / "params"
    broken = tmp_path / "params"
    broken.write_bytes(params.read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError, match=rf"{broken}.*truncated"):
        VeLO(total_steps=10, weights=str(broken))


def test_unknown_weights_name_is_rejected():
    with pytest.raises(ValueError, match="velo_v9"):
        VeLO(total_steps=10, weights="velo_v9")


def test_published_weights_offline_fail_at_once(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    attempts = []

    def offline(*args, **kwargs):
        attempts.append(kwargs.get("timeout"))
        raise urllib.error.URLError("Name or service not known")

    def no_waiting(seconds):
        raise AssertionError(f"slept {seconds} s before failing")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(time, "sleep", no_waiting)
    with pytest.raises(WeightsUnavailableError) as error:
        VeLO(total_steps=10)  # weights="velo" is the default
    assert len(attempts) == 1 and attempts[0] is not None  # one try, with a timeout, no retries
    message = str(error.value)
    assert "weights=None" in message and "bundled" in message and str(tmp_path) in message


def test_variables_must_be_the_ones_it_was_built_for(theta_optimizer):
    optimizer = theta_optimizer()
    optimizer.apply(_grads(), _variables(), loss=1.0)
    with pytest.raises(ValueError, match="Unknown variable"):
        optimizer.apply(_grads(), _variables(seed=3), loss=1.0)


def test_one_gradient_per_variable(theta_optimizer):
    with pytest.raises(ValueError, match="Got 1 gradients for 2 variables"):
        theta_optimizer().apply(_grads()[:1], _variables(), loss=1.0)


# ------------------------------------------------------------- behaviour


def test_missing_gradient_leaves_that_variable_alone(theta_optimizer):
    optimizer, variables = theta_optimizer(), _variables()
    before = _values(variables)
    optimizer.apply([_grads()[0], None], variables, loss=1.0)
    after = _values(variables)
    assert not np.array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])


def test_learning_rate_scales_the_step(theta_optimizer):
    steps = []
    for lr in (1.0, 0.25):
        optimizer, variables = theta_optimizer(learning_rate=lr), _variables()
        before = _values(variables)[0]
        optimizer.apply(_grads(), variables, loss=1.0)
        steps.append(_values(variables)[0] - before)
    np.testing.assert_allclose(steps[1], 0.25 * steps[0], rtol=1e-3, atol=1e-7)


def test_weight_decay_honours_exclusions(theta_optimizer):
    """Coupled decay on the kernel only: the excluded bias moves as without decay."""
    results = {}
    for wd in (0.0, 0.5):
        optimizer, variables = theta_optimizer(weight_decay=wd), _variables()
        optimizer.exclude_from_weight_decay(var_names=["bias"])
        optimizer.apply(_grads(), variables, loss=1.0)
        optimizer.apply(_grads(), variables, loss=0.9)
        results[wd] = _values(variables)
    assert not np.allclose(results[0.0][0], results[0.5][0], rtol=0, atol=1e-9)


def test_random_init_is_seeded():
    a = VeLO(total_steps=10, weights=None, seed=3)
    b = VeLO(total_steps=10, weights=None, seed=3)
    c = VeLO(total_steps=10, weights=None, seed=4)
    for opt in (a, b, c):
        opt.build(_variables())
    wa, wb, wc = (o.theta["rnn_params"]["rnn/linear"]["w"] for o in (a, b, c))
    np.testing.assert_array_equal(wa, wb)
    assert not np.array_equal(wa, wc)
    assert "random init (seed=3)" in a.weights_description


def test_long_horizons_accumulate(theta_optimizer):
    """total_steps > max_training_steps: k calls averaged per VeLO update."""
    optimizer, variables = theta_optimizer(total_steps=250, max_training_steps=100), _variables()
    assert (optimizer.horizon.num_accumulated, optimizer.horizon.velo_steps) == (3, 83)
    before = _values(variables)
    for call in range(1, 4):
        optimizer.apply(_grads(call), variables, loss=1.0)
        moved = not np.array_equal(_values(variables)[0], before[0])
        assert moved == (call == 3), call
    assert int(optimizer.velo_state().iteration) == 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_variables_keep_their_dtype(theta_optimizer, dtype):
    optimizer = theta_optimizer()
    variables = [keras.Variable(np.ones((4, 3)), dtype=dtype, name="w")]
    optimizer.apply([ops.ones((4, 3), dtype=dtype)], variables, loss=1.0)
    assert keras.backend.standardize_dtype(variables[0].dtype) == dtype
    assert np.all(np.isfinite(ops.convert_to_numpy(ops.cast(variables[0].value, "float32"))))


def test_config_round_trip(theta_optimizer):
    optimizer = theta_optimizer(weight_decay=1e-6, max_training_steps=50, learning_rate=0.5)
    config = optimizer.get_config()
    assert config["total_steps"] == 100 and config["weights"] == GOLDEN_THETA
    restored = VeLO.from_config(config)
    assert restored.get_config() == config
    serialized = keras.optimizers.serialize(optimizer)
    assert keras.optimizers.deserialize(serialized).get_config() == config


# ------------------------------------------------------------- JAX functional use


@pytest.mark.backends("jax")
def test_jit_stateless_apply_traces_once_and_matches_apply(theta_optimizer):
    import jax

    stateful, functional = theta_optimizer(), theta_optimizer()
    v_stateful, v_functional = _variables(), _variables()
    functional.build(v_functional)
    traces = []

    def step(optimizer_values, grads, train_values, loss):
        traces.append(1)
        return functional.stateless_apply(optimizer_values, grads, train_values, loss=loss)

    step = jax.jit(step)
    train_values = [v.value for v in v_functional]
    optimizer_values = [v.value for v in functional.variables]
    for t, loss in enumerate([3.0, 2.5, 2.2, 2.0]):
        grads = _grads(t)
        train_values, optimizer_values = step(
            optimizer_values, grads, train_values, np.float32(loss)
        )
        stateful.apply(grads, v_stateful, loss=loss)
    assert len(traces) == 1
    for actual, expected in zip(train_values, _values(v_stateful)):
        np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-6, atol=1e-9)
    # The functional path left the Keras variables untouched.
    np.testing.assert_array_equal(_values(v_functional)[0], _values(_variables())[0])


def test_restoring_from_config_never_downloads(tmp_path, monkeypatch):
    """`load_model` rebuilds VeLO from its config, then restores theta with the state."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    source, variables = VeLO(total_steps=10, weights=GOLDEN_THETA), _variables()
    source.build(variables)
    config = source.get_config()
    config["weights"] = "velo"  # as saved by a user of the published weights
    restored = VeLO.from_config(config)
    assert calls == []
    restored.build(variables)
    with pytest.raises(CheckpointError, match="could not be loaded"):
        restored.apply(_grads(), variables, loss=1.0)
    restored.load_own_variables(
        {str(i): ops.convert_to_numpy(v.value) for i, v in enumerate(source.variables)}
    )
    restored.apply(_grads(), variables, loss=1.0)
    assert restored.diagnostics()["iteration"] == 1
