"""Moving values between the elements of a packed region, its tables and its tensors.

A region (`keras_velo.packed.packing`) is `[chunks, rows, lanes]`; each chunk holds
one tensor, each row one piece of a run. The four directions VeLO needs:

* elements -> tensors: `tensor_sums(region, chunk_sums(values))`, sums of
  many element-wise values per tensor (`[num_tensors, len(values)]`).
* elements -> factored tables: a reduction within chunks (over lanes or
  rows, `reduce_sums`), then `rows_to_runs` (`[runs + 1]`) or
  `chunks_to_lane_groups` (`[lane_groups + 1, lanes]`).
* tensors -> elements: `per_chunk` takes `[K, num_tensors]` values for each
  chunk, which broadcast over its elements.
* tables -> elements: `per_row` / `per_lane` take table values for each row
  / chunk, which then broadcast over lanes / rows.

The three return lists of K arrays, gathered with K as the minor axis.

`reduce_sums` and `segment_sum` have backend special cases: on JAX the
first is a single variadic `lax.reduce` per group of values, which XLA
compiles to one pass over the elements (separate reductions re-read them
once per value), and the second, with static ids, a product by a one-hot
matrix (one compiled kernel instead of a scatter's two); on PyTorch
`segment_sum` is an `index_add`.
"""

import keras
import numpy as np
from keras import ops

# Values per variadic reduction: more outputs per pass stop paying off.
_VARIADIC_GROUP = 8
# Largest one-hot matrix (segments x rows) `segment_sum` multiplies by, 256 KB.
ONE_HOT_LIMIT = 1 << 16


def reduce_sums(values, axes, groups=None):
    """Each value (same shape) summed over `axes`; a list of arrays.

    On JAX the values go through variadic `lax.reduce`s, one pass over the
    elements per group of values (XLA would otherwise read the inputs once
    per value, or hand single sums to a library that cannot fuse the
    computation of its input). `groups` (lists of indices into `values`)
    sets the passes; by default consecutive runs of `_VARIADIC_GROUP`. Put
    values sharing an expensive intermediate (a division, an rsqrt) in one
    group, or XLA stores that intermediate.
    """
    if keras.backend.backend() != "jax":
        return [ops.sum(v, axis=tuple(axes)) for v in values]

    if groups is None:
        groups = [list(range(i, min(i + _VARIADIC_GROUP, len(values))))
                  for i in range(0, len(values), _VARIADIC_GROUP)]
    sums = [None] * len(values)
    for group in groups:
        operands = tuple(ops.convert_to_tensor(values[i]) for i in group)
        for i, result in zip(group, _variadic_sums(operands, tuple(axes))):
            sums[i] = result
    return sums


def _variadic_sums(operands, axes):
    """One variadic `lax.reduce` summing each operand over `axes` (JAX).

    Differentiable in reverse mode (meta-training backpropagates through
    VeLO's update): JAX has no transpose rule for a variadic reduce, and a
    sum's is a broadcast of the cotangent back over `axes`.
    """
    import jax

    @jax.custom_vjp
    def sums(*operands):
        padded = list(operands)
        if len(padded) == 1:
            padded.append(ops.zeros_like(padded[0]))  # keep it variadic (see above)
        results = jax.lax.reduce(
            padded,
            [np.float32(0.0)] * len(padded),
            lambda a, b: [x + y for x, y in zip(a, b)],
            axes,
        )
        return tuple(results[: len(operands)])

    def forward(*operands):
        return sums(*operands), tuple(x.shape for x in operands)

    def backward(shapes, cotangents):
        return tuple(
            jax.numpy.broadcast_to(jax.numpy.expand_dims(c, axes), shape)
            for c, shape in zip(cotangents, shapes)
        )

    sums.defvjp(forward, backward)
    return sums(*operands)


def segment_sum(data, segment_ids, num_segments):
    """`[num_segments, ...]`: rows of `data` added up by `segment_ids` (a static count).

    Ids known when the program is built (a numpy array) make, on JAX and
    when small, one matrix product with a constant one-hot matrix
    (`_one_hot_sum`); otherwise a scatter-add.

    On PyTorch an `index_add` rather than Keras' `segment_sum`, whose
    `repeat_interleave` has a data-dependent output shape that
    `keras_velo.packed.torch_compile` cannot trace into a graph.
    """
    if _one_hot_on_jax(segment_ids, num_segments):
        return _one_hot_sum(data, segment_ids, num_segments)
    if keras.backend.backend() != "torch":
        return ops.segment_sum(data, segment_ids, num_segments=num_segments)
    if num_segments == 1:
        # Every id is 0. Also sidesteps an inductor codegen assertion on a
        # scatter into a single row (torch 2.13, a one-tensor model).
        return ops.sum(data, axis=0, keepdims=True)
    import torch

    data = ops.convert_to_tensor(data)
    ids = ops.convert_to_tensor(segment_ids).long()
    out = torch.zeros((num_segments,) + tuple(data.shape[1:]), dtype=data.dtype,
                      device=data.device)
    return out.index_add(0, ids, data)


