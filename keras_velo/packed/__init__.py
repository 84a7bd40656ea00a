"""VeLO's update for every tensor of a model at once: the packed layout.

All tensors live in two float32 buffers (`packing`: factored and diagonal
regions of `[chunks, rows, lanes]`), so an update is one program whatever
the number of tensors. Per-tensor statistics are segment sums over them
(`segments`); `region_step` takes a buffer through the passes of an update
and `update` composes them into `velo_update` / `packed_update`, the whole
update as a pure function of (theta, state, params, grads, loss); `prefab`
adds the reference's wrapper (coupled weight decay, >150k-step gradient
accumulation, the skip guard); `state_view` shows the packed state per
tensor in the reference's shapes; `structured_cond` is the one conditional
the update needs on every backend; `torch_compile` runs the update as one
`torch.compile` program on PyTorch.

Imports: `keras_velo.maths`, numpy, Keras (and torch in `torch_compile`).
Nothing here knows about Keras optimizers or checkpoint files
(`tests/test_architecture.py` checks).
"""
