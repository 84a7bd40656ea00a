"""Checks of `VeLO`'s constructor arguments, each error naming the value and the fix.

Every check rejects booleans (`True` is an `int` to Python, never a step
count or a decay), non-finite numbers (a NaN step size would write NaN into
every weight at the first update) and values out of range.
"""

import math
import numbers
import warnings

# What each integer argument counts, and an example of a good value.
_COUNTS = {
    "total_steps": (
        "the number of updates training will run; VeLO's training fraction "
        "is iteration / total_steps",
        "epochs * steps_per_epoch",
    ),
    "max_training_steps": (
        "the longest horizon VeLO runs one update per step for; longer "
        "runs average consecutive gradients",
        "150_000, the reference's",
    ),
    "max_consecutive_skips": (
        "how many updates in a row may be skipped for NaN/inf before "
        "training stops with NonFiniteTrainingError",
        "100, the default",
    ),
}


def _kind(value):
    return f"{value!r} of type {type(value).__name__}"


def positive_int(name, value):
    """`value` as an int, or a ValueError saying why it is not a positive integer."""
    meaning, example = _COUNTS.get(name, ("a count", "1"))
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be a positive integer ({meaning}), got {_kind(value)}. "
            f"Pass e.g. {name}={example}."
        )
    if value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer ({meaning}), got {value}. "
            f"Pass e.g. {name}={example}."
        )
    return int(value)


def _finite_real(name, value, what):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be {what}, got {_kind(value)}.")
    if not math.isfinite(value):
        raise ValueError(
            f"`{name}` must be {what}, got {value!r}: a non-finite value would "
            "corrupt every update."
        )
    return float(value)


def non_negative_float(name, value):
    """A finite float >= 0 (VeLO's coupled weight decay)."""
    value = _finite_real(name, value, "a finite number >= 0")
    if value < 0:
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return value


def optional_positive_seconds(name, value):
    """None, or a finite number of seconds > 0 (the time budget)."""
    if value is None:
        return None
    value = _finite_real(name, value, "a positive, finite number of seconds (or None)")
    if value <= 0:
        raise ValueError(
            f"`{name}` must be a positive, finite number of seconds (or None), got {value!r}."
        )
    return value


def step_multiplier(name, value):
    """VeLO's `learning_rate`: a finite float > 0, or a schedule / callable (left to Keras)."""
    import keras

    if isinstance(value, keras.optimizers.schedules.LearningRateSchedule) or callable(value):
        return value
    value = _finite_real(
        name, value, "a positive, finite multiplier of VeLO's step (1.0 is the reference) or a schedule"
    )
    if value <= 0:
        raise ValueError(
            f"`{name}` must be a positive multiplier of VeLO's step (1.0 is the "
            f"reference; below 1 damps it), got {value!r}."
        )
    if value < SMALLEST_UNSURPRISING_MULTIPLIER:
        warnings.warn(
            f"VeLO(learning_rate={value!r}) shrinks every step VeLO takes "
            f"{1 / value:,.0f}-fold, so training will barely move. VeLO chooses its own "
            "step sizes; its `learning_rate` is a multiplier of them (1.0, the reference, "
            "is what it was meta-trained for), not Adam's learning rate. Leave it out, "
            "or damp VeLO's steps gently (e.g. 0.5).",
            stacklevel=4,
        )
    return value


# Below this, a `learning_rate` is most likely an Adam habit (1e-3), not a damping.
SMALLEST_UNSURPRISING_MULTIPLIER = 0.05


def integer_seed(name, value):
    """An integer seed (the random init's, used with weights=None)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be an integer (the seed of the random init used "
            f"with weights=None), got {_kind(value)}."
        )
    return int(value)


def compile_choice(name, value):
    """`"auto"`, True or False (whether VeLO's update is compiled when called eagerly)."""
    if value == "auto" or isinstance(value, bool):
        return value
    raise ValueError(
        f"`{name}` must be \"auto\", True or False (whether VeLO's update runs "
        f"as one compiled program when called eagerly: jax.jit, tf.function or "
        f"torch.compile), got {_kind(value)}. Pass "
        f"{name}=\"auto\" (the default) or {name}=False to run it op by op."
    )
