"""Reading and writing VeLO checkpoints in the official flax-msgpack format.

The official file (`pretrained_lopts/<name>/params`, spec §8) is the msgpack
encoding of `{"params": theta, "gen_id": str, "step": int}`. Every array is a
msgpack ExtType with code 1 (code 3 for numpy scalars) whose payload is the
msgpack array `[shape, dtype name, raw little-endian C-order bytes]`.
`lstm_init_state` is `{hidden, cell}`, or, in files written by older flax,
the namedtuple layout `{"name", "fields": {"0": "hidden", "1": "cell"},
"values": {"0": ..., "1": ...}}`.

A checkpoint may also be stored gzip-compressed (`params.gz`, as the
keras-velo bundled weights are): `read_checkpoint` recognises the gzip
signature (`1f 8b`) in any file, and a directory may hold `params.gz`
instead of `params`. `write_checkpoint(..., compress=True)` writes such a
file deterministically (no time stamp, no file name in the header).

Only numpy and msgpack are needed; flax and learned_optimization are not.

Example:

    >>> theta = read_checkpoint("velo_random_theta")          # dir holding `params`
    >>> path = write_checkpoint("/tmp/my_velo/", theta)        # writes params + config.gin
    >>> path.name
    'params'
    >>> write_checkpoint("/tmp/my_velo_gz/", theta, compress=True).name
    'params.gz'
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pathlib
import secrets
import struct
import zlib
from collections.abc import Mapping

import msgpack
import numpy as np

from keras_velo.maths.theta import (
    CheckpointError,
    ThetaError,
    flatten_theta,
    leaf_name,
    theta_shapes,
    unflatten_theta,
    validate_theta,
)

__all__ = ["CheckpointError", "ThetaError", "read_checkpoint", "write_checkpoint"]

PARAMS_FILENAME = "params"
COMPRESSED_PARAMS_FILENAME = "params.gz"
CONFIG_FILENAME = "config.gin"

_GZIP_MAGIC = b"\x1f\x8b"
# Largest decompressed checkpoint accepted (the official one is 9.3 MB); a
# guard against decompression bombs, far above any VeLO theta.
_MAX_DECOMPRESSED_BYTES = 1 << 30

_EXT_NDARRAY = 1  # flax's msgpack ExtType codes
_EXT_NPSCALAR = 3
_THETA_KEYS = frozenset({"ff_mod_stack", "lstm_init_state", "rnn_params"})
_CHECKPOINT_KEYS = ("params", "gen_id", "step")
_NAMEDTUPLE_KEYS = frozenset({"name", "fields", "values"})
_LSTM_STATE_FIELDS = ("hidden", "cell")  # haiku LSTMState field order


class _ExtPayload:
    """An ExtType seen while unpacking; decoded later, when its leaf path is known."""

    __slots__ = ("code", "data")

    def __init__(self, code: int, data: bytes):
        self.code, self.data = code, data


def _resolve_params_file(path) -> pathlib.Path:
    """`path` itself if it is a file; in a directory, `params`, else `params.gz`."""
    given = pathlib.Path(os.fspath(path))
    if given.is_dir():
        for name in (PARAMS_FILENAME, COMPRESSED_PARAMS_FILENAME):
            if (given / name).is_file():
                return given / name
        contents = sorted(p.name for p in given.iterdir())[:10]
        raise CheckpointError(
            f"Checkpoint directory '{given}' has no file named "
            f"'{PARAMS_FILENAME}' or '{COMPRESSED_PARAMS_FILENAME}' (it holds "
            f"{contents}). Pass a directory holding '{PARAMS_FILENAME}', or the "
            f"'{PARAMS_FILENAME}' file itself."
        )
    if not given.exists():
        raise CheckpointError(
            f"Checkpoint '{given}' does not exist. Pass a directory holding a "
            f"file named '{PARAMS_FILENAME}', or the '{PARAMS_FILENAME}' file itself."
        )
    return given


def _gunzip(data: bytes, file: pathlib.Path) -> bytes:
    """Decompress a gzip checkpoint, with a CheckpointError for corrupt data."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb") as stream:
            raw = stream.read(_MAX_DECOMPRESSED_BYTES + 1)
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        raise CheckpointError(
            f"Checkpoint '{file}' is gzip-compressed but the gzip data is corrupt "
            f"or truncated ({len(data)} bytes; gzip says: {type(error).__name__}: "
            f"{error}). Re-download or re-write the file."
        ) from error
    if len(raw) > _MAX_DECOMPRESSED_BYTES:
        raise CheckpointError(
            f"Checkpoint '{file}' decompresses to more than "
            f"{_MAX_DECOMPRESSED_BYTES} bytes; it is not a VeLO checkpoint."
        )
    return raw


