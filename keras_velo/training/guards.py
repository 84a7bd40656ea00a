"""What VeLO checks before it updates: the loss, the horizon, its weights.

An update that cannot be what the user asked for raises before anything
changes, with what to do instead. In Keras' JAX `fit` the train step has
taken the model's variables by then; `fail` hands them back first
(`jax_fit_state`), so the model is left as it was.
"""

from keras_velo.maths.theta import CheckpointError
from keras_velo.training.jax_fit_state import hand_back_jax_fit_state

MISSING_LOSS_MESSAGE = (
    "VeLO needs the training loss of every step, and none was given. In "
    "`model.fit`, pass the callback: `model.fit(..., callbacks=["
    "keras_velo.VeLOCallback()])` (Keras does not hand the loss to "
    "optimizers; for `train_on_batch`, call `keras_velo.attach(model)` once "
    "after `compile`). In a custom training loop, pass it with "
    "`optimizer.apply(grads, variables, loss=loss)`, "
    "`optimizer.apply_gradients(zip(grads, variables), loss=loss)` or "
    "`optimizer.stateless_apply(opt_vars, grads, train_vars, loss=loss)`. "
    "The model's weights are unchanged."
)

UNKNOWN_HORIZON_MESSAGE = (
    "VeLO does not know how many steps training will run: pass "
    "VeLO(total_steps=...), or train with `model.fit(..., callbacks="
    "[keras_velo.VeLOCallback()])`, which infers it from epochs x "
    "batches per epoch. The model's weights are unchanged."
)


def fail(error):
    """Raises `error`, first letting Keras' JAX `fit` put the model's variables back."""
    hand_back_jax_fit_state()
    raise error


def require_loss(loss, loss_given):
    """Fails unless a loss is passed or already fed (by a train step or an outer call)."""
    if loss is None and not loss_given:
        fail(ValueError(MISSING_LOSS_MESSAGE))


def check_ready(horizon, theta_error):
    """Fails if the horizon is unknown or theta could not be restored (`theta_error`)."""
    if horizon is None:
        fail(ValueError(UNKNOWN_HORIZON_MESSAGE))
    if theta_error is not None:
        error = CheckpointError(
            "VeLO was restored from a config without its saved variables, "
            f"and its weights could not be loaded: {theta_error}"
        )
        error.__cause__ = theta_error
        fail(error)
