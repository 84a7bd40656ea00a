"""How VeLO lays out all of a model's tensors in two packed buffers.

Why: VeLO's update is the same computation for every tensor, but a Python
loop over tensors makes the traced program (and XLA's compile time, and
PyTorch's kernel launches) grow with the number of tensors. Here every
tensor is placed, once, in one of two buffers of fixed-size chunks, so each
stage of the update is a handful of array operations whatever the model:

* **factored region** (tensors of rank >= 2). With d0 the largest axis and
  d1 the second largest (spec §2; ties keep index order), a tensor is seen
  as `[R1, X, D0]`: `X = S[d1]`, `D0 = S[d0]`, `R1` the product of its other
  axes. Its `R1 * X` *runs* (D0 values sharing every index but d0) hold the
  row moment (mean over d0); for each `r1`, the column moment (mean over
  d1) has D0 values. D0 is cut into `k = ceil(D0 / LANES)` *pieces* of
  `LANES` lanes (the last zero-padded), and each `(r1, piece)` is a *lane
  group*: a block of X rows (runs) by LANES lanes, stored contiguously with
  X padded to whole chunks of `FACTORED_CHUNK_ROWS` rows. So every chunk lies
  in one lane group, its rows are consecutive runs, and the tables reach the
  elements by broadcasting: one row-moment value per row, one column-moment
  value per lane. The tables are `[runs + 1]` and `[lane_groups + 1, LANES]`;
  their last slot is a dummy that padding rows point at.
* **diagonal region** (rank 0 and 1): elements in order, each tensor padded
  to whole chunks of `[DIAGONAL_CHUNK_ROWS, LANES]`.

Every chunk belongs to exactly one tensor, so per-tensor quantities (VeLO's
mixed MLP weights, step multipliers) reach the elements as a broadcast of a
`[chunks]` vector, and per-tensor statistics are per-chunk reductions
followed by a small segment sum. Nothing of the model's size is a constant
of the program, and no per-element gather or scatter is needed (XLA treats
those as expensive and would materialise everything that depends on them).

Padding elements hold zeros; where a statistic would see them (`g² + 1e-30`,
`rsqrt(rms + 1e-6)`, centred variances) they are masked with
`ChunkIndex.valid()`.

Example:

>>> layout = packed_layout([(784, 64), (64,), (64, 10), (10,)])
>>> layout.factored.num_chunks, layout.diagonal.num_chunks
(200, 2)
>>> factored, diagonal = pack(layout, tensors)           # [200, 16, 16], [2, 4, 16]
>>> tensors = unpack(layout, factored, diagonal, dtypes)  # shapes as given
"""

import dataclasses
import functools
import math

import keras
import numpy as np
from keras import ops

from keras_velo.maths.accumulators import factored_dims

LANES = 16
FACTORED_CHUNK_ROWS = 16
DIAGONAL_CHUNK_ROWS = 4


