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

from keras_velo.packed import segments
from keras_velo.packed.packing import pack_pair, packed_layout, unpack
from keras_velo.packed.structured_cond import structured_cond
from keras_velo.packed.update import StepDiagnostics, packed_update, to_tensors

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

    Fields: `grad_sums` (packed `(factored, diagonal)` buffers, see
    `keras_velo.packed.packing`), `loss_sum` `[]` float32, `count` `[]` int32 (calls
    so far, never reset).
    """

    grad_sums: tuple
    loss_sum: object
    count: object


def init_gradient_accumulation(shapes):
    """Zeroed numpy `GradientAccumulation` for tensors of the given shapes."""
    layout = packed_layout(shapes)
    return GradientAccumulation(
        tuple(None if r.empty else np.zeros(r.shape, np.float32)
              for r in (layout.factored, layout.diagonal)),
        np.zeros([], np.float32),
        np.zeros([], np.int32),
    )


def add_weight_decay(layout, params, grads, loss, weight_decays):
    """Coupled L2 on packed buffers: `g + wd p` and `loss + sum_t wd_t sum(p_t²)`.

    `weight_decays` is one float per tensor (0 leaves a tensor undecayed).
    """
    decays = np.asarray(weight_decays, np.float32)
    new_grads, penalty = [], 0.0
    for region, p, g in zip((layout.factored, layout.diagonal), params, grads):
        if region.empty:
            new_grads.append(None)
            continue
        chunk_decay = ops.convert_to_tensor(decays[region.chunk_tensor][:, None, None])
        new_grads.append(g + chunk_decay * p)
        squares = segments.tensor_sums(
            region, segments.chunk_sums([ops.square(p)]), layout.num_tensors
        )[:, 0]
        penalty = penalty + ops.sum(ops.convert_to_tensor(decays) * squares)
    return tuple(new_grads), loss + penalty


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
    active=None,
    core=packed_update,
):
    """`velo_update` behind the reference wrapper (weight decay, accumulation).

    Returns `(new_params, new_state, new_accumulation, StepDiagnostics)`;
    `accumulation` is None unless `num_accumulated > 1`. On calls that only
    accumulate, params and state are returned unchanged.

    With `skip_non_finite` (not in the reference), a call whose loss, any
    gradient or any step is NaN or infinite changes nothing: params, state
    and accumulation come back as they were and `diagnostics.skipped` is
    True.

    `active` (one static bool per tensor, or None for all) names the tensors
    taking part; the others' entries in `params` and `grads` may be None,
    come back as None, and keep their state.

    `core` computes the update on the packed buffers: `packed_update`, or
    the same compiled (`torch_compile.compiled_packed_update`).
    """
    params, grads = list(params), list(grads)
    layout = packed_layout(_all_shapes(params, grads))
    state, params, grads, accumulation = to_tensors((state, params, grads, accumulation))
    dtypes = [None if p is None else keras.backend.standardize_dtype(p.dtype) for p in params]
    always_true = state.iteration >= 0  # see `packing.materialize`
    # Fallbacks of the same shapes for the branches never taken (`materialize`).
    rms = tuple(None if a is None else a.rms for a in (state.factored, state.diagonal))
    packed_params, packed_grads = pack_pair(layout, params, grads, always_true, fallbacks=rms)
    loss = ops.cast(loss, "float32")
    if weight_decays is not None and any(wd != 0.0 for wd in weight_decays):
        if active is not None:
            weight_decays = [wd if a else 0.0 for wd, a in zip(weight_decays, active)]
        packed_grads, loss = add_weight_decay(
            layout, packed_params, packed_grads, loss, weight_decays
        )
    if num_accumulated == 1:
        new_packed, new_state, diagnostics = core(
            theta, state, layout, packed_params, packed_grads, loss, step_scale,
            fraction_trained, active, skip_non_finite,
        )
        new_accumulation = None
    else:
        new_packed, new_state, new_accumulation, diagnostics = _accumulate(
            theta, state, layout, packed_params, packed_grads, loss, num_accumulated,
            accumulation, step_scale, fraction_trained, active, skip_non_finite, core,
        )
    new_params = unpack(layout, *new_packed, dtypes=[d or "float32" for d in dtypes])
    if active is not None:
        new_params = [p if a else None for p, a in zip(new_params, active)]
    return new_params, new_state, new_accumulation, diagnostics


def _all_shapes(params, grads):
    shapes = []
    for p, g in zip(params, grads):
        source = p if p is not None else g
        if source is None:
            raise ValueError("Each tensor needs its parameter or gradient for its shape.")
        shapes.append(tuple(source.shape))
    return shapes


def _all_finite(tensors):
    """`[]` bool: every element of every tensor is finite."""
    flags = [ops.all(ops.isfinite(t)) for t in tensors]
    return flags[0] if len(flags) == 1 else ops.all(ops.stack(flags))


def _accumulate(
    theta, state, layout, params, grads, loss, num_accumulated, accumulation, step_scale,
    fraction_trained, active, skip_non_finite, core=packed_update,
):
    """Adds the call to the running sums; every `num_accumulated`-th call runs VeLO on their means.

    A skipped call (non-finite loss, gradient or step) leaves the sums and
    the count as they were.
    """
    count = accumulation.count + 1
    grad_sums = tuple(
        None if s is None else s + g for s, g in zip(accumulation.grad_sums, grads)
    )
    loss_sum = accumulation.loss_sum + loss
    is_update = ops.equal(count % num_accumulated, 0)

    def run_velo():
        mean_grads = tuple(None if s is None else s / num_accumulated for s in grad_sums)
        new_params, new_state, diagnostics = core(
            theta, state, layout, params, mean_grads, loss_sum / num_accumulated, step_scale,
            fraction_trained, active, skip_non_finite,
        )
        reset = GradientAccumulation(
            tuple(None if s is None else ops.zeros_like(s) for s in grad_sums),
            ops.zeros_like(loss_sum),
            count,
        )
        return new_params, new_state, reset, diagnostics

    def only_accumulate():
        if fraction_trained is None:
            fraction = ops.cast(state.iteration, "float32") / ops.cast(
                state.num_steps, "float32"
            )
        else:
            fraction = ops.cast(fraction_trained, "float32")
        finite = _all_finite([loss] + [g for g in grads if g is not None])
        diagnostics = StepDiagnostics(
            fraction,
            ops.zeros([9], "float32"),
            ops.zeros([layout.num_tensors], "float32"),
            ops.logical_not(finite) if skip_non_finite else ops.convert_to_tensor(False),
            ops.zeros([layout.num_tensors], "float32"),
            finite,
        )
        summed = GradientAccumulation(grad_sums, loss_sum, count)
        return params, state, summed, diagnostics

    new_params, new_state, new_accumulation, diagnostics = structured_cond(
        is_update, run_velo, only_accumulate
    )
    if skip_non_finite:
        new_accumulation = keras.tree.map_structure(
            lambda new, old: None if new is None else ops.where(diagnostics.skipped, old, new),
            new_accumulation,
            accumulation,
        )
    return new_params, new_state, new_accumulation, diagnostics
