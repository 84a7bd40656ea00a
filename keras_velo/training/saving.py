"""VeLO inside saved models and backups: its variables, theta by name, its config.

Keras saves an optimizer's variables with the model (`model.save`,
`save_weights`, `BackupAndRestore`). VeLO's include theta, 9.28 MB; when
theta is one the package ships unmodified (`"bundled"`, `"bootstrap"`) it
is written as its SHA-256 fingerprint instead
(`keras_velo.weights.theta_by_name`), and on loading the shipped theta
with that fingerprint is restored. `SavedWeights` is the `weights=` a VeLO
rebuilt from its config gets: theta comes back with the variables.
"""

import numpy as np
from keras import ops

from keras_velo.maths.theta import CheckpointError, flatten_theta
from keras_velo.weights.pretrained import BUNDLED_WEIGHTS, resolve_weights
from keras_velo.weights.theta_by_name import (
    FINGERPRINT_KEY,
    fingerprint,
    shipped_fingerprints,
    shipped_name,
)


class SavedWeights:
    """The `weights=` a restored VeLO is built with (`VeLO.from_config`).

    theta comes back with the saved optimizer variables; `spec`, the
    original `weights` argument, is only loaded if that needs no download,
    and an error is raised at the first update if nothing restored theta.
    """

    def __init__(self, spec):
        self.spec = spec


def theta_fingerprint(theta_variables):
    """SHA-256 fingerprint of theta as held in `{path: variable}`."""
    return fingerprint({p: ops.convert_to_numpy(v.value) for p, v in theta_variables.items()})


def travels_by_name(weights_spec):
    """Whether a VeLO built with `weights=weights_spec` may save theta as a fingerprint:
    it names a theta the package ships (whether theta still is one is checked at saving)."""
    return isinstance(weights_spec, str) and weights_spec in BUNDLED_WEIGHTS


def save_variables(store, variables, theta_variables, by_name, save_all):
    """Writes an optimizer's `variables` to `store`, theta by name if `by_name` and it is shipped.

    `by_name`: the optimizer was built with shipped weights
    (`travels_by_name`); theta is saved as its fingerprint if it is still,
    unmodified, a theta the package ships (any of them: a model restored
    from an older save may hold the bootstrap while its spec says
    "bundled"), else by value. `theta_variables` is None before the
    optimizer is built. `save_all(store)` is Keras' own (every variable by
    value).
    """
    value = theta_fingerprint(theta_variables) if by_name and theta_variables else None
    if value is None or shipped_name(value) is None:
        return save_all(store)
    theta_ids = {id(v) for v in theta_variables.values()}
    for i, variable in enumerate(variables):
        if id(variable) not in theta_ids:
            store[str(i)] = variable.numpy()
    store[FINGERPRINT_KEY] = value


def saved_shipped_name(store):
    """The name of the shipped theta a store saved by fingerprint holds (None if saved by value).

    Raises `CheckpointError` if no theta shipped with this keras-velo has the fingerprint.
    """
    if FINGERPRINT_KEY not in store.keys():
        return None
    saved = bytes(np.asarray(store[FINGERPRINT_KEY], np.uint8))
    name = shipped_name(saved)
    if name is None:
        shipped = ", ".join(f"{n} {f.hex()[:16]}..." for f, n in shipped_fingerprints().items())
        raise CheckpointError(
            "This VeLO optimizer was saved with weights shipped in keras-velo, by their "
            f"fingerprint (SHA-256 {saved.hex()[:16]}...), and none of the weights "
            f"installed here has it ({shipped}): it was saved with another version of "
            "keras-velo. Install that version to resume exactly, or load the model with "
            "`compile=False` and compile it with a new VeLO."
        )
    return name


def load_variables(store, variables, theta_variables, load_all, variables_before_build):
    """Reads an optimizer's `variables` from `store`, as `save_variables` wrote them.

    `theta_variables` is None before the optimizer is built; `load_all(store)`
    is Keras' own; `variables_before_build` is how many variables the
    optimizer has before `build` (its counters). Returns whether theta came
    back from the store (by value, or by name: the shipped theta with the
    saved fingerprint, assigned to theta's variables if they hold another).
    Raises `CheckpointError` if theta was saved by name and no theta shipped
    with this keras-velo has its fingerprint.
    """
    saved_count = len(store.keys())
    if theta_variables is not None and saved_count == variables_before_build < len(variables):
        # Saved before VeLO was built (on TensorFlow it builds inside the
        # first traced step, so a model saved after an error in that step):
        # no VeLO state was saved, only the counters created with it.
        for i in range(saved_count):
            variables[i].assign(store[str(i)])
        return False
    if theta_variables is not None:
        expected = len(variables) if FINGERPRINT_KEY not in store.keys() else (
            len(variables) - len(theta_variables) + 1
        )
        if saved_count != expected:
            raise CheckpointError(
                f"This VeLO optimizer's saved state has {saved_count} entries where this "
                f"VeLO has {expected}: it was saved for other parameters, or with its "
                "parameters laid out differently (VeLO keeps its state per tensor when "
                "keras.distribution.ModelParallel shards them, packed otherwise). Load it "
                "under the distribution it was saved with, or load the model with "
                "`compile=False` and compile it with a new VeLO."
            )
    if FINGERPRINT_KEY not in store.keys():
        load_all(store)
        return True
    name = saved_shipped_name(store)
    saved = bytes(np.asarray(store[FINGERPRINT_KEY], np.uint8))
    if theta_variables is None:
        raise CheckpointError(
            "This VeLO optimizer is not built yet, so the state saved with it cannot be "
            "restored here; build it first (`model.optimizer.build(model.trainable_variables)`)."
        )
    if bytes(theta_fingerprint(theta_variables)) != saved:  # e.g. saved when "bundled" was another theta
        theta = flatten_theta(resolve_weights(name)[0])
        for path, variable in theta_variables.items():
            variable.assign(theta[path])
    theta_ids = {id(v) for v in theta_variables.values()}
    for i, variable in enumerate(variables):
        if id(variable) not in theta_ids:
            variable.assign(store[str(i)])
    return True
