"""VeLO's update when the parameters are sharded across devices (JAX `ModelParallel`).

The packed update (`keras_velo.packed`) lays every tensor out in shared
buffers: one program whatever the number of tensors, but a buffer cannot be
split the way each parameter is, so under `keras.distribution.ModelParallel`
its state was whole on every device and the step gathered it. When any
trainable variable is sharded, VeLO keeps its state per tensor instead,
each per-parameter part laid out like its parameter
(`sharded_state_layouts`), and updates with
`keras_velo.maths.tensorwise_update`, where every per-parameter value has
its tensor's shape: XLA's partitioner then keeps each element's work on
the devices that hold it, and only per-tensor statistics and the factored
second moments' row or column means cross devices.

`sharded_prefab_update` is the reference wrapper around it (coupled weight
decay, tensors without gradients left out) with `prefab_update`'s
signature and results; horizons beyond `max_training_steps` (gradient
accumulation) are not supported here.
"""

import keras
import numpy as np
from keras import ops

from keras_velo.maths.accumulators import Accumulators, factored_dims
from keras_velo.maths.tensorwise_update import UnpackedState, tensorwise_update
from keras_velo.packed.update import StepDiagnostics


NO_ACCUMULATION_MESSAGE = (
    "VeLO with sharded parameters (keras.distribution.ModelParallel) supports "
    "total_steps up to max_training_steps; longer horizons average gradients "
    "over several calls, which is not implemented for sharded parameters. "
    "Pass a smaller total_steps, or a larger VeLO(max_training_steps=...)."
)


def sharded_layouts(variables):
    """The variables' layouts if any of them is sharded (JAX `keras.distribution`), else None."""
    if keras.backend.backend() != "jax":
        return None
    layouts = [getattr(v, "_layout", None) for v in variables]
    if not any(layout is not None and any(a is not None for a in getattr(layout, "axes", ()))
               for layout in layouts):
        return None
    return layouts


def sharded_state_layouts(shape, layout):
    """`Accumulators` of `TensorLayout`s for one tensor's state (None if `layout` is None).

    Momenta and diagonal moments `[3, *S]` and the rms `S` are laid out like
    the parameter; the row moment `[3, S without d0]` and the column moment
    `[3, S without d1]` like the parameter without that axis.
    """
    if layout is None:
        return Accumulators(None, None, None, None, None)
    axes, mesh = tuple(layout.axes), layout.device_mesh

    def laid_out(*parts):
        return keras.distribution.TensorLayout(tuple(parts), mesh)

    dims = factored_dims(tuple(shape))
    if dims is None:
        return Accumulators(laid_out(None, *axes), laid_out(*axes),
                            diag_moment=laid_out(None, *axes))
    d0, d1 = dims
    return Accumulators(
        laid_out(None, *axes), laid_out(*axes),
        row_moment=laid_out(None, *(a for i, a in enumerate(axes) if i != d0)),
        col_moment=laid_out(None, *(a for i, a in enumerate(axes) if i != d1)),
    )


def sharded_prefab_update(theta, state, params, grads, loss, *, weight_decays=None,
                          num_accumulated=1, accumulation=None, step_scale=1.0,
                          fraction_trained=None, skip_non_finite=True, active=None):
    """`prefab_update` on an `UnpackedState`: `(new_params, new_state, None, StepDiagnostics)`.

    Tensors whose entry in `active` is False (no gradient) keep their
    parameters, state and LSTM rows, and are left out of the cross-tensor
    max, as in `prefab_update`.
    """
    if num_accumulated != 1:
        raise ValueError(NO_ACCUMULATION_MESSAGE)
    del accumulation
    count = len(params)
    chosen = [i for i in range(count) if active is None or active[i]]
    loss = ops.cast(loss, "float32")
    grads = list(grads)
    if weight_decays is not None and any(weight_decays[i] != 0.0 for i in chosen):
        for i in chosen:
            if weight_decays[i] != 0.0:
                p = ops.cast(params[i], "float32")
                grads[i] = ops.cast(grads[i], "float32") + weight_decays[i] * p
                loss = loss + weight_decays[i] * ops.sum(ops.square(p))
    rows = np.asarray(chosen, np.int32)
    sub_state = state._replace(
        accumulators=tuple(state.accumulators[i] for i in chosen),
        lstm_hidden=ops.take(state.lstm_hidden, rows, axis=0),
        lstm_cell=ops.take(state.lstm_cell, rows, axis=0),
    )
    new_sub, sub_new_state, diagnostics = tensorwise_update(
        theta, sub_state, [params[i] for i in chosen], [grads[i] for i in chosen], loss,
        step_scale, fraction_trained, skip_non_finite,
    )
    new_params = [None] * count
    accumulators = list(state.accumulators)
    position = {i: j for j, i in enumerate(chosen)}
    for i, j in position.items():
        new_params[i] = new_sub[j]
        accumulators[i] = sub_new_state.accumulators[j]

    def rows_back(new, old):
        if len(chosen) == count:
            return new
        return ops.stack([new[position[i]] if i in position else old[i] for i in range(count)])

    new_state = UnpackedState(
        sub_new_state.iteration, sub_new_state.num_steps, sub_new_state.loss_buffer,
        tuple(accumulators),
        rows_back(sub_new_state.lstm_hidden, state.lstm_hidden),
        rows_back(sub_new_state.lstm_cell, state.lstm_cell),
    )

    def per_tensor(values):
        return rows_back(values, ops.zeros((count,), "float32"))

    return new_params, new_state, None, StepDiagnostics(
        diagnostics["fraction_trained"], diagnostics["loss_features"],
        per_tensor(diagnostics["lr_mult"]), skipped=diagnostics["skipped"],
        step_rms=per_tensor(diagnostics["step_rms"]),
        gradients_finite=diagnostics["gradients_finite"],
    )
