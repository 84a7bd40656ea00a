"""The update's program does not grow with the number of tensors, compiles to few kernels, and vmaps over thetas (JAX).

These read the traced or compiled program, never the clock: they hold on
any machine.
"""

import re

import keras
import numpy as np
import pytest

import golden_data
from keras_velo import VeLO, init_theta
from keras_velo.packed.update import init_state, velo_update


def _equation_count(jaxpr):
    """Equations of a jaxpr, those of nested jaxprs (conditionals, reductions) included."""
    count = 0
    for equation in jaxpr.eqns:
        count += 1
        for param in equation.params.values():
            for value in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(value, "jaxpr", value)
                if hasattr(inner, "eqns"):
                    count += _equation_count(inner)
    return count


MAX_COMPILED_KERNELS = 170


def _update_on_mlp(hidden_layers, theta):
    """`(model, jitted stateless update, its arguments)` for an MLP of 32 inputs."""
    import jax

    model = keras.Sequential(
        [keras.Input((32,))]
        + [keras.layers.Dense(64, activation="relu") for _ in range(hidden_layers)]
        + [keras.layers.Dense(10)]
    )
    optimizer = VeLO(total_steps=100, weights=theta)
    optimizer.build(model.trainable_variables)
    grads = [np.full(v.shape, 0.01, np.float32) for v in model.trainable_variables]
    update = jax.jit(lambda ov, g, tv: optimizer.stateless_apply(ov, g, tv, loss=1.0))
    arguments = ([v.value for v in optimizer.variables], grads,
                 [v.value for v in model.trainable_variables])
    return model, update, arguments


def _traced_update_size(hidden_layers, theta):
    import jax

    model, update, arguments = _update_on_mlp(hidden_layers, theta)
    jaxpr = jax.make_jaxpr(update)(*arguments)
    return len(model.trainable_variables), _equation_count(jaxpr.jaxpr)


def compiled_kernel_count(hidden_layers=2, theta=None):
    """Kernels XLA compiles for the update of an MLP: its fusions, products, scatters, gathers.

    Those of conditional branches count too (each is compiled, taken or
    not); copies and parameters do not (no code is generated for them).
    """
    theta = init_theta(seed=0) if theta is None else theta
    _, update, arguments = _update_on_mlp(hidden_layers, theta)
    text = update.lower(*arguments).compile().as_text()
    kernel = r"\n\s*(?:ROOT )?%\S+ = \S+ (?:fusion|dot|scatter|gather|custom-call|sort)\("
    return len(re.findall(kernel, text))


@pytest.mark.backends("jax")
def test_the_traced_update_does_not_grow_with_the_number_of_tensors():
    """64 hidden layers (130 tensors) trace to within 1.5x the equations of 2 (6 tensors).

    The update is written once for all tensors (`keras_velo.packed.packing`); each
    tensor costs only its reshapes in and out. A per-tensor loop would make
    the 130-tensor program ~20x the 6-tensor one.
    """
    theta = init_theta(seed=0)
    small_tensors, small = _traced_update_size(2, theta)
    large_tensors, large = _traced_update_size(64, theta)
    assert (small_tensors, large_tensors) == (6, 130)
    assert large <= 1.5 * small, (small, large)


@pytest.mark.backends("jax")
def test_the_compiled_update_is_few_kernels():
    """XLA compiles the 2-layer MLP's update into at most 170 kernels (was 220).

    On CPU each compiled kernel costs ~10 ms of compile time, what a user
    waits for before the first step (benchmarks/RESULTS.md, "What a user
    waits for"): a per-channel slice of the first layer's weights or a
    scatter where a product does (each was its own kernel) must not come
    back.
    """
    count = compiled_kernel_count(hidden_layers=2)
    assert count <= MAX_COMPILED_KERNELS, count


@pytest.mark.backends("jax")
def test_velo_update_vmaps_over_a_population_of_thetas():
    """`jax.vmap` over thetas (as evolution strategies need) equals one call per theta."""
    import jax
    import jax.numpy as jnp

    base = golden_data.theta("velo_perturbed_theta")
    rng = np.random.default_rng(0)
    population = [
        keras.tree.map_structure(
            lambda x: x + 0.01 * rng.standard_normal(x.shape).astype(np.float32), base
        )
        for _ in range(3)
    ]
    stacked = keras.tree.map_structure(lambda *xs: jnp.stack(xs), *population)
    shapes = [(5, 3), (3,), (4, 4, 2)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [0.1 * rng.standard_normal(s).astype(np.float32) for s in shapes]

    def train_one_step(theta):
        # init_state reads theta's LSTM init state with keras.ops: traceable.
        state = init_state(theta, shapes, num_steps=50)
        new_params, _, diagnostics = velo_update(theta, state, params, grads, 2.0)
        return new_params, diagnostics.lr_mult

    batched_params, batched_lr_mult = jax.jit(jax.vmap(train_one_step))(stacked)
    single = jax.jit(train_one_step)
    moved = []
    for i, theta in enumerate(population):
        new_params, lr_mult = single(theta)
        np.testing.assert_allclose(batched_lr_mult[i], lr_mult, rtol=1e-5, atol=1e-6)
        for batched, expected, p in zip(batched_params, new_params, params):
            step = np.abs(np.asarray(expected) - p).max()
            np.testing.assert_allclose(batched[i], expected, rtol=0, atol=1e-6 + 1e-4 * step)
            moved.append(step)
    assert min(moved) > 0
    # Different thetas give different updates.
    assert not np.allclose(batched_params[0][0], batched_params[0][1])
