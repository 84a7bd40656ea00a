"""VeLO's update compiled with torch.compile (`keras_velo.packed.torch_compile`) on PyTorch.

The compiled program must compute what the eager update computes: it is
checked against the golden trajectories (the reference), the independent
per-tensor oracle on trees the golden set does not cover, and the eager
update through NaN skips and gradient outliers. Each layout compiles once
(~30 s on 2 cores); the cases share layouts where they can.
"""

import keras
import numpy as np
import pytest

import test_golden_trajectories as golden
import test_oracle_property as oracle
from keras_velo import VeLO
from keras_velo.packed import torch_compile
from optimizer_runner import run_updates

pytestmark = pytest.mark.backends("torch")

# One golden tree (one compiled program, theta is an input), with weight
# decay, two thetas and the >150k-step accumulation (the compiled update
# inside the wrapper's conditional).
GOLDEN_FILES = ("traj_random_n100_wd1e-2", "traj_perturbed_n1000", "traj_random_n300000_accum")


@pytest.fixture(scope="module", params=GOLDEN_FILES)
def golden_run(request):
    return (request.param,) + golden._run(request.param, compile_update=True)


def test_compiled_update_follows_the_golden_trajectories(golden_run):
    golden.test_params_follow_the_reference_at_every_step(golden_run)
    golden.test_state_follows_the_reference(golden_run)


@pytest.fixture(scope="module", params=["issue17", "tree0", "tree3"])
def oracle_case(request):
    return oracle.run_case(request.param, compile_update=True)


def test_compiled_update_follows_the_oracle(oracle_case):
    """Ranks 0-5, size-1 axes, outliers to 1e4, loss spikes, weight decay (tree3)."""
    oracle.test_params_follow_the_oracle_at_every_update(oracle_case)
    oracle.test_state_follows_the_oracle_at_every_update(oracle_case)
    oracle.test_no_update_is_skipped_and_step_rms_is_the_real_step(oracle_case)


def _updates(compile_update, shapes, params, grads, losses):
    variables = [keras.Variable(p, name=f"t{i}") for i, p in enumerate(params)]
    optimizer = VeLO(total_steps=50, weights="bundled", compile_update=compile_update)
    seen = []

    def record(t):
        seen.append(([keras.ops.convert_to_numpy(v.value) for v in variables],
                     optimizer.velo_state(), optimizer.diagnostics()))

    run_updates(optimizer, variables, grads, losses, record)
    return seen


def test_compiled_update_equals_eager_through_skips_and_outliers():
    """The program holds no value of the inputs it was traced with: new data,
    a NaN loss (skipped), a NaN gradient (skipped), an outlier, all as eager."""
    shapes, params, grads, losses = oracle.issue_17_inputs()
    grads, losses = [list(g) for g in grads[:6]], list(losses[:6])
    losses[2] = np.float32("nan")
    grads[3][5] = np.full_like(grads[3][5], np.nan)
    grads[4][6] = grads[4][6] * 1e4
    eager = _updates(False, shapes, params, grads, losses)
    compiled = _updates(True, shapes, params, grads, losses)
    assert [d["skipped_steps"] for _, _, d in compiled] == [0, 0, 1, 2, 2, 2]
    for t, ((p_e, s_e, d_e), (p_c, s_c, d_c)) in enumerate(zip(eager, compiled)):
        for j, (a, b) in enumerate(zip(p_c, p_e)):
            scale = np.max(np.abs(b - params[j]), initial=0.0) + 1e-30
            assert np.max(np.abs(a - b)) <= 1e-5 * scale + 2 * np.max(np.spacing(np.abs(b))), (
                t, j
            )
        assert int(s_c.iteration) == int(s_e.iteration)
        np.testing.assert_allclose(d_c["step_rms"], d_e["step_rms"], rtol=1e-5, atol=1e-12)
        for j in range(len(shapes)):
            np.testing.assert_allclose(
                s_c.tensors[j].accumulators.momentum, s_e.tensors[j].accumulators.momentum,
                rtol=1e-5, atol=1e-12,
            )
            np.testing.assert_allclose(s_c.tensors[j].lstm_hidden, s_e.tensors[j].lstm_hidden,
                                       atol=1e-5)


