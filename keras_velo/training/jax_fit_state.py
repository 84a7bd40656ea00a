"""Keeping a model usable when VeLO raises inside Keras' JAX `fit`.

Keras' JAX `fit` takes the values of every model and optimizer variable
into a `state` tuple and empties the variables (`_purge_model_variables`,
to save memory) *before* its first train step is traced, and puts the
values back only from the state of a step that finished. An error raised
while that first step is traced (VeLO's missing loss, a horizon that was
never set) would leave every variable empty: `get_weights`, `evaluate`
and `save` then fail, and the trained weights are lost.

`hand_back_jax_fit_state()`, called by VeLO right before it raises, finds
the `fit` call on the stack and hands its pre-step `state` to Keras'
own mechanism for callbacks (`model._jax_state`), so the `finally` of
`fit` restores every variable to its value before the failing step.
Outside a JAX `fit` it does nothing. Keras is pinned (constraints.txt);
`tests/test_fit.py` checks this on every backend.
"""

import sys

_STATE_NAMES = (
    "trainable_variables",
    "non_trainable_variables",
    "optimizer_variables",
    "metrics_variables",
)


def hand_back_jax_fit_state():
    """Lets Keras' JAX `fit` restore the model's variables after the error about to be raised."""
    import keras

    if keras.backend.backend() != "jax":
        return
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "fit" and code.co_filename.endswith(("jax/trainer.py", "jax\\trainer.py")):
            model, state = frame.f_locals.get("self"), frame.f_locals.get("state")
            if isinstance(state, tuple) and len(state) == len(_STATE_NAMES):
                model._jax_state = dict(zip(_STATE_NAMES, state))
                model._jax_state_synced = False
            return
        frame = frame.f_back