def _gzip_bytes(data: bytes) -> bytes:
    """Deterministic gzip (RFC 1952) of `data`: level 9, mtime 0, no file name.

    Written by hand rather than with the `gzip` module so that the header
    does not depend on the Python version: `1f 8b`, method 8 (deflate), no
    flags, mtime 0, extra flags 2 (maximum compression), OS 255 (unknown);
    then raw deflate data, CRC-32 and the length modulo 2^32.
    """
    header = _GZIP_MAGIC + b"\x08\x00" + b"\x00\x00\x00\x00" + b"\x02\xff"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    body = compressor.compress(data) + compressor.flush()
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + body + trailer


def _decode_array(ext: _ExtPayload, where: str) -> np.ndarray:
    """ExtType payload `[shape, dtype name, bytes]` -> writable numpy array (own dtype)."""
    if ext.code not in (_EXT_NDARRAY, _EXT_NPSCALAR):
        raise CheckpointError(
            f"{where}: msgpack ExtType code {ext.code} is not supported (flax "
            f"writes arrays as code {_EXT_NDARRAY} and numpy scalars as code "
            f"{_EXT_NPSCALAR})"
        )
    try:
        shape, dtype_name, buf = msgpack.unpackb(ext.data, raw=True)
        shape = tuple(shape)
        dtype = np.dtype(dtype_name.decode("ascii")).newbyteorder("<")
    except Exception as error:  # malformed payload: anything unpackb or np.dtype raises
        raise CheckpointError(
            f"{where}: array payload is not [shape, dtype, bytes] ({error})"
        ) from error
    if not all(isinstance(n, int) and n >= 0 for n in shape) or not isinstance(buf, bytes):
        raise CheckpointError(f"{where}: array payload has a bad shape {list(shape)!r}")
    if dtype.kind not in "biufc":
        raise CheckpointError(f"{where}: array payload has a non-numeric dtype {dtype.name!r}")
    needed = math.prod(shape) * dtype.itemsize
    if len(buf) != needed:
        raise CheckpointError(
            f"{where}: array payload holds {len(buf)} bytes, but shape "
            f"{list(shape)} of {dtype.name} needs {needed} bytes"
        )
    return np.frombuffer(buf, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _decode_tree(node, path: tuple, source: str):
    """Unpacked msgpack tree -> nested dict of numpy arrays, with clear errors."""
    where = f"{source}: leaf {leaf_name(path)!r}"
    if isinstance(node, _ExtPayload):
        return _decode_array(node, where)
    if not isinstance(node, Mapping):
        raise ThetaError(
            f"{where} is a {type(node).__name__} ({node!r:.60}), expected an array "
            "or a map of arrays"
        )
    if set(node) == _NAMEDTUPLE_KEYS:  # old flax namedtuple layout
        fields, values = node["fields"], node["values"]
        if not (isinstance(fields, Mapping) and isinstance(values, Mapping)):
            raise ThetaError(f"{where}: malformed namedtuple entry (fields/values not maps)")
        if set(fields) != set(values):
            raise ThetaError(
                f"{where}: namedtuple fields {sorted(fields)} do not match values "
                f"{sorted(values)}"
            )
        node = {str(fields[i]): values[i] for i in sorted(fields, key=str)}
    decoded = {}
    for key, value in node.items():
        if not isinstance(key, str):
            raise ThetaError(f"{where}: map key {key!r} is not a string")
        decoded[key] = _decode_tree(value, path + (key,), source)
    return decoded


def read_checkpoint(path) -> dict:
    """Read a VeLO theta from an official (flax msgpack) checkpoint.

    Args:
        path: a directory holding a file named `params` (or, failing that,
            `params.gz`), or the checkpoint file itself (any file name). A
            gzip-compressed file is recognised by its first two bytes and
            decompressed transparently.

    Returns:
        theta, a nested dict of writable float32 numpy arrays (spec §3), e.g.
        `theta["rnn_params"]["rnn/linear"]["w"]` of shape (1024, 2048).

    Raises:
        CheckpointError: missing file, truncated or corrupt file (msgpack or
            gzip), a bad array payload, a wrong top-level structure, or (as
            ThetaError, a subclass) missing, extra or misshapen leaves.
            Nothing half-loaded is ever returned.

    Example:
        >>> theta = read_checkpoint("shared/golden/velo_random_theta")
        >>> theta["lstm_init_state"]["hidden"].shape
        (1, 512)
    """
    file = _resolve_params_file(path)
    source = str(file)
    try:
        data = file.read_bytes()
    except OSError as error:
        raise CheckpointError(f"Could not read checkpoint '{file}': {error}") from error
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, file)
    try:
        tree = msgpack.unpackb(
            data, ext_hook=_ExtPayload, raw=False, strict_map_key=False
        )
    except Exception as error:  # msgpack raises several unrelated types
        raise CheckpointError(
            f"Checkpoint '{file}' is truncated or not a msgpack checkpoint "
            f"({len(data)} bytes; msgpack says: {type(error).__name__}: {error}). "
            "Re-download or re-write the file."
        ) from error
    if isinstance(tree, Mapping) and "params" in tree:
        theta_tree = tree["params"]
    elif isinstance(tree, Mapping) and _THETA_KEYS & set(tree):
        theta_tree = tree  # a bare theta map
    else:
        found = sorted(map(str, tree)) if isinstance(tree, Mapping) else type(tree).__name__
        raise CheckpointError(
            f"Checkpoint '{file}' has the wrong top-level structure: found {found}, "
            f"expected a map with keys {list(_CHECKPOINT_KEYS)} (a flax "
            f"ParameterCheckpoint) or a bare theta map with keys {sorted(_THETA_KEYS)}."
        )
    if not isinstance(theta_tree, Mapping):
        raise CheckpointError(
            f"Checkpoint '{file}': 'params' is a {type(theta_tree).__name__}, "
            "expected a map of theta arrays."
        )
    theta = _decode_tree(theta_tree, (), source)
    validate_theta(theta, source=source)
    return unflatten_theta(
        {path: leaf.astype(np.float32, copy=False) for path, leaf in flatten_theta(theta).items()}
    )


