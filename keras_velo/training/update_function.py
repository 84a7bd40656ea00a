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
  With `model.compile(jit_compile=True)` Keras hands its whole train step
  to `torch.compile`, whose tracer (dynamo) would break VeLO's update into
  hundreds of small graphs and recompile them until its limit (minutes for
  a tiny model); `outside_torch_compile` keeps the update out of that
  trace (one graph break), so it runs as it does without `jit_compile`.

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
from keras_velo.training.sharded_update import sharded_prefab_update


def update_function(layout, weight_decays, horizon, active, compile_update, sharded=False):
    """`prefab_update` with these settings bound, compiled where `compile_update` asks.

    Called as `f(theta, state, params, grads, loss, accumulation=...,
    step_scale=..., fraction_trained=...)`; returns what `prefab_update`
    returns. With gradient accumulation on PyTorch the conditional between
    accumulating and updating stays eager around the compiled update.
    `sharded`: the state is per tensor (`sharded_update`, JAX only).
    """
    eager = functools.partial(
        sharded_prefab_update if sharded else prefab_update, weight_decays=weight_decays,
        num_accumulated=horizon.num_accumulated, active=active,
    )
    backend = keras.backend.backend()
    if backend in ("jax", "tensorflow"):
        return eager if compile_update is False else compiled_when_eager(eager, backend)
    num_parameters = sum(math.prod(shape) for shape in layout.shapes)
    if not resolve_compile_update(compile_update, num_parameters, horizon.velo_steps):
        return eager
    strict = compile_update is True
    if horizon.num_accumulated == 1:
        return compiled_prefab_update(layout, weight_decays, active, strict)
    return functools.partial(eager, core=compiled_packed_update(layout, active, True, strict))


def compiled_when_eager(function, backend):
    """`function` as one program (`jax.jit`, `tf.function`) when called eagerly; traced, itself.

    A caller that is being traced (`fit`'s train step, the caller's own
    `jax.jit` or `tf.function`) gets the plain function, which its trace
    inlines. `call.traces` counts the traces of the program (one per input
    structure).
    """
    def traced(*args, **kwargs):
        call.traces += 1
        return function(*args, **kwargs)

    if backend == "jax":
        import jax

        program = jax.jit(traced)

        def inside_a_trace(args, kwargs):
            return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))
    else:
        import tensorflow as tf

        program = tf.function(traced, autograph=False)

        def inside_a_trace(args, kwargs):
            return not tf.executing_eagerly()

    @functools.wraps(function)
    def call(*args, **kwargs):
        if inside_a_trace(args, kwargs):
            return function(*args, **kwargs)
        return program(*args, **kwargs)

    call.traces = 0
    return call


def outside_torch_compile():
    """`run(update_step, *args)`: a PyTorch optimizer step without autograd, out of `torch.compile`'s trace.

    Called inside a train step that `torch.compile` traces, the call is one
    graph break: the update runs eagerly, or as VeLO's own compiled program.
    Built once per process.
    """
    global _outside_torch_compile
    if _outside_torch_compile is None:
        import torch

        @torch.compiler.disable
        def run(update_step, *args):
            with torch.no_grad():
                return update_step(*args)

        _outside_torch_compile = run
    return _outside_torch_compile


_outside_torch_compile = None
