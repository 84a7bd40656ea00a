"""A custom training loop's eager `optimizer.apply` compiles VeLO's update once per layout.

On JAX every eager update used to build and compile ~36 small XLA programs
(the variadic reductions' and the conditionals' programs were new on every
call); now the update is one `jax.jit` program, compiled at the first call
and reused (`keras_velo.training.update_function`). On TensorFlow it is one
`tf.function`, traced once. What the eager path computes is checked against
the golden trajectories in `test_golden_trajectories.py`.
"""

import keras
import numpy as np
import pytest

from keras_velo import VeLO

SHAPES = [(6, 4), (4,), (4, 3), (3,)]


def _problem(steps, seed=0):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}")
                 for i, s in enumerate(SHAPES)]
    grads = [[rng.normal(size=s).astype("float32") for s in SHAPES] for _ in range(steps)]
    losses = rng.uniform(0.5, 1.5, steps).astype("float32")
    return variables, grads, losses


def _apply_all(optimizer, variables, grads, losses, after_each=None):
    for step, (g, loss) in enumerate(zip(grads, losses)):
        optimizer.apply([keras.ops.convert_to_tensor(x) for x in g], variables, loss=loss)
        if after_each:
            after_each(step)


@pytest.mark.backends("jax")
def test_eager_applies_compile_nothing_after_the_first_on_jax():
    import jax

    from jax._src import dispatch

    compiles = []

    def listener(event, duration, **kwargs):
        if event == dispatch.BACKEND_COMPILE_EVENT:
            compiles.append(kwargs.get("fun_name"))

    variables, grads, losses = _problem(4)
    optimizer = VeLO(total_steps=20, weights="bundled")
    counts = []
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        def count(step):
            counts.append(len(compiles) - sum(counts))

        _apply_all(optimizer, variables, grads, losses, count)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert counts[0] > 0, "the first apply compiles"
    assert counts[1:] == [0, 0, 0], f"XLA programs compiled per later apply: {counts[1:]} ({compiles})"
    assert optimizer.iterations.numpy() == 4


@pytest.mark.backends("tensorflow")
def test_eager_applies_trace_the_update_once_on_tensorflow():
    variables, grads, losses = _problem(4)
    optimizer = VeLO(total_steps=20, weights="bundled")
    _apply_all(optimizer, variables, grads, losses)
    (function,) = optimizer._update_functions.values()
    assert function.traces == 1


@pytest.mark.backends("jax", "tensorflow")
def test_compiled_and_op_by_op_eager_applies_agree():
    """`compile_update=False` runs the update op by op: the same numbers, up to float reassociation."""
    results = []
    for compile_update in ("auto", False):
        variables, grads, losses = _problem(3, seed=1)
        optimizer = VeLO(total_steps=20, weights="bundled", compile_update=compile_update)
        _apply_all(optimizer, variables, grads, losses)
        results.append([keras.ops.convert_to_numpy(v.value) for v in variables])
        start = _problem(3, seed=1)[0]
    for compiled, op_by_op, initial in zip(*results, start):
        moved = np.abs(op_by_op - keras.ops.convert_to_numpy(initial.value)).max()
        assert moved > 1e-4  # the update does something
        np.testing.assert_allclose(compiled, op_by_op, rtol=0, atol=1e-6 * max(1.0, moved))
