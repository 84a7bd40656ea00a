"""VeLO's computation for one tensor, as the reference writes it.

What the learned optimizer computes, in pure functions of arrays on any
Keras backend, with nothing about how tensors are stored: the momentum and
second-moment accumulators (`accumulators`), the loss features
(`loss_features`), the per-tensor features and training-fraction features
(`tensor_features`), the LSTM hypernetwork that turns them into MLP weights
(`hypernetwork`), the per-parameter MLP and its step (`parameter_mlp`), and
the structure, initialisation and validation of theta, VeLO's learned
weights (`theta`). Spec: `shared/spec/velo_reference.md`.

Imports: numpy, Keras and this package only. The packed layout
(`keras_velo.packed`), the weights' files (`keras_velo.weights`) and the
Keras optimizer (`keras_velo.training`) build on it, never the reverse
(`tests/test_architecture.py` checks).
"""