@dataclasses.dataclass(frozen=True)
class TensorPlacement:
    """Where one tensor lives in its region.

    Fields:
        index: position in the model's list of tensors.
        shape: the tensor's shape.
        canonical_shape: `(*rest, X, D0)` (factored: the other axes in
            order, then d1 and d0) or `(size,)` (diagonal).
        axes: the original axes in canonical order (factored).
        first_chunk, num_chunks: its chunks in the region.
        pieces: `k = ceil(D0 / LANES)` (factored).
        first_run, first_lane_group, first_run_group: offsets of its entries
            in the region's run, lane-group and run-group (`r1`) tables.
    """

    index: int
    shape: tuple
    canonical_shape: tuple
    first_chunk: int
    num_chunks: int
    axes: tuple = ()
    pieces: int = 1
    first_run: int = 0
    first_lane_group: int = 0
    first_run_group: int = 0

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def run_length(self):
        """D0, the length of a run (factored)."""
        return self.canonical_shape[-1]

    @property
    def run_width(self):
        """X, the size of the second-largest axis d1 (factored)."""
        return self.canonical_shape[-2]

    @property
    def padded_width(self):
        """X rounded up to whole chunks (factored)."""
        return -(-self.run_width // FACTORED_CHUNK_ROWS) * FACTORED_CHUNK_ROWS

    @property
    def num_run_groups(self):
        """R1, the product of the axes other than d0 and d1 (factored)."""
        return math.prod(self.canonical_shape[:-2])

    @property
    def num_runs(self):
        return self.num_run_groups * self.run_width

    @property
    def num_lane_groups(self):
        return self.num_run_groups * self.pieces


@dataclasses.dataclass(frozen=True)
class Region:
    """One packed buffer, `[num_chunks, chunk_rows, LANES]`, and its tensors.

    `[num_chunks]` int32 vectors say, for each chunk, which tensor it holds
    (`chunk_tensor`) and which of its values are real: diagonal chunks hold
    `chunk_valid_elements` values in row-major order; factored chunks
    `chunk_valid_rows` x `chunk_valid_lanes`, their rows being runs
    `chunk_first_run + r` of lane group `chunk_lane_group`.

    The factored tables are described by numpy vectors with one entry per
    table row (the dummy last): per run its tensor, its run group `r1` and
    its length D0; per run group its width X; per lane group its tensor, X
    and valid lanes.
    """

    placements: tuple
    chunk_rows: int
    factored: bool
    chunk_tensor: np.ndarray
    chunk_valid_elements: np.ndarray = None
    chunk_valid_rows: np.ndarray = None
    chunk_valid_lanes: np.ndarray = None
    chunk_first_run: np.ndarray = None
    chunk_lane_group: np.ndarray = None
    num_runs: int = 0
    num_lane_groups: int = 0
    num_run_groups: int = 0
    run_tensor: np.ndarray = None
    run_group: np.ndarray = None
    run_length: np.ndarray = None
    run_group_width: np.ndarray = None
    lane_group_tensor: np.ndarray = None
    lane_group_width: np.ndarray = None
    lane_group_valid_lanes: np.ndarray = None

    @property
    def num_chunks(self):
        return len(self.chunk_tensor)

    @property
    def shape(self):
        return (self.num_chunks, self.chunk_rows, LANES)

    @property
    def empty(self):
        return not self.placements


@dataclasses.dataclass(frozen=True)
class PackedLayout:
    """The placement of a model's tensors (in order) in the two regions."""

    shapes: tuple
    factored: Region
    diagonal: Region

    @property
    def num_tensors(self):
        return len(self.shapes)

    def regions(self):
        """The non-empty regions, factored first."""
        return [r for r in (self.factored, self.diagonal) if not r.empty]

    @property
    def num_elements(self):
        """Elements of both buffers, padding included."""
        return sum(math.prod(r.shape) for r in (self.factored, self.diagonal))


def _factored_placement(index, shape, first_chunk, offsets):
    d0, d1 = factored_dims(shape)
    rest = [axis for axis in range(len(shape)) if axis not in (d0, d1)]
    axes = tuple(rest + [d1, d0])
    canonical = tuple(shape[axis] for axis in axes)
    pieces = -(-shape[d0] // LANES)
    first_run, first_lane_group, first_run_group = offsets
    placement = TensorPlacement(
        index=index,
        shape=tuple(shape),
        canonical_shape=canonical,
        first_chunk=first_chunk,
        num_chunks=0,
        axes=axes,
        pieces=pieces,
        first_run=first_run,
        first_lane_group=first_lane_group,
        first_run_group=first_run_group,
    )
    chunks_per_group = placement.padded_width // FACTORED_CHUNK_ROWS
    return dataclasses.replace(placement, num_chunks=placement.num_lane_groups * chunks_per_group)


def _diagonal_placement(index, shape, first_chunk):
    size = math.prod(shape)
    chunk = DIAGONAL_CHUNK_ROWS * LANES
    return TensorPlacement(
        index=index,
        shape=tuple(shape),
        canonical_shape=(size,),
        first_chunk=first_chunk,
        num_chunks=max(1, -(-size // chunk)),
    )


def _factored_region(placements):
    rows = FACTORED_CHUNK_ROWS
    per_chunk = {k: [] for k in ("tensor", "rows", "lanes", "run", "group")}
    for t in placements:
        chunks_per_group = t.padded_width // rows
        last_lanes = t.run_length - (t.pieces - 1) * LANES
        for group in range(t.num_lane_groups):
            run_group, piece = divmod(group, t.pieces)
            for j in range(chunks_per_group):
                per_chunk["tensor"].append(t.index)
                per_chunk["rows"].append(min(rows, t.run_width - j * rows))
                per_chunk["lanes"].append(last_lanes if piece == t.pieces - 1 else LANES)
                per_chunk["run"].append(t.first_run + run_group * t.run_width + j * rows)
                per_chunk["group"].append(t.first_lane_group + group)
    vector = lambda name: np.asarray(per_chunk[name], np.int32)  # noqa: E731

    def per_entry(count, value, dummy):
        return np.concatenate(
            [np.full(count(t), value(t), np.int32) for t in placements] + [[dummy]]
        ).astype(np.int32)

    num_run_groups = sum(t.num_run_groups for t in placements)
    last_piece_lanes = [
        np.tile(
            np.asarray([LANES] * (t.pieces - 1) + [t.run_length - (t.pieces - 1) * LANES]),
            t.num_run_groups,
        )
        for t in placements
    ]
    return Region(
        placements=tuple(placements),
        chunk_rows=rows,
        factored=True,
        chunk_tensor=vector("tensor"),
        chunk_valid_rows=vector("rows"),
        chunk_valid_lanes=vector("lanes"),
        chunk_first_run=vector("run"),
        chunk_lane_group=vector("group"),
        num_runs=sum(t.num_runs for t in placements),
        num_lane_groups=sum(t.num_lane_groups for t in placements),
        num_run_groups=num_run_groups,
        run_tensor=per_entry(lambda t: t.num_runs, lambda t: t.index, 0),
        # Runs are (r1, x) in row-major order: x varies fastest.
        run_group=np.concatenate(
            [t.first_run_group + np.arange(t.num_runs) // t.run_width for t in placements]
            + [[num_run_groups]]
        ).astype(np.int32),
        run_length=per_entry(lambda t: t.num_runs, lambda t: t.run_length, 1),
        run_group_width=per_entry(lambda t: t.num_run_groups, lambda t: t.run_width, 1),
        lane_group_tensor=per_entry(lambda t: t.num_lane_groups, lambda t: t.index, 0),
        lane_group_width=per_entry(lambda t: t.num_lane_groups, lambda t: t.run_width, 1),
        lane_group_valid_lanes=np.concatenate(last_piece_lanes + [[0]]).astype(np.int32),
    )


def _diagonal_region(placements):
    chunk = DIAGONAL_CHUNK_ROWS * LANES
    tensors, valid = [], []
    for t in placements:
        for c in range(t.num_chunks):
            tensors.append(t.index)
            valid.append(min(chunk, t.size - c * chunk))
    return Region(
        placements=tuple(placements),
        chunk_rows=DIAGONAL_CHUNK_ROWS,
        factored=False,
        chunk_tensor=np.asarray(tensors, np.int32),
        chunk_valid_elements=np.asarray(valid, np.int32),
    )


@functools.lru_cache(maxsize=64)
def _cached_layout(shapes):
    factored, diagonal = [], []
    chunks = {"factored": 0, "diagonal": 0}
    offsets = [0, 0, 0]
    for index, shape in enumerate(shapes):
        if len(shape) >= 2:
            t = _factored_placement(index, shape, chunks["factored"], tuple(offsets))
            factored.append(t)
            chunks["factored"] += t.num_chunks
            offsets = [
                offsets[0] + t.num_runs,
                offsets[1] + t.num_lane_groups,
                offsets[2] + t.num_run_groups,
            ]
        else:
            t = _diagonal_placement(index, shape, chunks["diagonal"])
            diagonal.append(t)
            chunks["diagonal"] += t.num_chunks
    return PackedLayout(
        shapes=shapes,
        factored=_factored_region(factored),
        diagonal=_diagonal_region(diagonal),
    )


def packed_layout(shapes):
    """The `PackedLayout` of tensors with these shapes, in this order (cached)."""
    shapes = tuple(tuple(int(s) for s in shape) for shape in shapes)
    if not shapes:
        raise ValueError("VeLO needs at least one tensor to optimise.")
    return _cached_layout(shapes)


# --------------------------------------------------------------- pack / unpack


def _split_d0(placement):
    """`(split shape, transpose)`: the tensor with d0 cut into `(pieces, LANES)`,
    and the axes order `(*rest, piece, d1, lane)` of that split shape."""
    shape = list(placement.shape)
    d1, d0 = placement.axes[-2], placement.axes[-1]
    split = shape[:d0] + [placement.pieces, LANES] + shape[d0 + 1 :]
    moved = lambda axis: axis + 1 if axis > d0 else axis  # noqa: E731
    order = [moved(a) for a in placement.axes[:-2]] + [d0, moved(d1), d0 + 1]
    return tuple(split), tuple(order)


def _factored_rows(tensor, placement, stacked=0):
    """One factored tensor as `[num_chunks * FACTORED_CHUNK_ROWS, LANES]` rows.

    With `stacked = k > 0`, `tensor` is `k` tensors of the placement's shape
    stacked on a new first axis, and the rows come back `[k, rows, LANES]`.
    """
    lead = [stacked] if stacked else []
    d0 = placement.axes[-1] + len(lead)
    padded = placement.pieces * LANES
    x = tensor
    if padded != placement.run_length:
        widths = [(0, 0)] * (len(placement.shape) + len(lead))
        widths[d0] = (0, padded - placement.run_length)
        x = ops.pad(x, widths)
    split, order = _split_d0(placement)
    x = ops.reshape(x, tuple(lead) + split)
    order = tuple(range(len(lead))) + tuple(a + len(lead) for a in order)
    if order != tuple(range(len(order))):
        x = ops.transpose(x, order)
    blocks = (placement.num_lane_groups, placement.run_width, LANES)
    if placement.padded_width != placement.run_width:
        x = ops.reshape(x, tuple(lead) + blocks)
        widths = [(0, 0)] * len(lead) + [(0, 0), (0, placement.padded_width - placement.run_width),
                                         (0, 0)]
        x = ops.pad(x, widths)
    return ops.reshape(x, tuple(lead) + (-1, LANES))


def _factored_tensor(rows, placement):
    """Inverse of `_factored_rows`."""
    x = rows
    if placement.padded_width != placement.run_width:
        x = ops.reshape(x, (placement.num_lane_groups, placement.padded_width, LANES))
        x = x[:, : placement.run_width, :]
    split, order = _split_d0(placement)
    x = ops.reshape(x, tuple(split[a] for a in order))
    if order != tuple(range(len(order))):
        x = ops.transpose(x, tuple(np.argsort(order)))
    if placement.pieces * LANES != placement.run_length:
        d0 = placement.axes[-1]
        x = ops.reshape(x, split[:d0] + (placement.pieces * LANES,) + split[d0 + 2 :])
        index = [slice(None)] * len(placement.shape)
        index[d0] = slice(0, placement.run_length)
        x = x[tuple(index)]
    return ops.reshape(x, placement.shape)


def _dtype_name(tensor):
    return keras.backend.standardize_dtype(tensor.dtype)


def pack_region(region, tensors):
    """The region's tensors (indexed by `placement.index` in `tensors`) as one buffer.

    Tensors may be None (a tensor not taking part in this update): its chunks
    are zeros.
    """
    pieces = []
    for t in region.placements:
        rows = t.num_chunks * region.chunk_rows
        tensor = tensors[t.index]
        if tensor is None:
            pieces.append(np.zeros((rows, LANES) if region.factored else (rows * LANES,),
                                   np.float32))
            continue
        if _dtype_name(tensor) != "float32":
            tensor = ops.cast(tensor, "float32")
        if region.factored:
            pieces.append(_factored_rows(tensor, t))
            continue
        pieces.append(ops.reshape(tensor, (t.size,)))
        if rows * LANES > t.size:
            pieces.append(np.zeros((rows * LANES - t.size,), np.float32))
    flat = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=0)
    return ops.reshape(flat, region.shape)


def pack_factored_pair(region, params, grads):
    """`[2, *region.shape]`: the factored region's parameters (0) and gradients (1).

    Each tensor's parameter and gradient are stacked before its padding
    and transposes, so that XLA compiles one kernel per tensor for both
    (on CPU ~10 ms of compile time each) instead of two.
    """
    pieces = []
    for t in region.placements:
        pair = [params[t.index], grads[t.index]]
        if all(x is None for x in pair):
            pieces.append(np.zeros((2, t.num_chunks * region.chunk_rows, LANES), np.float32))
            continue
        pair = [np.zeros(t.shape, np.float32) if x is None
                else x if _dtype_name(x) == "float32" else ops.cast(x, "float32") for x in pair]
        pieces.append(_factored_rows(ops.stack(pair), t, stacked=2))
    both = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=1)
    return ops.reshape(both, (2,) + region.shape)


def pack(layout, tensors, always_true=None, fallbacks=(None, None)):
    """`(factored, diagonal)` buffers holding `tensors` (any float dtype) as float32.

    An empty region's buffer is None. With `always_true` (see
    `materialize`), each buffer is computed once, so later passes read it
    instead of redoing the packing's transposes; `fallbacks`, float32
    arrays of the buffers' shapes (e.g. a state buffer), are what the
    conditional's branch that is never taken returns.
    """
    tensors = _one_per_tensor(layout, tensors)
    if always_true is not None:
        always_true = _used_outside_the_conditional(always_true, tensors, layout.shapes)
    buffers = []
    for region, fallback in zip((layout.factored, layout.diagonal), fallbacks):
        if region.empty:
            buffers.append(None)
        elif always_true is None:
            buffers.append(pack_region(region, tensors))
        else:
            buffers.append(materialize(
                lambda region=region: pack_region(region, tensors), region.shape, always_true,
                fallback,
            ))
    return tuple(buffers)


def pack_pair(layout, params, grads, always_true, fallbacks=(None, None)):
    """`(pack(layout, params), pack(layout, grads))`, each buffer computed once (`materialize`).

    On JAX and TensorFlow the factored region's two buffers are one
    (`pack_factored_pair`): one conditional, and one kernel per tensor for
    its parameter and gradient (its branch never taken returns zeros: no
    buffer of its shape exists yet). `fallbacks` as in `pack`, for the
    parameters' buffers; the gradients' branches never taken return the
    packed parameters.
    """
    params, grads = _one_per_tensor(layout, params), _one_per_tensor(layout, grads)
    pair = keras.backend.backend() in ("jax", "tensorflow") and not layout.factored.empty
    if not pair:
        packed_params = pack(layout, params, always_true, fallbacks)
        return packed_params, pack(layout, grads, always_true, packed_params)
    always_true = _used_outside_the_conditional(always_true, params + grads, layout.shapes * 2)
    region = layout.factored
    both = materialize(lambda: pack_factored_pair(region, params, grads), (2,) + region.shape,
                       always_true)
    diagonal = (None, None)
    if not layout.diagonal.empty:
        diagonal_params = materialize(lambda: pack_region(layout.diagonal, params),
                                      layout.diagonal.shape, always_true, fallbacks[1])
        diagonal = (diagonal_params, materialize(lambda: pack_region(layout.diagonal, grads),
                                                 layout.diagonal.shape, always_true,
                                                 diagonal_params))
    return (both[0], diagonal[0]), (both[1], diagonal[1])


def _one_per_tensor(layout, tensors):
    """`tensors` as a list, checked to hold one entry per tensor of the layout."""
    tensors = list(tensors)
    if len(tensors) != layout.num_tensors:
        raise ValueError(
            f"Expected {layout.num_tensors} tensors for this layout, got {len(tensors)}."
        )
    return tensors


def _used_outside_the_conditional(always_true, tensors, shapes):
    """`always_true`, made to read one element of every tensor (TensorFlow only).

    When Keras' `fit` calls its XLA-compiled train step from an outer
    `tf.function`, Grappler's control-flow sinking moves every op whose only
    consumer lies in one branch of a conditional into that branch: the
    gradients' convolutions would move into `materialize`'s branch, where
    XLA on CPU emits them as naive loops (MobileNetV2: 8.5 s a step instead
    of 1 s). One element of each tensor read by the predicate keeps them
    where they are, at no cost worth measuring. Sizes come from the layout's
    `shapes`: inside a traced step a gradient's static shape may be unknown
    (an embedding's, densified from sparse slices).
    """
    if keras.backend.backend() != "tensorflow" or not tensors:
        return always_true
    firsts = [
        ops.cast(ops.reshape(tensor, (-1,))[0], "float32")
        for tensor, shape in zip(tensors, shapes)
        if tensor is not None and math.prod(shape) > 0
    ]
    if not firsts:
        return always_true
    firsts = ops.stack(firsts)
    never = ops.any(ops.isnan(firsts) & ~ops.isnan(firsts))  # holds for no value
    return ops.logical_or(always_true, never)


def unpack(layout, factored, diagonal, dtypes=None):
    """The list of tensors (shapes of the layout, `dtypes` or float32) held in the buffers.

    A None buffer gives None for the tensors of its region.
    """
    dtypes = dtypes or ["float32"] * layout.num_tensors
    out = [None] * layout.num_tensors
    for region, buffer in ((layout.factored, factored), (layout.diagonal, diagonal)):
        if region.empty or buffer is None:
            continue
        if region.factored:
            flat = ops.reshape(buffer, (region.num_chunks * region.chunk_rows, LANES))
            sizes = [t.num_chunks * region.chunk_rows for t in region.placements]
        else:
            flat = ops.reshape(buffer, (-1,))
            sizes = [t.num_chunks * region.chunk_rows * LANES for t in region.placements]
        ends = [int(e) for e in np.cumsum(sizes)]
        # Static slices (Keras' `split` on PyTorch reads its boundaries back
        # from a tensor, which a traced graph cannot do).
        parts = [flat[end - size:end] for size, end in zip(sizes, ends)]
        for t, part in zip(region.placements, parts):
            if region.factored:
                x = _factored_tensor(part, t)
            else:
                x = ops.reshape(part[: t.size] if t.size < part.shape[0] else part, t.shape)
            out[t.index] = x if dtypes[t.index] == "float32" else ops.cast(x, dtypes[t.index])
    return out


# ----------------------------------------------------------- chunk facts


class ChunkIndex:
    """Which values of a region are real, and where its rows sit in the tables.

    Fields (tensors): `run`, `[chunks, rows]` int32, each row's run (its
    row-moment entry; padding rows point at the dummy slot), and
    `lane_group`, `[chunks]` int32, each chunk's lane group (factored only).
    """

    def __init__(self, region):
        self._region = region
        self.run = self.lane_group = None
        if region.factored:
            rows = ops.convert_to_tensor(np.arange(region.chunk_rows, dtype=np.int32))[None, :]
            self.run = ops.where(
                rows < ops.convert_to_tensor(region.chunk_valid_rows)[:, None],
                ops.convert_to_tensor(region.chunk_first_run)[:, None] + rows,
                region.num_runs,
            )
            self.lane_group = ops.convert_to_tensor(region.chunk_lane_group)

    def valid(self):
        """`[chunks, rows, LANES]` float32: 1 on real values, 0 on padding."""
        region = self._region
        rows = ops.convert_to_tensor(np.arange(region.chunk_rows, dtype=np.int32))[None, :, None]
        lanes = ops.convert_to_tensor(np.arange(LANES, dtype=np.int32))[None, None, :]
        if region.factored:
            valid = (rows < ops.convert_to_tensor(region.chunk_valid_rows)[:, None, None]) & (
                lanes < ops.convert_to_tensor(region.chunk_valid_lanes)[:, None, None]
            )
        else:
            limit = ops.convert_to_tensor(region.chunk_valid_elements)[:, None, None]
            valid = rows * LANES + lanes < limit
        return ops.cast(valid, "float32")


def materialize(compute, shape, always_true, fallback=None):
    """`compute()` (a float32 array of `shape`), computed once into a buffer of its own.

    XLA on CPU fuses an element-wise computation into *every* consumer that
    can take it: VeLO's step feeds its sums of squares and the slices that
    unpack each tensor, so the whole per-parameter MLP would be compiled
    once per tensor and run several times; a packed buffer would be
    re-transposed in every pass. A consumer XLA cannot fuse into, a
    conditional, stops that: `compute` runs in its taken branch and writes
    straight into its result. `always_true` is a traced boolean that holds
    (e.g. `iteration >= 0`); XLA cannot see that it does, so it keeps the
    conditional. (`jax.lax.optimization_barrier` is removed before fusion
    on CPU.) Other backends just call `compute`.

    The branch never taken returns `fallback` (any float32 array of
    `shape`: XLA compiles nothing for it) or, without one, zeros (a kernel
    of its own: ~10 ms of compile time for code that never runs).
    """
    if keras.backend.backend() not in ("jax", "tensorflow"):
        return compute()
    if fallback is not None:
        return ops.cond(always_true, compute, lambda: fallback)
    return ops.cond(always_true, compute, lambda: ops.zeros(shape, "float32"))
