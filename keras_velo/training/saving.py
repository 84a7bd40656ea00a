"""VeLO inside saved models and backups: its variables, theta by name, its config.

Keras saves an optimizer's variables with the model (`model.save`,
`save_weights`, `BackupAndRestore`). VeLO's include theta, 9.28 MB; when
theta is the unmodified bundled one it is written as its SHA-256
fingerprint instead (`keras_velo.weights.theta_by_name`) and checked
against the installed bundled weights on loading. `SavedWeights` is the
`weights=` a VeLO rebuilt from its config gets: theta comes back with the
variables.
"""

import numpy as np
from keras import ops

from keras_velo.maths.theta import CheckpointError
from keras_velo.weights.theta_by_name import (
    FINGERPRINT_KEY,
    bundled_fingerprint,
    fingerprint,
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


def save_variables(store, variables, theta_variables, by_name, save_all):
    """Writes an optimizer's `variables` to `store`, theta by name if `by_name`.

    `by_name`: save the bundled theta as its fingerprint (the optimizer
    knows it was built with `weights="bundled"`; it is checked here that
    theta is still the installed bundled one, else it is saved by value).
    `theta_variables` is None before the optimizer is built. `save_all(store)`
    is Keras' own (every variable by value).
    """
    value = theta_fingerprint(theta_variables) if by_name and theta_variables else None
    if value is None or bytes(value) != bundled_fingerprint():
        return save_all(store)
    theta_ids = {id(v) for v in theta_variables.values()}
    for i, variable in enumerate(variables):
        if id(variable) not in theta_ids:
            store[str(i)] = variable.numpy()
    store[FINGERPRINT_KEY] = value


def load_variables(store, variables, theta_variables, load_all, variables_before_build):
    """Reads an optimizer's `variables` from `store`, as `save_variables` wrote them.

    `theta_variables` is None before the optimizer is built; `load_all(store)`
    is Keras' own; `variables_before_build` is how many variables the
    optimizer has before `build` (its counters). Returns whether theta came
    back from the store (by value, or by name and checked). Raises
    `CheckpointError` if theta was saved by name and the installed bundled
    weights differ.
    """
    saved_count = len(store.keys())
    if theta_variables is not None and saved_count == variables_before_build < len(variables):
        # Saved before VeLO was built (on TensorFlow it builds inside the
        # first traced step, so a model saved after an error in that step):
        # no VeLO state was saved, only the counters created with it.
        for i in range(saved_count):
            variables[i].assign(store[str(i)])
        return False
    if FINGERPRINT_KEY not in store.keys():
        load_all(store)
        return True
    saved = bytes(np.asarray(store[FINGERPRINT_KEY], np.uint8))
    if theta_variables is None or bytes(theta_fingerprint(theta_variables)) != saved:
        raise CheckpointError(
            "This VeLO optimizer was saved with weights='bundled' by name (SHA-256 "
            f"{saved.hex()[:16]}...), but the bundled weights installed here differ "
            f"({bundled_fingerprint().hex()[:16]}...): it was saved with another "
            "version of keras-velo. Install that version to resume exactly, or "
            "load the model with `compile=False` and compile it with a new VeLO."
        )
    theta_ids = {id(v) for v in theta_variables.values()}
    for i, variable in enumerate(variables):
        if id(variable) not in theta_ids:
            variable.assign(store[str(i)])
    return True
