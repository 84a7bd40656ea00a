"""The per-tensor update used for sharded parameters against the packed update.

`keras_velo.maths.tensorwise_update` computes VeLO tensor by tensor in each
tensor's own shape (so that XLA can keep each shard's work on its device);
`training.sharded_update.sharded_prefab_update` wraps it like
`prefab_update`. Both must follow the packed update (itself held to the
golden trajectories and the oracle) on trees of every rank, with weight
decay, tensors left out, gradient outliers and a NaN gradient.
"""

import functools

import keras
import numpy as np
import pytest
from keras import ops

from keras_velo.packed.prefab import prefab_update
from keras_velo.packed.state_view import tensor_states, unpacked_tensor_states
from keras_velo.packed.update import init_state
from keras_velo.maths.tensorwise_update import UnpackedState
from keras_velo.training.sharded_update import sharded_prefab_update
from keras_velo.training.update_function import compiled_when_eager
from keras_velo.weights.pretrained import resolve_weights

SHAPES = [(), (7,), (5, 3), (4, 4), (3, 1, 6), (2, 3, 4, 5), (40, 33), (1, 9)]


def _unpacked(state, shapes):
    views = tensor_states(state, shapes)
    return UnpackedState(state.iteration, state.num_steps, state.loss_buffer,
                         tuple(v.accumulators for v in views.tensors),
                         state.lstm_hidden, state.lstm_cell)


@pytest.mark.parametrize("case", ["plain", "decay-and-left-out"])
def test_the_per_tensor_update_follows_the_packed_one(case):
    theta = resolve_weights("bundled")[0]
    rng = np.random.default_rng(0)
    params = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    start = [p.copy() for p in params]
    packed_state = init_state(theta, SHAPES, num_steps=50)
    unpacked_state = _unpacked(packed_state, SHAPES)
    kwargs = {}
    if case == "decay-and-left-out":
        kwargs = {"weight_decays": [1e-2] * len(SHAPES),
                  "active": tuple(i != 2 for i in range(len(SHAPES)))}
    packed, unpacked = list(params), list(params)
    backend = keras.backend.backend()
    if backend in ("jax", "tensorflow"):  # one program each, not op by op
        packed_update = compiled_when_eager(functools.partial(prefab_update, **kwargs), backend)
        unpacked_update = compiled_when_eager(
            functools.partial(sharded_prefab_update, **kwargs), backend)
    else:
        packed_update = functools.partial(prefab_update, **kwargs)
        unpacked_update = functools.partial(sharded_prefab_update, **kwargs)
    for step in range(8):
        grads = [rng.normal(size=s).astype(np.float32) * (1e3 if step == 3 else 1.0) for s in SHAPES]
        if step == 5:
            grads[1][0] = np.nan  # skipped by both, nothing changes
        if "active" in kwargs:
            grads[2] = None
        loss = 1.0 / (step + 1)
        new_packed, packed_state, _, packed_diag = packed_update(
            theta, packed_state, packed, grads, np.float32(loss))
        new_unpacked, unpacked_state, _, unpacked_diag = unpacked_update(
            theta, unpacked_state, unpacked, grads, np.float32(loss))
        packed = [p if n is None else n for p, n in zip(packed, new_packed)]
        unpacked = [p if n is None else n for p, n in zip(unpacked, new_unpacked)]
        assert bool(ops.convert_to_numpy(unpacked_diag.skipped)) == (step == 5)
        np.testing.assert_allclose(ops.convert_to_numpy(unpacked_diag.lr_mult),
                                   ops.convert_to_numpy(packed_diag.lr_mult), rtol=1e-5, atol=1e-6)
    for i, (a, b, s) in enumerate(zip(packed, unpacked, start)):
        a, b = ops.convert_to_numpy(a), ops.convert_to_numpy(b)
        assert b.shape == s.shape and b.dtype == s.dtype
        moved = np.abs(a - s).max()
        if "active" in kwargs and i == 2:
            assert moved == 0.0 and np.array_equal(b, s)
            continue
        assert moved > 1e-3, i
        assert np.abs(a - b).max() <= 1e-4 * moved, (i, np.abs(a - b).max(), moved)
    expected = tensor_states(packed_state, SHAPES)
    actual = unpacked_tensor_states(unpacked_state)
    assert int(actual.iteration) == int(expected.iteration) == 7  # 8 calls, one skipped
    for e, a in zip(expected.tensors, actual.tensors):
        np.testing.assert_allclose(a.lstm_hidden, e.lstm_hidden, atol=1e-5)
        for field in e.accumulators._fields:
            x, y = getattr(e.accumulators, field), getattr(a.accumulators, field)
            assert (x is None) == (y is None), field
            if x is not None:
                assert x.shape == y.shape, field
                np.testing.assert_allclose(y, x, rtol=1e-4, atol=1e-6 * (np.abs(x).max() + 1e-30))
