"""Which function computes an optimizer's update: one compiled program, or op by op.

Inside `fit` (and any caller's `jax.jit` or `tf.function`) VeLO's update is
traced into the caller's train step and compiled with it. Called eagerly
(a custom training loop's `optimizer.apply`) it would otherwise run op by
op: on JAX every conditional and variadic reduction inside it would build
and compile a small XLA program anew on every call (dozens per update),
and on TensorFlow every one of its hundreds of ops is dispatched from
Python. So an eager call runs the whole update as one program, compiled
once per layout (and per set of tensors with gradients) and reused:

* JAX: `jax.jit` of the update; a traced caller (`fit`, `stateless_apply`
  under `jax.jit`) calls the plain function, which its own trace inlines.
* TensorFlow: `tf.function` of the update, traced once per input
  structure; inside a graph (`fit`) the plain function.
* PyTorch, where Keras itself runs eagerly: `torch.compile` when
  `VeLO(compile_update=...)` says so (`keras_velo.packed.torch_compile`).

`compile_update=False` runs the update op by op on every backend (for
debugging; the results are the same).
"""

import functools
import math

import keras

from keras_velo.packed.prefab import prefab_update
from keras_velo.packed.torch_compile import (
    compiled_packed_update,
    compiled_prefab_update,
    resolve_compile_update,
)


def update_function(layout, weight_decays, horizon, active, compile_update):
    """`prefab_update` with these settings bound, compiled where `compile_update` asks.

    Called as `f(theta, state, params, grads, loss, accumulation=...,
    step_scale=..., fraction_trained=...)`; returns what `prefab_update`
    returns. With gradient accumulation on PyTorch the conditional between
    accumulating and updating stays eager around the compiled update.
    """
    eager = functools.partial(
        prefab_update, weight_decays=weight_decays,
        num_accumulated=horizon.num_accumulated, active=active,
    )
    backend = keras.backend.backend()
    if backend in ("jax", "tensorflow"):
        if compile_update is False:
            return eager
        return jit_when_eager(eager) if backend == "jax" else tf_function_when_eager(eager)
    num_parameters = sum(math.prod(shape) for shape in layout.shapes)
    if not resolve_compile_update(compile_update, num_parameters, horizon.velo_steps):
        return eager
    strict = compile_update is True
    if horizon.num_accumulated == 1:
        return compiled_prefab_update(layout, weight_decays, active, strict)
    return functools.partial(eager, core=compiled_packed_update(layout, active, True, strict))


def jit_when_eager(function):
    """`function` compiled once by `jax.jit` for concrete inputs; traced inputs call it directly.

    `compiled.traces` counts the traces (one per input structure).
    """
    import jax

    def traced(*args, **kwargs):
        call.traces += 1
        return function(*args, **kwargs)

    compiled = jax.jit(traced)

    @functools.wraps(function)
    def call(*args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs))):
            return function(*args, **kwargs)
        return compiled(*args, **kwargs)

    call.traces = 0
    return call


def tf_function_when_eager(function):
    """`function` as one `tf.function` when TensorFlow runs eagerly; inside a graph, itself.

    `call.traces` counts the traces (one per input structure).
    """
    import tensorflow as tf

    def traced(*args, **kwargs):
        call.traces += 1
        return function(*args, **kwargs)

    graph = tf.function(traced, autograph=False)

    @functools.wraps(function)
    def call(*args, **kwargs):
        if tf.executing_eagerly():
            return graph(*args, **kwargs)
        return function(*args, **kwargs)

    call.traces = 0
    return call
