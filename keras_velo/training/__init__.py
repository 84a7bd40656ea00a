"""The Keras shell: VeLO as a `keras.optimizers.Optimizer` that `fit` can train with.

`optimizer.VeLO` holds theta and the packed state in Keras variables
(`state_variables`), checks its arguments (`arguments`), takes the training
loss and calls the packed update (`keras_velo.packed.prefab`). Around it:
how the loss reaches it in `fit` (`callbacks.VeLOCallback`, `integration.
attach`, `train_step`), the guards that keep a model safe from NaN steps
and mis-set horizons (`health`), what a failed JAX `fit` step must hand
back (`jax_fit_state`), the optimizer's saving and diagnostics, and
compiled programs kept on disk across runs (`compilation_cache`).

Imports: anything in keras_velo (`keras_velo.packed`, `keras_velo.maths`,
`keras_velo.weights`); nothing in keras_velo imports it except the package's
public namespace (`tests/test_architecture.py` checks).
"""