def _theta_sizes(theta: Mapping) -> tuple[int, int]:
    """(lstm_hidden_size, num_param_inits) of a validated theta."""
    hidden = np.shape(theta["lstm_init_state"]["hidden"])[1]
    inits = np.shape(theta["ff_mod_stack"]["~"]["b0"])[0]
    return int(hidden), int(inits)


def _pack_array(array: np.ndarray) -> msgpack.ExtType:
    """float32 array -> ExtType(1, [shape, "float32", little-endian C-order bytes])."""
    array = np.ascontiguousarray(array, dtype="<f4")
    payload = msgpack.packb(
        [list(array.shape), "float32", array.tobytes(order="C")], use_bin_type=True
    )
    return msgpack.ExtType(_EXT_NDARRAY, payload)


def _checkpoint_bytes(theta: Mapping, gen_id: str, step: int) -> bytes:
    """The msgpack file contents, keys in the order flax writes them.

    Order: sorted keys at each level, `lstm_init_state` as (hidden, cell), and
    the top level as (params, gen_id, step). Key order does not matter to
    readers, but with it the golden file is reproduced byte for byte.
    """
    hidden, inits = _theta_sizes(theta)
    flat = flatten_theta(theta)
    ordered = {path: _pack_array(flat[path]) for path in theta_shapes(hidden, inits)}
    state = {"params": unflatten_theta(ordered), "gen_id": gen_id, "step": step}
    return msgpack.packb(state, use_bin_type=True)


