"""What Keras' `LossScaleOptimizer` saves when it wraps VeLO: its own variables only.

Under the `mixed_float16` policy `model.compile` wraps VeLO in a
`LossScaleOptimizer`. Keras' saving writes that wrapper's variables (its
loss scale and step counter, then every variable of the optimizer inside)
and then saves the inner optimizer itself, so VeLO's variables went into
the file twice: once by VeLO, which writes a shipped theta as its
fingerprint (`saving`), and once by the wrapper, with theta's 9.28 MB by
value. `install()` (run when `VeLO` is defined) changes the wrapper's
saving only when it wraps VeLO: it writes its own variables and a marker,
and VeLO saves itself as before. Loading reads both forms (a file written
before this change or by a process without keras-velo loads as Keras
would load it). Any other inner optimizer saves and loads as Keras does.
"""

import keras
import numpy as np

INNER_SAVED_APART = "keras_velo_inner_optimizer_saved_apart"


def install(wraps_velo):
    """Installs the saving on `keras.optimizers.LossScaleOptimizer` (idempotent).

    `wraps_velo(optimizer)`: whether a loss-scale optimizer wraps VeLO.
    """
    wrapper = keras.optimizers.LossScaleOptimizer
    if getattr(wrapper, "_keras_velo_saving", False):
        return
    keras_save, keras_load = wrapper.save_own_variables, wrapper.load_own_variables

    def save_own_variables(self, store):
        if not wraps_velo(self):
            return keras_save(self, store)
        for i, variable in enumerate(self._variables):
            store[str(i)] = variable.numpy()
        store[INNER_SAVED_APART] = np.ones((), np.int8)

    def load_own_variables(self, store):
        if INNER_SAVED_APART not in store.keys():
            return keras_load(self, store)
        for i, variable in enumerate(self._variables):
            variable.assign(store[str(i)])

    save_own_variables.__doc__ = keras_save.__doc__
    load_own_variables.__doc__ = keras_load.__doc__
    wrapper.save_own_variables = save_own_variables
    wrapper.load_own_variables = load_own_variables
    wrapper._keras_velo_saving = True
    wrapper._keras_saving = (keras_save, keras_load)  # Keras' own, kept for tests
