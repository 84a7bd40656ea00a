"""Warnings and errors about a VeLO run going wrong, shared by eager and `fit` paths.

* Skipped updates: a non-finite loss, gradient, step or LSTM state leaves
  the parameters and every piece of VeLO's state unchanged
  (`prefab_update(skip_non_finite=True)`); each one is counted and warned
  about with its cause, and too many in a row raise. What VeLO cannot keep
  is said too: layer statistics Keras updates outside the optimizer.
* Running past `total_steps`: VeLO keeps going exactly as the reference does
  (the training fraction exceeds 1; its features saturate past 1.1), with
  one warning per optimizer.
* Updates that never reach VeLO (dropped by the loss-scale optimizer),
  batches `fit` trains twice (a mid-epoch `BackupAndRestore` resume) and
  a `fit` whose data ran out before its schedule ended: one warning each,
  with what it did to VeLO's schedule.
"""

import os
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


SKIP_CAUSES = {
    1: "the training loss was NaN or infinite",
    2: "a gradient was NaN or infinite",
    3: (
        "VeLO's own update was not finite although the loss and gradients "
        "were (check learning_rate, time_budget and the weights it runs with)"
    ),
}
"""Why an update was skipped, by the code VeLO records (`health_variables()["skip_cause"]`)."""

KEPT = {
    1: "VeLO left the trainable parameters and all of its own state unchanged",
    2: "VeLO left the trainable parameters and all of its own state unchanged",
    3: (
        "VeLO left the trainable parameters, its step count, loss history and "
        "LSTM state unchanged; its momentum and second-moment accumulators "
        "took in this step's (finite) gradients"
    ),
}
NOT_KEPT = (
    "layer statistics that Keras updates outside the optimizer (e.g. "
    "BatchNormalization's moving mean and variance) were updated from this "
    "batch and may now be NaN"
)


def check_skips(consecutive_skips, skipped_steps, max_consecutive_skips, skip_cause=None):
    """Warns if the last update was skipped (saying why); raises after too many in a row."""
    cause = SKIP_CAUSES.get(skip_cause, "the loss, a gradient or the update was NaN or infinite")
    if consecutive_skips >= max_consecutive_skips:
        raise NonFiniteTrainingError(
            f"VeLO skipped {consecutive_skips} consecutive updates; the last one "
            f"because {cause} ({skipped_steps} skipped in all). Trainable "
            "parameters are unchanged since the last finite step. " + SKIP_ADVICE
        )
    if consecutive_skips > 0:
        warnings.warn(
            f"VeLO skipped an update because {cause} ({skipped_steps} skipped "
            f"so far). {KEPT.get(skip_cause, KEPT[1])}; {NOT_KEPT}.",
            RuntimeWarning,
            stacklevel=_user_stacklevel(),
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
        stacklevel=_user_stacklevel(),
    )


def check_dropped_updates(optimizer, start, end, batches):
    """Warns when batches of a `fit` never became VeLO updates, and what that did to its schedule.

    `start` and `end` are VeLO's `(iteration, skipped_steps)` before and
    after the fit, `batches` the batches it trained on. Updates VeLO
    skipped itself were warned about already; the rest were dropped before
    VeLO saw them, by Keras' `LossScaleOptimizer` (mixed_float16: a step
    whose scaled gradients overflow only lowers the loss scale).
    """
    horizon = optimizer.horizon
    if horizon is None or horizon.num_accumulated != 1:  # skip counts are per call then
        return
    accumulation = optimizer.gradient_accumulation_steps or 1
    expected = batches // accumulation // horizon.num_accumulated
    done, skipped = end[0] - start[0], end[1] - start[1]
    dropped = expected - done - skipped
    if dropped <= 0:
        return
    warnings.warn(
        f"{dropped} of this fit's {expected} updates never reached VeLO: the "
        "loss-scale optimizer (mixed_float16) dropped them because the scaled "
        "gradients overflowed. VeLO counts only the updates it makes, so its "
        f"training fraction ended at {end[0] / horizon.velo_steps:.3f} rather than "
        f"{(start[0] + expected) / horizon.velo_steps:.3f}: the end of its schedule "
        "was not reached. Train that many more steps, pass a smaller "
        "total_steps, or use mixed_bfloat16 / float32 (no loss scaling).",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


def report_replayed_batches(optimizer, epoch, replayed, extended):
    """Warns once that `fit` replays `replayed` already-trained batches of `epoch`, and what VeLO did.

    Keras' `BackupAndRestore` restores a mid-epoch backup (`save_freq=N`)
    but restarts that epoch from its first batch: the batches trained
    before the backup run again, so the fit makes `replayed` more updates
    than planned. `extended` says whether VeLO's horizon grew by them
    (`VeLO.extend_total_steps`) so that its schedule still ends with the fit.
    """
    if extended:
        consequence = (
            f"VeLO's total_steps grew by {replayed} to {optimizer.total_steps} so that "
            "its schedule still ends with this fit"
        )
    else:
        consequence = (
            f"VeLO's total_steps={optimizer.total_steps} stays (a longer horizon would "
            "need another gradient accumulation, max_training_steps), so VeLO will "
            f"run {replayed} updates past the end of its schedule"
        )
    warnings.warn(
        f"This fit resumed from a backup made {replayed} batches into epoch "
        f"{epoch + 1}; Keras replays that epoch from its first batch, so those "
        f"{replayed} batches are trained on twice. {consequence}. For a resume "
        "that equals an uninterrupted run, back up at epoch ends "
        "(`BackupAndRestore(save_freq=\"epoch\")`).",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


def report_unfinished_schedule(optimizer, planned, trained, iteration):
    """Warns that `fit` trained `trained` of its `planned` batches and VeLO's schedule did not end.

    `iteration` is VeLO's update count at the end of the fit.

    Keras ends a `fit` whose data runs out before `steps_per_epoch x
    epochs` batches with its own warning; VeLO's training fraction then
    stops short of 1, so its end-of-training behaviour (annealed steps)
    never ran.
    """
    horizon = optimizer.horizon
    if horizon is None or iteration >= horizon.velo_steps:
        return
    warnings.warn(
        f"fit trained {trained} of the {planned} batches it planned (the data ran "
        f"out), so VeLO's schedule did not finish: its training fraction is "
        f"{iteration / horizon.velo_steps:.3f} of total_steps={optimizer.total_steps}, and "
        "the end of training it anneals towards never came. Give fit data for "
        "steps_per_epoch x epochs batches (`dataset.repeat()`), or set "
        "VeLO(total_steps=...) to the updates that will run.",
        RuntimeWarning,
        stacklevel=_user_stacklevel(),
    )


_LIBRARY_DIRS = tuple(
    os.path.dirname(os.path.abspath(module.__file__)) + os.sep for module in (keras,)
) + (os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,)  # keras_velo/


def _user_stacklevel():
    """The `stacklevel` that points a warning at the first frame outside Keras and keras-velo.

    A warning raised from a callback inside `fit` then names the user's
    `model.fit(...)` line, not Keras' callback machinery.
    """
    import sys

    frame, level = sys._getframe(1), 1  # the frame calling warnings.warn
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_LIBRARY_DIRS):
        frame, level = frame.f_back, level + 1
    return level


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
    check_skips(value("consecutive_skips"), value("skipped_steps"),
                optimizer.max_consecutive_skips, value("skip_cause"))
    check_horizon(optimizer, value("iteration"))
