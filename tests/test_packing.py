"""The packed layout: every tensor goes in and comes out unchanged, state views round-trip,
and an update on some of the tensors equals an update of those tensors alone."""

import functools
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_velo import init_theta
from keras_velo.maths.accumulators import Accumulators, accumulator_shapes
from keras_velo.packed.packing import (
    DIAGONAL_CHUNK_ROWS,
    FACTORED_CHUNK_ROWS,
    LANES,
    pack,
    pack_pair,
    packed_layout,
    unpack,
)
from keras_velo.packed.prefab import prefab_update
from keras_velo.packed.state_view import pack_accumulators, tensor_states
from keras_velo.packed.update import init_state, to_tensors, velo_update

# Ranks 0-4, sizes below, at and above the lane and chunk sizes, ties between
# axes, size-1 axes, d0 first / last / in the middle (transposed), odd widths.
SHAPES = [
    (), (1,), (7,), (16,), (70,),
    (1, 10), (5, 3), (4, 4), (16, 16), (33, 17), (10, 256), (784, 64),
    (3, 3, 7, 1), (7, 7, 3, 64), (3, 40, 2), (12, 64, 20), (2, 1, 3, 3, 5),
]


def _random(shapes, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _np(x):
    return np.asarray(ops.convert_to_numpy(x))


def test_pack_then_unpack_returns_every_tensor():
    tensors = _random(SHAPES)
    layout = packed_layout(SHAPES)
    factored, diagonal = pack(layout, [ops.convert_to_tensor(t) for t in tensors])
    assert tuple(factored.shape[1:]) == (FACTORED_CHUNK_ROWS, LANES)
    assert tuple(diagonal.shape[1:]) == (DIAGONAL_CHUNK_ROWS, LANES)
    for original, back in zip(tensors, unpack(layout, factored, diagonal)):
        assert tuple(back.shape) == original.shape
        np.testing.assert_array_equal(_np(back), original)


def test_every_value_has_its_own_slot_and_padding_is_zero():
    """Each element lands in exactly one place of the buffers; the rest is zeros."""
    sizes = [math.prod(s) for s in SHAPES]
    offsets = np.cumsum([0] + sizes)
    # Value i + 1 for element i of the concatenated tensors: all distinct, none 0.
    tensors = [
        np.arange(offsets[i] + 1, offsets[i + 1] + 1, dtype=np.float32).reshape(s)
        for i, s in enumerate(SHAPES)
    ]
    layout = packed_layout(SHAPES)
    buffers = [_np(b) for b in pack(layout, [ops.convert_to_tensor(t) for t in tensors])]
    values = np.concatenate([b.ravel() for b in buffers])
    nonzero = np.sort(values[values != 0])
    np.testing.assert_array_equal(nonzero, np.arange(1, offsets[-1] + 1, dtype=np.float32))
    assert values.size == layout.num_elements


def test_packing_parameters_and_gradients_together_equals_packing_each():
    """`pack_pair` (one kernel per tensor for both on JAX and TensorFlow) gives `pack`'s buffers.

    With a low-precision tensor, and tensors left out (None) on one side or both.
    """
    params, grads = _random(SHAPES, seed=1), _random(SHAPES, seed=2)
    params[3] = params[3].astype("float16")
    params[7], grads[9], params[11], grads[11] = None, None, None, None
    layout = packed_layout(SHAPES)
    convert = lambda xs: [None if x is None else ops.convert_to_tensor(x) for x in xs]  # noqa: E731
    always_true = ops.convert_to_tensor(True)
    paired = pack_pair(layout, convert(params), convert(grads), always_true)
    for tensors, buffers in zip((params, grads), paired):
        expected = pack(layout, convert(tensors))
        for got, want in zip(buffers, expected):
            np.testing.assert_array_equal(_np(got), _np(want))


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_tensors_round_trip_through_float32(dtype):
    shapes = [(33, 17), (5,)]
    tensors = [ops.cast(ops.convert_to_tensor(t), dtype) for t in _random(shapes)]
    layout = packed_layout(shapes)
    buffers = pack(layout, tensors)
    assert all(keras.backend.standardize_dtype(b.dtype) == "float32" for b in buffers)
    back = unpack(layout, *buffers, dtypes=[dtype, dtype])
    for original, result in zip(tensors, back):
        assert keras.backend.standardize_dtype(result.dtype) == dtype
        np.testing.assert_array_equal(_np(ops.cast(result, "float32")),
                                      _np(ops.cast(original, "float32")))


def test_state_views_round_trip():
    """Per-tensor accumulators (reference shapes) -> packed -> per tensor: unchanged."""
    rng = np.random.default_rng(1)
    accumulators = []
    for shape in SHAPES:
        shapes = accumulator_shapes(shape)
        accumulators.append(
            Accumulators(*[None if s is None else rng.random(s).astype(np.float32) for s in shapes])
        )
    factored, diagonal = pack_accumulators(SHAPES, accumulators)
    state = init_state(init_theta(seed=0, lstm_hidden_size=8), SHAPES, num_steps=10)
    state = state._replace(factored=factored, diagonal=diagonal)
    views = tensor_states(state, SHAPES).tensors
    for shape, original, view in zip(SHAPES, accumulators, views):
        for field, a, b in zip(Accumulators._fields, original, view.accumulators):
            if a is None:
                assert b is None, (shape, field)
            else:
                np.testing.assert_array_equal(b, a, err_msg=f"{shape} {field}")


def _compiled(function, **static):
    """`function` with `static` keyword arguments, jitted on JAX (eager JAX is slow here)."""
    bound = functools.partial(function, **static)
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(bound)
    return bound


def test_an_update_of_some_tensors_equals_an_update_of_those_alone():
    """Tensors without a gradient keep params and state and stay out of the cross-tensor max."""
    theta = init_theta(seed=3, lstm_hidden_size=16)
    shapes = [(6, 4), (4,), (4, 3), (3,)]
    params, grads = _random(shapes, 1), _random(shapes, 2)
    active = (True, False, True, False)
    state = to_tensors(init_state(theta, shapes, num_steps=20))
    new_params, new_state, _, diagnostics = _compiled(prefab_update, active=active)(
        theta, state, params, [g if a else None for g, a in zip(grads, active)], 1.5,
    )
    alone_shapes = [s for s, a in zip(shapes, active) if a]
    alone_params, alone_state, alone_diagnostics = _compiled(velo_update)(
        theta, to_tensors(init_state(theta, alone_shapes, num_steps=20)),
        [p for p, a in zip(params, active) if a], [g for g, a in zip(grads, active) if a], 1.5,
    )
    alone = iter(alone_params)
    for p, a, new in zip(params, active, new_params):
        if a:
            np.testing.assert_allclose(_np(new), _np(next(alone)), rtol=1e-6, atol=1e-7)
        else:
            assert new is None
    views = tensor_states(new_state, shapes).tensors
    alone_views = iter(tensor_states(alone_state, alone_shapes).tensors)
    initial = tensor_states(to_tensors(init_state(theta, shapes, 20)), shapes).tensors
    for a, view, start in zip(active, views, initial):
        expected = next(alone_views) if a else start
        np.testing.assert_allclose(view.lstm_hidden, expected.lstm_hidden, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(view.accumulators.momentum, expected.accumulators.momentum,
                                   rtol=1e-6, atol=1e-9)
    assert not _np(diagnostics.skipped)
    lr_mult = _np(diagnostics.lr_mult)
    np.testing.assert_allclose(lr_mult[[0, 2]], _np(alone_diagnostics.lr_mult), rtol=1e-5)
    np.testing.assert_array_equal(lr_mult[[1, 3]], 0.0)
