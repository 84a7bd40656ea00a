"""How VeLO lays out all of a model's tensors in two packed buffers.

Why: VeLO's update is the same computation for every tensor, but a Python
loop over tensors makes the traced program (and XLA's compile time, and
PyTorch's kernel launches) grow with the number of tensors. Here every
tensor is placed, once, in one of two buffers of fixed-size chunks, so each
stage of the update is a handful of array operations whatever the model:

* **factored region** (tensors of rank >= 2): a tensor of shape S is
  transposed so that its largest axis d0 comes last and its second-largest
  d1 just before it (spec §2; ties keep index order), giving the canonical
  shape `[*rest, X, D0]` with `X = S[d1]`, `D0 = S[d0]`. Each of its
  `R1 * X` *runs* (D0 consecutive values sharing every index but d0) is
  split into `k = ceil(D0 / LANES)` rows of `LANES` values, the last one
  zero-padded. A tensor's rows are padded to whole chunks of
  `FACTORED_CHUNK_ROWS` rows: the buffer is `[chunks, rows, LANES]`.
  Its factored second moments then live in two small tables: the row moment
  (mean over d0) has one value per run (`[runs + 1]`), the column moment
  (mean over d1) one value per `(r1, d0)`, stored as *lane groups* of
  `LANES` values, one per `(r1, piece)` (`[lane_groups + 1, LANES]`). The
  last slot of each table is a dummy that padding rows point at.
* **diagonal region** (rank 0 and 1): elements in order, each tensor padded
  to whole chunks of `[DIAGONAL_CHUNK_ROWS, LANES]`.

Every chunk belongs to exactly one tensor, so per-tensor quantities (VeLO's
mixed MLP weights, step multipliers) reach the elements as a broadcast of a
`[chunks]` vector, and per-tensor statistics are per-chunk reductions
followed by a small segment sum. Per-row indices into the two tables are
computed in the graph from a few `[chunks]` vectors, so no array of the
model's size is ever a constant of the program.

Padding elements hold zeros; where a statistic would see them (`g² + 1e-30`,
`rsqrt(rms + 1e-6)`, centred variances) they are masked with `valid`.

Example:

>>> layout = packed_layout([(784, 64), (64,), (64, 10), (10,)])
>>> layout.factored.num_chunks, layout.diagonal.num_chunks
(50, 2)
>>> factored, diagonal = pack(layout, tensors)           # [50, 64, 16], [2, 4, 16]
>>> tensors = unpack(layout, factored, diagonal, dtypes)  # shapes as given
"""

import dataclasses
import functools
import math

import keras
import numpy as np
from keras import ops

from keras_velo.accumulators import factored_dims

LANES = 16
FACTORED_CHUNK_ROWS = 64
DIAGONAL_CHUNK_ROWS = 4
# Row indices are computed with float32 arithmetic (see `_floor_divide`).
_MAX_ROWS_PER_TENSOR = 2**24