def _one_hot_on_jax(segment_ids, num_segments):
    """Whether `segment_sum` takes the one-hot product (JAX, static ids, a small matrix)."""
    return (keras.backend.backend() == "jax" and isinstance(segment_ids, np.ndarray)
            and num_segments * segment_ids.size <= ONE_HOT_LIMIT)


def _one_hot_sum(data, segment_ids, num_segments):
    """`segment_sum` as `one_hot [segments, rows] @ data` (JAX).

    XLA on CPU compiles a scatter-add into two kernels of its own (the
    zeroed output, the scatter) and each compiled kernel costs ~10 ms of
    compile time; a product is one library call. Exact products by 1 and 0
    in float32 (`HIGHEST`, so no TF32 on a GPU); the sums of a segment may
    be added in another order than the scatter's. As with the reference's
    max over tensors (`hypernetwork.mix_tensor_features`), a non-finite
    value reaches every segment (0 x inf is NaN).
    """
    import jax

    ids = segment_ids.reshape(-1)
    one_hot = (np.arange(num_segments)[:, None] == ids[None, :]).astype(np.float32)
    flat = ops.reshape(data, (ids.size, -1))
    summed = jax.lax.dot(jax.numpy.asarray(one_hot), flat, precision=jax.lax.Precision.HIGHEST)
    return ops.reshape(summed, (num_segments,) + tuple(data.shape[1:]))


def chunk_sums(values, groups=None):
    """`[chunks, len(values)]`: each `[chunks, rows, lanes]` value summed per chunk."""
    return ops.stack(reduce_sums(values, (1, 2), groups), axis=1)


def tensor_sums(region, sums_per_chunk, num_tensors):
    """`[num_tensors, K]`: per-chunk sums `[chunks, K]` added up per tensor.

    Rows of tensors outside the region are zero.
    """
    return segment_sum(
        sums_per_chunk,
        np.asarray(region.chunk_tensor),
        num_segments=num_tensors,
    )


def per_chunk(region, values):
    """`values[k]` (`[K, num_tensors]`) at each chunk: a list of K `[chunks, 1, 1]` arrays.

    Gathered as one `[chunks, K]` array (chunks major: no transpose of the
    gathered values) that the element-wise passes read with a broadcast.
    """
    gathered = ops.take(ops.transpose(values), ops.convert_to_tensor(region.chunk_tensor), axis=0)
    return [gathered[:, k][:, None, None] for k in range(values.shape[0])]


def rows_to_runs(region, index, row_sums):
    """`[runs + 1]`: per-row sums `[chunks, rows]` added up per run (factored)."""
    return segment_sum(
        ops.reshape(row_sums, (-1,)),
        ops.reshape(index.run, (-1,)),
        num_segments=region.num_runs + 1,
    )


def chunks_to_lane_groups(region, lane_sums):
    """`[lane_groups + 1, lanes]`: per-chunk lane sums `[chunks, lanes]` added up per lane group."""
    return segment_sum(lane_sums, np.asarray(region.chunk_lane_group),
                       num_segments=region.num_lane_groups + 1)


def run_group_sums(region, values):
    """`[K, run_groups + 1]`: per-run table values `[K, runs + 1]` summed per run group."""
    return ops.transpose(
        segment_sum(
            ops.transpose(values),
            np.asarray(region.run_group),
            num_segments=region.num_run_groups + 1,
        )
    )


def table_tensor_sums(tensor_of_entry, values, num_tensors):
    """`[num_tensors, K]`: table values `[K, entries, ...]` summed per tensor."""
    flat = ops.reshape(values, (values.shape[0], values.shape[1], -1))
    per_entry = ops.transpose(ops.sum(flat, axis=2))
    return segment_sum(
        per_entry, np.asarray(tensor_of_entry), num_segments=num_tensors
    )


def per_row(values, index):
    """`values[k]` (`[K, runs + 1]`) at each row: a list of K `[chunks, rows, 1]` arrays."""
    gathered = ops.take(ops.transpose(values), index.run, axis=0)  # [chunks, rows, K]
    return [gathered[:, :, k][:, :, None] for k in range(values.shape[0])]


def per_lane(values, index):
    """`values[k]` (`[K, lane_groups + 1, lanes]`) at each chunk: K `[chunks, 1, lanes]` arrays."""
    gathered = ops.take(ops.transpose(values, (1, 0, 2)), index.lane_group, axis=0)
    return [gathered[:, k, :][:, None, :] for k in range(values.shape[0])]