def _create_temp_beside(target: pathlib.Path) -> tuple[int, str]:
    """Open a new uniquely named file next to `target` (mode 0o666 minus umask, unlike mkstemp)."""
    tmp_name = str(target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    return os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp_name


def _atomic_write(target: pathlib.Path, data: bytes) -> None:
    """Write via a temporary file in the same directory and os.replace."""
    fd, tmp_name = _create_temp_beside(target)
    try:
        with os.fdopen(fd, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def _config_gin(lstm_hidden_size: int, num_param_inits: int) -> str:
    return (
        "run_train.lopt = @HyperV2()\n"
        f"HyperV2.lstm_hidden_size = {lstm_hidden_size}\n"
        f"HyperV2.param_inits = {num_param_inits}\n"
        "HyperV2.use_bugged_loss_features = False\n"
    )


def write_checkpoint(
    path, theta: Mapping, gen_id: str = "keras_velo", step: int = 0, compress: bool = False
) -> pathlib.Path:
    """Write theta in the official checkpoint format; return the `params` path.

    If `path` is an existing directory or ends with a path separator, writes
    `path/params` (`path/params.gz` if `compress`) and a 4-line
    `path/config.gin` (the bindings the reference `opt_from_checkpoint`
    needs), and removes a `params` / `params.gz` of the other kind left there
    by an earlier write, so the directory holds one checkpoint. Otherwise
    writes the file `path` itself. Writes are atomic (temporary file +
    `os.replace`). `read_checkpoint` gives back the same arrays bit for bit.

    Args:
        path: target directory or file.
        theta: a valid theta (checked with `validate_theta`); leaves are cast
            to float32.
        gen_id: the checkpoint's `gen_id` string.
        step: the checkpoint's `step` integer.
        compress: gzip the file (deterministically: level 9, mtime 0, no
            file name, so equal thetas give equal bytes). The reference
            loader cannot read it; keras-velo's can.

    Example:
        >>> write_checkpoint("/tmp/velo_ckpt/", init_theta(seed=0))
        PosixPath('/tmp/velo_ckpt/params')
    """
    if not isinstance(gen_id, str):
        raise TypeError(f"gen_id must be a str, got {gen_id!r}")
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        raise TypeError(f"step must be an int, got {step!r}")
    if not isinstance(compress, bool):
        raise TypeError(f"compress must be a bool, got {compress!r}")
    validate_theta(theta, source="theta passed to write_checkpoint")
    raw = os.fspath(path)
    target = pathlib.Path(raw)
    separators = tuple(s for s in (os.sep, os.altsep) if s)
    into_directory = target.is_dir() or raw.endswith(separators)
    directory = target if into_directory else target.parent
    directory.mkdir(parents=True, exist_ok=True)
    names = (PARAMS_FILENAME, COMPRESSED_PARAMS_FILENAME)
    name, stale = names[::-1] if compress else names
    params_file = directory / name if into_directory else target
    data = _checkpoint_bytes(theta, gen_id, int(step))
    _atomic_write(params_file, _gzip_bytes(data) if compress else data)
    if into_directory:
        hidden, inits = _theta_sizes(theta)
        _atomic_write(directory / CONFIG_FILENAME, _config_gin(hidden, inits).encode())
        if (directory / stale).is_file():
            (directory / stale).unlink()
    return params_file
