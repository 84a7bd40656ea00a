"""Warnings and errors about a VeLO run going wrong, shared by eager and `fit` paths.

* Skipped updates: a non-finite loss or gradient leaves parameters and every
  piece of VeLO's state unchanged (`prefab_update(skip_non_finite=True)`);
  each one is counted and warned about, and too many in a row raise.
* Running past `total_steps`: VeLO keeps going exactly as the reference does
  (the training fraction exceeds 1; its features saturate past 1.1), with
  one warning per optimizer.
"""

import warnings

import keras
from keras import ops

SKIP_ADVICE = (
    "Check the data and the model for NaN/inf (e.g. log(0), division by zero, "
    "an exploding loss), try mixed precision off or loss scaling on, clip "
    "gradients (`clipnorm=`), or lower VeLO's step with `learning_rate=` "
    "below 1.0."
)


class NonFiniteTrainingError(RuntimeError):
    """VeLO skipped too many consecutive updates because of NaN/inf values."""


def check_skips(consecutive_skips, skipped_steps, max_consecutive_skips):
    """Warns if the last update was skipped; raises after too many in a row."""
    if consecutive_skips >= max_consecutive_skips:
        raise NonFiniteTrainingError(
            f"VeLO skipped {consecutive_skips} consecutive updates because the "
            f"loss or a gradient was NaN or infinite ({skipped_steps} skipped in "
            f"all); parameters are unchanged since the last finite step. "
            + SKIP_ADVICE
        )
    if consecutive_skips > 0:
        warnings.warn(
            "VeLO skipped an update: the loss or a gradient was NaN or "
            f"infinite ({skipped_steps} skipped so far; parameters and optimizer "
            "state were left unchanged).",
            RuntimeWarning,
            stacklevel=3,
        )


def check_horizon(optimizer, velo_iteration):
    """Warns once when VeLO runs more updates than it was told it would."""
    horizon = optimizer.horizon
    if horizon is None or velo_iteration <= horizon.velo_steps:
        return
    if getattr(optimizer, "_warned_past_horizon", False):
        return
    optimizer._warned_past_horizon = True
    warnings.warn(
        f"VeLO has run {velo_iteration} updates but was told total_steps="
        f"{horizon.total_steps}: it continues as the reference does (its "
        "training-fraction input exceeds 1), which is outside what it was "
        "meta-trained on. Pass a larger total_steps to train longer.",
        RuntimeWarning,
        stacklevel=3,
    )


def _is_concrete(value):
    """True outside tracing (eager TF/torch/JAX), where values can be read."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(value, jax.core.Tracer)
    return True


def check_health_if_eager(optimizer, variables):
    """`check_skips` and `check_horizon` on `optimizer.health_variables()`, outside tracing."""
    if not _is_concrete(variables["consecutive_skips"].value):
        return
    value = lambda name: int(ops.convert_to_numpy(variables[name].value))  # noqa: E731
    check_skips(value("consecutive_skips"), value("skipped_steps"), optimizer.max_consecutive_skips)
    check_horizon(optimizer, value("iteration"))
