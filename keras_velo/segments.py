"""Moving values between the elements of a packed region, its tables and its tensors.

A region (`keras_velo.packing`) is `[chunks, rows, lanes]`; each chunk holds
one tensor, each row one piece of a run. The four directions VeLO needs:

* elements -> tensors: `tensor_sums(region, chunk_sums(values))`, sums of
  many element-wise values per tensor (`[num_tensors, len(values)]`).
* elements -> factored tables: `run_sums` (over each run, `[runs + 1]`) and
  `lane_group_sums` (over d1, `[lane_groups + 1, lanes]`).
* tensors -> elements: `per_chunk` broadcasts `[K, num_tensors]` values.
* tables -> elements: `per_row` / `per_lane` gather table values to rows /
  lanes.

`chunk_sums` is the one place with a backend special case: on JAX it is a
single variadic `lax.reduce` per group of values, which XLA compiles to one
pass over the elements (separate reductions re-read them once per value).
"""

import keras
import numpy as np
from keras import ops

# Values per variadic reduction: more outputs per pass stop paying off.
_VARIADIC_GROUP = 8


def chunk_sums(values):
    """`[chunks, len(values)]`: each `[chunks, rows, lanes]` value summed per chunk."""
    if keras.backend.backend() == "jax":
        import jax

        sums = []
        for start in range(0, len(values), _VARIADIC_GROUP):
            group = [ops.convert_to_tensor(v) for v in values[start : start + _VARIADIC_GROUP]]
            sums += jax.lax.reduce(
                group,
                [np.float32(0.0)] * len(group),
                lambda a, b: [x + y for x, y in zip(a, b)],
                (1, 2),
            )
        return ops.stack(sums, axis=1)
    return ops.stack([ops.sum(v, axis=(1, 2)) for v in values], axis=1)


def tensor_sums(region, sums_per_chunk, num_tensors):
    """`[num_tensors, K]`: per-chunk sums `[chunks, K]` added up per tensor.

    Rows of tensors outside the region are zero.
    """
    return ops.segment_sum(
        sums_per_chunk,
        ops.convert_to_tensor(region.chunk_tensor),
        num_segments=num_tensors,
    )


def per_chunk(region, values):
    """`[K, chunks, 1, 1]`: per-tensor values `[K, num_tensors]` for each chunk."""
    gathered = ops.take(values, ops.convert_to_tensor(region.chunk_tensor), axis=1)
    return gathered[:, :, None, None]


def run_sums(region, index, values):
    """`[runs + 1]`: `[chunks, rows, lanes]` values summed over each run (factored)."""
    per_row = ops.reshape(ops.sum(values, axis=2), (-1,))
    return ops.segment_sum(
        per_row, ops.reshape(index.run, (-1,)), num_segments=region.num_runs + 1
    )


def lane_group_sums(region, index, values):
    """`[lane_groups + 1, lanes]`: values summed over axis d1 of each tensor (factored)."""
    rows = ops.reshape(values, (-1, values.shape[-1]))
    return ops.segment_sum(
        rows, ops.reshape(index.lane_group, (-1,)), num_segments=region.num_lane_groups + 1
    )


def run_group_sums(region, values):
    """`[K, run_groups + 1]`: per-run table values `[K, runs + 1]` summed per run group."""
    return ops.transpose(
        ops.segment_sum(
            ops.transpose(values),
            ops.convert_to_tensor(region.run_group),
            num_segments=region.num_run_groups + 1,
        )
    )


def table_tensor_sums(tensor_of_entry, values, num_tensors):
    """`[num_tensors, K]`: table values `[K, entries, ...]` summed per tensor."""
    flat = ops.reshape(values, (values.shape[0], values.shape[1], -1))
    per_entry = ops.transpose(ops.sum(flat, axis=2))
    return ops.segment_sum(
        per_entry, ops.convert_to_tensor(tensor_of_entry), num_segments=num_tensors
    )


def per_row(values, index):
    """`[K, chunks, rows, 1]`: per-run values `[K, runs + 1]` at each row."""
    return ops.take(values, index.run, axis=1)[..., None]


def per_lane(values, index):
    """`[K, chunks, rows, lanes]`: per-lane-group values `[K, lane_groups + 1, lanes]`."""
    return ops.take(values, index.lane_group, axis=1)
