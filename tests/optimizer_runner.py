"""Runs `VeLO` through a sequence of updates the fastest way each backend allows, or eagerly.

JAX: `jax.jit(optimizer.stateless_apply)`; TensorFlow: `apply` inside
`tf.function(jit_compile=True)` (as `fit(jit_compile=True)` runs it);
PyTorch: eager `apply`. With `eager=True`, a plain `optimizer.apply` per
update on every backend (a custom training loop). After every update the
Keras variables hold the new values, so tests can read them.
"""

import keras


def run_updates(optimizer, variables, grads_per_step, losses, after_step=None, eager=False):
    """Applies `grads_per_step[t]` with `losses[t]`; calls `after_step(t)` after each."""
    optimizer.build(variables)
    backend = keras.backend.backend()
    if eager:
        for t, (grads, loss) in enumerate(zip(grads_per_step, losses)):
            optimizer.apply(list(grads), variables, loss=loss)
            if after_step:
                after_step(t)
        return
    if backend == "jax":
        import jax

        step = jax.jit(optimizer.stateless_apply)
        for t, (grads, loss) in enumerate(zip(grads_per_step, losses)):
            train_values, optimizer_values = step(
                [v.value for v in optimizer.variables],
                list(grads),
                [v.value for v in variables],
                loss=loss,
            )
            for variable, value in zip(variables, train_values):
                variable.assign(value)
            for variable, value in zip(optimizer.variables, optimizer_values):
                variable.assign(value)
            if after_step:
                after_step(t)
        return
    if backend == "tensorflow":
        import tensorflow as tf

        @tf.function(jit_compile=True)
        def step(grads, loss):
            optimizer.apply(grads, variables, loss=loss)

    else:

        def step(grads, loss):
            optimizer.apply(grads, variables, loss=loss)

    for t, (grads, loss) in enumerate(zip(grads_per_step, losses)):
        step(list(grads), loss)
        if after_step:
            after_step(t)