@pytest.mark.parametrize("shape", [(40, 33), (1000,)])
def test_a_model_of_one_tensor_compiles(shape):
    """One tensor over many chunks: every per-tensor sum is a single segment
    (inductor 2.13 failed on a scatter into one row before `segment_sum`
    special-cased it)."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(shape).astype(np.float32)]
    grads = [[(0.1 * rng.standard_normal(shape)).astype(np.float32)] for _ in range(3)]
    eager = _updates(False, [shape], params, grads, [1.0, 0.9, 0.8])
    compiled = _updates(True, [shape], params, grads, [1.0, 0.9, 0.8])
    for (a, _, _), (b, _, _) in zip(compiled, eager):
        scale = np.max(np.abs(b[0] - params[0]))
        assert scale > 0
        assert np.max(np.abs(a[0] - b[0])) <= 1e-5 * scale + 2 * np.max(np.spacing(np.abs(b[0])))


def _failing_compile(*args, **kwargs):
    raise RuntimeError("no C++ compiler found (simulated)")


def _compile_failing_at_first_call(*args, **kwargs):
    """What inductor does: `torch.compile` returns, compiling fails at the first call."""
    return _failing_compile


# Where compilation fails: at `torch.compile`, or (inductor's way) at the
# program's first call; either way the variables must be left as they were.
FAILURES = [_failing_compile, _compile_failing_at_first_call]


@pytest.mark.parametrize("failing_compile", FAILURES)
def test_auto_falls_back_to_eager_and_says_why(monkeypatch, failing_compile):
    import torch

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(torch_compile, "_cache", type(torch_compile._cache)())
    monkeypatch.setattr(torch_compile, "COMPILE_SECONDS", 0.0)  # "auto" compiles
    monkeypatch.delenv(torch_compile.ENVIRONMENT_SWITCH, raising=False)
    shapes = [(3, 4), (4,)]
    params = [np.ones(s, np.float32) for s in shapes]
    grads = [[np.full(s, 0.1 * (t + 1), np.float32) for s in shapes] for t in range(2)]
    eager = _updates(False, shapes, params, grads, [1.0, 0.9])
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found.*runs eagerly"):
        fallback = _updates("auto", shapes, params, grads, [1.0, 0.9])
    for (a, _, _), (b, _, _) in zip(fallback, eager):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("failing_compile", FAILURES)
def test_compile_true_fails_loudly_and_keeps_the_weights(monkeypatch, failing_compile):
    import torch

    monkeypatch.setattr(torch, "compile", failing_compile)
    monkeypatch.setattr(torch_compile, "_cache", type(torch_compile._cache)())
    variable = keras.Variable(np.ones((3, 4), np.float32))
    optimizer = VeLO(total_steps=10, weights="bundled", compile_update=True)
    with pytest.raises(torch_compile.CompilationUnavailable, match="no C\\+\\+ compiler"):
        optimizer.apply([np.full((3, 4), 0.1, np.float32)], [variable], loss=1.0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable.value), 1.0)
    state = optimizer.velo_state()
    assert int(state.iteration) == 0 and not np.any(state.tensors[0].accumulators.momentum)


def test_stateless_apply_leaves_the_callers_tensors_alone():
    """Compiled, `stateless_apply` returns the update and writes into nothing it was given."""
    import torch

    variables = [keras.Variable(np.ones((3, 4), np.float32)), keras.Variable(np.zeros(4, np.float32))]
    optimizer = VeLO(total_steps=10, weights="bundled", compile_update=True)
    optimizer.build(variables)
    train_values = [torch.ones(3, 4), torch.zeros(4)]
    opt_values = [v.value.clone() for v in optimizer.variables]
    grads = [torch.full((3, 4), 0.1), torch.full((4,), 0.2)]
    new_train, new_opt = optimizer.stateless_apply(opt_values, grads, train_values, loss=1.0)
    torch.testing.assert_close(train_values[0], torch.ones(3, 4))  # inputs unchanged
    torch.testing.assert_close(train_values[1], torch.zeros(4))
    for value, variable in zip(opt_values, optimizer.variables):
        torch.testing.assert_close(value, variable.value)  # the optimizer's too
    assert float(torch.max(torch.abs(new_train[0] - 1.0))) > 0  # it did update
    assert optimizer.diagnostics()["iteration"] == 0


def test_auto_compiles_only_runs_that_win_back_the_compile_time(monkeypatch):
    monkeypatch.delenv(torch_compile.ENVIRONMENT_SWITCH, raising=False)
    resolve = torch_compile.resolve_compile_update
    assert resolve("auto", 23_500_000, 100)  # ResNet-50
    assert not resolve("auto", 23_500_000, 5)
    assert resolve("auto", 1_000_000, 1000)
    assert not resolve("auto", 55_000, 500)  # a small MLP, a short run
    assert resolve(True, 10, 1) and not resolve(False, 10**9, 10**6)
    monkeypatch.setenv(torch_compile.ENVIRONMENT_SWITCH, "0")
    assert not resolve("auto", 23_500_000, 10_000)
    assert resolve(True, 10, 1)


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_compile_update_must_be_auto_true_or_false(value):
    with pytest.raises(ValueError, match="compile_update.*\"auto\", True or False"):
        VeLO(total_steps=10, weights="bundled", compile_update=value)



def test_a_train_step_compiled_by_keras_leaves_the_update_out_of_its_trace():
    """`model.compile(jit_compile=True)`: dynamo traced VeLO's update into 185 graphs (minutes)."""
    import torch

    import keras_velo

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, 64)

    def fit(jit_compile):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3)])
        model.compile(VeLO(weights="bundled"), jit_compile=jit_compile,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=16, epochs=2, verbose=0,
                            callbacks=[keras_velo.VeLOCallback()])
        return history.history["loss"], model.get_weights()

    torch._dynamo.utils.counters.clear()
    compiled_losses, compiled_weights = fit(True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert 0 < graphs <= 10, graphs  # the train step's forward and backward, not VeLO's update
    losses, weights = fit(False)
    np.testing.assert_allclose(compiled_losses, losses, rtol=1e-5)
    for compiled, eager in zip(compiled_weights, weights):
        np.testing.assert_allclose(compiled, eager, atol=1e-6)
