"""The reference's user-facing wrapper: coupled weight decay and long horizons.

Spec: `shared/spec/velo_reference.md` §6 (reference:
`research/general_lopt/prefab.py`, `optimizers/gradient_accumulator.py`,
`optimizers/optimizer_wrappers.py::WeightDecayWrapper`).

* Weight decay is **coupled** L2, applied before anything else:
  `g <- g + wd p` per tensor and `loss <- loss + wd sum(p²)` (no 1/2; this is
  what the reference does). Keras' own `weight_decay` is decoupled
  (`p <- p - lr wd p`); VeLO's constructor argument means the coupled one.
* VeLO was meta-trained for at most 150,000 steps. For a longer horizon n,
  k = ceil(n / max_training_steps) calls are averaged (gradients **and**
  losses) into one VeLO update, and VeLO is told `n // k` steps.
"""

import math
from typing import NamedTuple

import keras
import numpy as np
from keras import ops

from keras_velo.update import StepDiagnostics, to_tensors, velo_update

DEFAULT_MAX_TRAINING_STEPS = 150_000


class Horizon(NamedTuple):
    """How a requested `total_steps` maps onto VeLO updates.

    Fields: `total_steps` (calls the user will make), `num_accumulated`
    (calls averaged per VeLO update, k), `velo_steps` (the `num_steps` VeLO
    is told, `total_steps // k`).
    """

    total_steps: int
    num_accumulated: int
    velo_steps: int