@dataclasses.dataclass(frozen=True)
class TensorPlacement:
    """Where one tensor lives in its region.

    Fields:
        index: position in the model's list of tensors.
        shape: the tensor's shape.
        permutation: axes order that gives the canonical shape (factored
            tensors; None when it is the identity or the tensor is diagonal).
        canonical_shape: `(*rest, X, D0)` (factored) or `(size,)` (diagonal).
        rows: rows of `LANES` values the tensor fills (before chunk padding).
        first_chunk, num_chunks: its chunks in the region.
        pieces: rows per run, `ceil(D0 / LANES)` (factored; 1 for diagonal).
        first_run, first_lane_group, first_run_group: offsets of its entries
            in the region's run, lane-group and run-group (`r1`) tables.
    """

    index: int
    shape: tuple
    permutation: tuple
    canonical_shape: tuple
    rows: int
    first_chunk: int
    num_chunks: int
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

    The `[num_chunks]` int32 vectors say, for each chunk, which tensor it
    holds and where it sits in it. The factored region's tables are
    described by numpy vectors with one entry per table row (the dummy
    last): per run its tensor, its run group `r1` and its length D0; per
    run group its width X; per lane group its tensor, X and valid lanes.
    """

    placements: tuple
    chunk_rows: int
    factored: bool
    chunk_tensor: np.ndarray
    chunk_first_row: np.ndarray
    chunk_tensor_rows: np.ndarray
    chunk_pieces: np.ndarray
    chunk_run_width: np.ndarray
    chunk_run_length: np.ndarray
    chunk_first_run: np.ndarray
    chunk_first_lane_group: np.ndarray
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
    permutation = tuple(rest + [d1, d0])
    canonical = tuple(shape[axis] for axis in permutation)
    pieces = -(-shape[d0] // LANES)
    rows = math.prod(canonical[:-1]) * pieces
    if rows >= _MAX_ROWS_PER_TENSOR:
        raise ValueError(
            f"A tensor of shape {shape} is too large for VeLO's packed layout "
            f"({rows} rows of {LANES}, limit {_MAX_ROWS_PER_TENSOR})."
        )
    first_run, first_lane_group, first_run_group = offsets
    return TensorPlacement(
        index=index,
        shape=tuple(shape),
        permutation=None if permutation == tuple(range(len(shape))) else permutation,
        canonical_shape=canonical,
        rows=rows,
        first_chunk=first_chunk,
        num_chunks=-(-rows // FACTORED_CHUNK_ROWS),
        pieces=pieces,
        first_run=first_run,
        first_lane_group=first_lane_group,
        first_run_group=first_run_group,
    )


def _diagonal_placement(index, shape, first_chunk):
    size = math.prod(shape)
    rows = -(-size // LANES)
    if rows >= _MAX_ROWS_PER_TENSOR:
        raise ValueError(f"A tensor of shape {shape} is too large for VeLO's packed layout.")
    return TensorPlacement(
        index=index,
        shape=tuple(shape),
        permutation=None,
        canonical_shape=(size,),
        rows=rows,
        first_chunk=first_chunk,
        num_chunks=max(1, -(-rows // DIAGONAL_CHUNK_ROWS)),
    )


def _region(placements, chunk_rows, factored):
    per_chunk = {name: [] for name in (
        "tensor", "first_row", "rows", "pieces", "width", "length", "run", "lane_group"
    )}
    for t in placements:
        for c in range(t.num_chunks):
            per_chunk["tensor"].append(t.index)
            per_chunk["first_row"].append(c * chunk_rows)
            per_chunk["rows"].append(t.rows)
            per_chunk["pieces"].append(t.pieces)
            per_chunk["width"].append(t.run_width if factored else 1)
            per_chunk["length"].append(t.run_length if factored else t.size)
            per_chunk["run"].append(t.first_run)
            per_chunk["lane_group"].append(t.first_lane_group)
    vectors = {k: np.asarray(v, np.int32) for k, v in per_chunk.items()}
    tables = {}
    if factored:
        def per_entry(count, value, dummy=1):
            return np.concatenate(
                [np.full(count(t), value(t), np.int32) for t in placements] + [[dummy]]
            ).astype(np.int32)

        tables = dict(
            run_length=per_entry(lambda t: t.num_runs, lambda t: t.run_length),
            run_group_width=per_entry(lambda t: t.num_run_groups, lambda t: t.run_width),
            lane_group_width=per_entry(lambda t: t.num_lane_groups, lambda t: t.run_width),
            num_runs=sum(t.num_runs for t in placements),
            num_lane_groups=sum(t.num_lane_groups for t in placements),
            num_run_groups=sum(t.num_run_groups for t in placements),
            run_tensor=per_entry(lambda t: t.num_runs, lambda t: t.index, dummy=0),
            # Runs are (r1, x) in row-major order: x varies fastest.
            run_group=np.concatenate(
                [
                    t.first_run_group + np.arange(t.num_runs, dtype=np.int32) // t.run_width
                    for t in placements
                ]
                + [[sum(t.num_run_groups for t in placements)]]
            ).astype(np.int32),
            lane_group_tensor=per_entry(lambda t: t.num_lane_groups, lambda t: t.index, dummy=0),
            lane_group_valid_lanes=np.concatenate(
                [
                    np.tile(_piece_valid_lanes(t.run_length, t.pieces), t.num_run_groups)
                    for t in placements
                ]
                + [[0]]
            ).astype(np.int32),
        )
    return Region(
        placements=tuple(placements),
        chunk_rows=chunk_rows,
        factored=factored,
        chunk_tensor=vectors["tensor"],
        chunk_first_row=vectors["first_row"],
        chunk_tensor_rows=vectors["rows"],
        chunk_pieces=vectors["pieces"],
        chunk_run_width=vectors["width"],
        chunk_run_length=vectors["length"],
        chunk_first_run=vectors["run"],
        chunk_first_lane_group=vectors["lane_group"],
        **tables,
    )


def _piece_valid_lanes(run_length, pieces):
    valid = np.full(pieces, LANES, np.int32)
    valid[-1] = run_length - (pieces - 1) * LANES
    return valid


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
        factored=_region(factored, FACTORED_CHUNK_ROWS, True),
        diagonal=_region(diagonal, DIAGONAL_CHUNK_ROWS, False),
    )


def packed_layout(shapes):
    """The `PackedLayout` of tensors with these shapes, in this order (cached)."""
    shapes = tuple(tuple(int(s) for s in shape) for shape in shapes)
    if not shapes:
        raise ValueError("VeLO needs at least one tensor to optimise.")
    return _cached_layout(shapes)


# --------------------------------------------------------------- pack / unpack


def _as_rows(tensor, placement, region):
    """One tensor as `[num_chunks * chunk_rows, LANES]` float32 rows, padding included."""
    x = ops.cast(tensor, "float32") if _dtype_name(tensor) != "float32" else tensor
    if region.factored:
        if placement.permutation is not None:
            x = ops.transpose(x, placement.permutation)
        width = placement.pieces * LANES
        if width != placement.run_length:
            x = ops.reshape(x, (-1, placement.run_length))
            x = ops.pad(x, [(0, 0), (0, width - placement.run_length)])
        x = ops.reshape(x, (placement.rows, LANES))
        padding = placement.num_chunks * region.chunk_rows - placement.rows
        pieces = [x]
        if padding:
            pieces.append(np.zeros((padding, LANES), np.float32))
        return pieces
    x = ops.reshape(x, (placement.size,))
    padding = placement.num_chunks * region.chunk_rows * LANES - placement.size
    pieces = [x]
    if padding:
        pieces.append(np.zeros((padding,), np.float32))
    return pieces


def _dtype_name(tensor):
    return keras.backend.standardize_dtype(tensor.dtype)


def pack_region(region, tensors):
    """The region's tensors (indexed by `placement.index` in `tensors`) as one buffer.

    Tensors may be None (a tensor not taking part in this update): its chunks
    are zeros.
    """
    pieces = []
    for t in region.placements:
        tensor = tensors[t.index]
        if tensor is None:
            rows = t.num_chunks * region.chunk_rows
            shape = (rows, LANES) if region.factored else (rows * LANES,)
            pieces.append(np.zeros(shape, np.float32))
        else:
            pieces.extend(_as_rows(tensor, t, region))
    flat = pieces[0] if len(pieces) == 1 else ops.concatenate(pieces, axis=0)
    return ops.reshape(flat, region.shape)


def pack(layout, tensors):
    """`(factored, diagonal)` buffers holding `tensors` (any float dtype) as float32.

    An empty region's buffer is None.
    """
    tensors = list(tensors)
    if len(tensors) != layout.num_tensors:
        raise ValueError(
            f"Expected {layout.num_tensors} tensors for this layout, got {len(tensors)}."
        )
    return tuple(
        None if region.empty else pack_region(region, tensors)
        for region in (layout.factored, layout.diagonal)
    )


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
            unit = region.chunk_rows
        else:
            flat = ops.reshape(buffer, (-1,))
            unit = region.chunk_rows * LANES
        # Split points around every tensor's values, skipping empty padding.
        splits, is_tensor, position = [], [], 0
        for t in region.placements:
            start, end = t.first_chunk * unit, t.first_chunk * unit + (
                t.rows if region.factored else t.size
            )
            if start > position:
                splits.append(start)
                is_tensor.append(False)
            is_tensor.append(True)
            splits.append(end)
            position = end
        total = region.num_chunks * unit
        if splits[-1] == total:
            splits.pop()
        else:
            is_tensor.append(False)
        parts = ops.split(flat, splits, axis=0) if splits else [flat]
        values = [part for part, keep in zip(parts, is_tensor) if keep]
        for t, part in zip(region.placements, values):
            out[t.index] = _from_rows(part, t, region, dtypes[t.index])
    return out


def _from_rows(part, placement, region, dtype):
    x = part
    if region.factored:
        width = placement.pieces * LANES
        if width != placement.run_length:
            x = ops.reshape(x, (-1, width))[:, : placement.run_length]
        canonical = placement.canonical_shape
        if placement.permutation is None:
            x = ops.reshape(x, placement.shape)
        else:
            x = ops.reshape(x, canonical)
            x = ops.transpose(x, tuple(np.argsort(placement.permutation)))
    else:
        x = ops.reshape(x, placement.shape)
    if dtype != "float32":
        x = ops.cast(x, dtype)
    return x


# ------------------------------------------------------- in-graph row indices


def _floor_divide(numerator, denominator):
    """Exact `numerator // denominator` for int32 arrays, `0 <= numerator < 2**24`.

    Integer division does not vectorise on CPUs; a float32 estimate with
    one integer correction is exact in this range and an order faster.
    """
    estimate = ops.floor(ops.cast(numerator, "float32") / ops.cast(denominator, "float32"))
    quotient = ops.cast(estimate, "int32")
    remainder = numerator - quotient * denominator
    quotient = quotient - ops.cast(remainder < 0, "int32")
    quotient = quotient + ops.cast(remainder >= denominator, "int32")
    return quotient


class RowIndex:
    """Per-row facts of a region, `[chunks, chunk_rows]` int32 tensors.

    Fields: `valid_lanes` (lanes holding real values, 0 on padding rows),
    and for the factored region `run` and `lane_group` (rows of the two
    moment tables; padding rows point at the dummy last slot).
    """

    def __init__(self, region):
        rows = np.arange(region.chunk_rows, dtype=np.int32)[None, :]
        row = ops.convert_to_tensor(region.chunk_first_row[:, None] + rows)
        in_tensor = row < ops.convert_to_tensor(region.chunk_tensor_rows[:, None])
        if not region.factored:
            remaining = ops.convert_to_tensor(region.chunk_run_length[:, None]) - row * LANES
            self.valid_lanes = ops.clip(remaining, 0, LANES)
            self.run = self.lane_group = None
            return
        pieces = ops.convert_to_tensor(region.chunk_pieces[:, None])
        run = _floor_divide(row, pieces)
        piece = row - run * pieces
        run_group = _floor_divide(run, ops.convert_to_tensor(region.chunk_run_width[:, None]))
        last_piece_lanes = ops.convert_to_tensor(
            region.chunk_run_length[:, None] - (region.chunk_pieces[:, None] - 1) * LANES
        )
        valid = ops.where(piece == pieces - 1, last_piece_lanes, LANES)
        self.valid_lanes = ops.where(in_tensor, valid, 0)
        self.run = ops.where(
            in_tensor, ops.convert_to_tensor(region.chunk_first_run[:, None]) + run,
            region.num_runs,
        )
        self.lane_group = ops.where(
            in_tensor,
            ops.convert_to_tensor(region.chunk_first_lane_group[:, None])
            + run_group * pieces + piece,
            region.num_lane_groups,
        )

    def valid(self):
        """`[chunks, chunk_rows, LANES]` float32: 1 on real values, 0 on padding."""
        lanes = ops.convert_to_tensor(np.arange(LANES, dtype=np.int32))
        return ops.cast(lanes[None, None, :] < self.valid_lanes[:, :, None], "float32")
