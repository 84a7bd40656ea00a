"""Which function computes an optimizer's update: eager, or compiled on PyTorch.

JAX and TensorFlow compile VeLO's update with the train step; on PyTorch,
where Keras runs eagerly, the optimizer compiles it itself when
`VeLO(compile_update=...)` says so (`keras_velo.packed.torch_compile`).
"""

import functools
import math

from keras_velo.packed.prefab import prefab_update
from keras_velo.packed.torch_compile import (
    compiled_packed_update,
    compiled_prefab_update,
    resolve_compile_update,
)


def update_function(layout, weight_decays, horizon, active, compile_update):
    """`prefab_update` with these settings bound, compiled where `compile_update` asks.

    Called as `f(theta, state, params, grads, loss, accumulation=...,
    step_scale=..., fraction_trained=...)`; returns what `prefab_update`
    returns. With gradient accumulation the conditional between
    accumulating and updating stays eager around the compiled update.
    """
    eager = functools.partial(
        prefab_update, weight_decays=weight_decays,
        num_accumulated=horizon.num_accumulated, active=active,
    )
    num_parameters = sum(math.prod(shape) for shape in layout.shapes)
    if not resolve_compile_update(compile_update, num_parameters, horizon.velo_steps):
        return eager
    strict = compile_update is True
    if horizon.num_accumulated == 1:
        return compiled_prefab_update(layout, weight_decays, active, strict)
    return functools.partial(eager, core=compiled_packed_update(layout, active, True, strict))