def plan_horizon(total_steps, max_training_steps=DEFAULT_MAX_TRAINING_STEPS):
    """`Horizon` for `total_steps`, accumulating beyond `max_training_steps`.

    >>> plan_horizon(300_000)
    Horizon(total_steps=300000, num_accumulated=2, velo_steps=150000)
    """
    if total_steps > max_training_steps:
        num_accumulated = math.ceil(total_steps / max_training_steps)
    else:
        num_accumulated = 1
    return Horizon(total_steps, num_accumulated, total_steps // num_accumulated)


class GradientAccumulation(NamedTuple):
    """Running sums between VeLO updates (only when `num_accumulated > 1`).

    Fields: `grad_sums` (tuple of arrays shaped like the params), `loss_sum`
    `[]` float32, `count` `[]` int32 (calls so far, never reset).
    """

    grad_sums: tuple
    loss_sum: object
    count: object


def init_gradient_accumulation(shapes):
    """Zeroed numpy `GradientAccumulation` for tensors of the given shapes."""
    return GradientAccumulation(
        tuple(np.zeros(s, np.float32) for s in shapes),
        np.zeros([], np.float32),
        np.zeros([], np.int32),
    )


def add_weight_decay(params, grads, loss, weight_decays):
    """Coupled L2: `g + wd p` and `loss + sum_j wd_j sum(p_j²)`.

    `weight_decays` is one float per tensor (0 leaves a tensor undecayed).
    """
    new_grads, penalty = [], 0.0
    for p, g, wd in zip(params, grads, weight_decays):
        if wd == 0.0:
            new_grads.append(g)
            continue
        p32 = ops.cast(p, "float32")
        new_grads.append(ops.cast(g, "float32") + wd * p32)
        penalty = penalty + wd * ops.sum(ops.square(p32))
    return new_grads, ops.cast(loss, "float32") + penalty


def prefab_update(
    theta,
    state,
    params,
    grads,
    loss,
    *,
    weight_decays=None,
    num_accumulated=1,
    accumulation=None,
    step_scale=1.0,
    fraction_trained=None,
    skip_non_finite=True,
):
    """`velo_update` behind the reference wrapper (weight decay, accumulation).

    Returns `(new_params, new_state, new_accumulation, StepDiagnostics)`;
    `accumulation` is None unless `num_accumulated > 1`. On calls that only
    accumulate, params and state are returned unchanged.

    With `skip_non_finite` (not in the reference), a call whose loss or any
    gradient is NaN or infinite changes nothing: params, state and
    accumulation come back as they were and `diagnostics.skipped` is True.
    """
    state, params, grads, accumulation = to_tensors(
        (state, list(params), list(grads), accumulation)
    )
    loss = ops.cast(loss, "float32")
    if weight_decays is not None and any(wd != 0.0 for wd in weight_decays):
        grads, loss = add_weight_decay(params, grads, loss, weight_decays)
    result = _prefab_update(
        theta, state, params, grads, loss, num_accumulated, accumulation,
        step_scale, fraction_trained,
    )
    if not skip_non_finite:
        return result
    finite = _all_finite([loss] + list(grads))
    new_params, new_state, new_accumulation, diagnostics = result
    keep = lambda new, old: None if new is None else ops.where(finite, new, old)  # noqa: E731
    return (
        [keep(n, o) for n, o in zip(new_params, params)],
        keras.tree.map_structure(keep, new_state, state),
        None if accumulation is None
        else keras.tree.map_structure(keep, new_accumulation, accumulation),
        diagnostics._replace(skipped=ops.logical_not(finite)),
    )


def _all_finite(tensors):
    """`[]` bool: every element of every tensor is finite."""
    flags = [ops.all(ops.isfinite(t)) for t in tensors]
    return flags[0] if len(flags) == 1 else ops.all(ops.stack(flags))


def _prefab_update(
    theta, state, params, grads, loss, num_accumulated, accumulation, step_scale,
    fraction_trained,
):
    if num_accumulated == 1:
        new_params, new_state, diagnostics = velo_update(
            theta, state, params, grads, loss, step_scale, fraction_trained
        )
        return new_params, new_state, None, diagnostics

    count = accumulation.count + 1
    grad_sums = [
        ops.cast(s, "float32") + ops.cast(g, "float32")
        for s, g in zip(accumulation.grad_sums, grads)
    ]
    loss_sum = accumulation.loss_sum + ops.cast(loss, "float32")
    is_update = ops.equal(count % num_accumulated, 0)

    def run_velo():
        mean_grads = [s / num_accumulated for s in grad_sums]
        new_params, new_state, diagnostics = velo_update(
            theta, state, params, mean_grads, loss_sum / num_accumulated, step_scale,
            fraction_trained,
        )
        zeros = [ops.zeros_like(s) for s in grad_sums]
        return new_params, new_state, zeros, ops.zeros_like(loss_sum), diagnostics

    def only_accumulate():
        if fraction_trained is None:
            fraction = ops.cast(state.iteration, "float32") / ops.cast(
                state.num_steps, "float32"
            )
        else:
            fraction = ops.cast(fraction_trained, "float32")
        diagnostics = StepDiagnostics(
            fraction,
            ops.zeros([9], "float32"),
            ops.zeros([len(params)], "float32"),
            ops.convert_to_tensor(False),
        )
        params_now = [ops.convert_to_tensor(p) for p in params]
        return params_now, state, grad_sums, loss_sum, diagnostics

    new_params, new_state, sums, loss_sum, diagnostics = _cond(
        is_update, run_velo, only_accumulate
    )
    new_accumulation = GradientAccumulation(tuple(sums), loss_sum, count)
    return new_params, new_state, new_accumulation, diagnostics


def _cond(predicate, true_fn, false_fn):
    """`ops.cond` over nested outputs that may hold None leaves (TF needs tensors)."""
    template = []

    def flat(fn):
        def wrapped():
            out = keras.tree.map_structure(
                lambda x: None if x is None else ops.convert_to_tensor(x), fn()
            )
            if not template:
                template.append(out)
            return [x for x in keras.tree.flatten(out) if x is not None]

        return wrapped

    leaves = ops.cond(predicate, flat(true_fn), flat(false_fn))
    leaves = iter(leaves)
    return keras.tree.map_structure(
        lambda x: None if x is None else next(leaves), template[0]
    )
