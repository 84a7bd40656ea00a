"""Checks of `VeLO`'s constructor arguments, each error naming the value and the fix."""

import numbers


def positive_int(name, value):
    """`value` as an int, or a ValueError saying why it is not a positive integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"`{name}` must be a positive integer (the number of training "
            f"steps), got {value!r} of type {type(value).__name__}. "
            f"Pass e.g. {name}=epochs * steps_per_epoch."
        )
    if value <= 0:
        raise ValueError(
            f"`{name}` must be a positive integer, got {value}. VeLO uses it "
            "for the fraction of training done; pass the number of updates "
            "you will run."
        )
    return int(value)


def non_negative_float(name, value):
    if not isinstance(value, numbers.Real) or value < 0:
        raise ValueError(f"`{name}` must be a float >= 0, got {value!r}.")
    return float(value)


def optional_positive_seconds(name, value):
    if value is None:
        return None
    if not isinstance(value, numbers.Real) or value <= 0:
        raise ValueError(f"`{name}` must be a positive number of seconds, got {value!r}.")
    return float(value)
