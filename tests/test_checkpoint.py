"""Theta structure (keras_velo.maths.theta) and the checkpoint file format (keras_velo.weights.checkpoint).

The golden checkpoints were written by the reference (`learned_optimization`
`checkpoints.save_state`), so loading them checks the reader against the
real format, and re-writing them byte for byte checks the writer.
No Keras here: these tests behave the same under every KERAS_BACKEND.
"""

import gzip
import json
import math
import os
import re

import msgpack
import numpy as np
import pytest

from keras_velo.weights.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from keras_velo.maths.theta import (
    MLP_INPUT_GROUP_WIDTHS,
    NUM_TENSOR_FEATURES,
    ThetaError,
    flatten_theta,
    init_theta,
    leaf_name,
    theta_num_parameters,
    theta_shapes,
    unflatten_theta,
    validate_theta,
)

GOLDEN_THETAS = {
    "velo_random_theta": "golden_random_theta",  # directory -> gen_id in the file
    "velo_perturbed_theta": "golden_perturbed_theta",
}
TOTAL_VALUES = 2_320_385


# --- independent minimal reader/writer (golden README snippet), not the code under test


def _independent_read(path):
    def ext(code, data):
        assert code in (1, 3), code
        shape, dtype, buf = msgpack.unpackb(data, raw=True)
        return np.frombuffer(buf, dtype=np.dtype(dtype.decode())).reshape(shape).copy()

    with open(path, "rb") as f:
        return msgpack.unpackb(f.read(), ext_hook=ext, raw=False, strict_map_key=False)


def _pack_tree(tree):
    """Pack an arbitrary nested dict, arrays as flax ExtType 1, with no validation."""

    def convert(node):
        if isinstance(node, dict):
            return {k: convert(v) for k, v in node.items()}
        if isinstance(node, np.ndarray):
            payload = [list(node.shape), node.dtype.name, np.ascontiguousarray(node).tobytes()]
            return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))
        return node

    return msgpack.packb(convert(tree), use_bin_type=True)


def _index_leaves(golden_dir):
    """index.json theta_leaves -> {path tuple: shape}, in file order."""
    spec = json.loads((golden_dir / "index.json").read_text())["theta_leaves"]
    leaves = {}
    for name, shape, dtype in spec["leaves"]:
        assert dtype == "float32"
        path = tuple(a or b for a, b in re.findall(r"\['([^']*)'\]|\.(\w+)", name))
        leaves[path] = tuple(shape)
    assert spec["total"] == TOTAL_VALUES
    return leaves


def _assert_bit_equal(theta_a, theta_b):
    flat_a, flat_b = flatten_theta(theta_a), flatten_theta(theta_b)
    assert set(flat_a) == set(flat_b)
    for path in flat_a:
        a, b = flat_a[path], flat_b[path]
        assert a.dtype == b.dtype == np.float32, leaf_name(path)
        assert a.shape == b.shape, leaf_name(path)
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=leaf_name(path))


@pytest.fixture(scope="module")
def golden_reference(golden_dir):
    """{dir name: file contents as read by the independent reader}."""
    return {name: _independent_read(golden_dir / name / "params") for name in GOLDEN_THETAS}


@pytest.fixture
def small_theta():
    """A small but complete theta (H=8, K=4) with nonzero biases and LSTM state."""
    theta = init_theta(seed=7, lstm_hidden_size=8, num_param_inits=4)
    rng = np.random.default_rng(0)
    flat = {
        path: (leaf + rng.standard_normal(leaf.shape).astype(np.float32)) for path, leaf in
        flatten_theta(theta).items()
    }
    return unflatten_theta(flat)


def _corrupt_golden_tree(golden_reference):
    """A deep copy of the random golden theta tree that tests may mutate."""
    tree = golden_reference["velo_random_theta"]["params"]
    return unflatten_theta({p: v.copy() for p, v in flatten_theta(tree).items()})


# --- theta structure


def test_theta_shapes_match_golden_index(golden_dir):
    expected = _index_leaves(golden_dir)
    shapes = theta_shapes()
    assert list(shapes) == list(expected)  # same leaves, same (file) order
    assert shapes == expected
    assert sum(math.prod(s) for s in shapes.values()) == TOTAL_VALUES
    assert sum(MLP_INPUT_GROUP_WIDTHS) == NUM_TENSOR_FEATURES == 30


@pytest.mark.parametrize("hidden,inits", [(8, 4), (16, 3), (512, 256)])
def test_theta_shapes_parameter_count_formula(hidden, inits):
    shapes = theta_shapes(hidden, inits)
    assert len(shapes) == 33
    expected = (
        3 * (30 * hidden + hidden)          # mix layers
        + 2 * hidden * 4 * hidden + 4 * hidden  # LSTM gates
        + hidden * inits + inits            # controls head
        + hidden + 1                        # step-size head
        + 2 * hidden                        # initial LSTM state
        + inits * (30 * 4 + 4 + 16 + 4 + 12 + 3)  # MLP bank
    )
    assert sum(math.prod(s) for s in shapes.values()) == expected


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_theta_shapes_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=re.escape(repr(bad))):
        theta_shapes(lstm_hidden_size=bad)


def test_flatten_unflatten_round_trip():
    theta = init_theta(seed=1, lstm_hidden_size=8, num_param_inits=4)
    flat = flatten_theta(theta)
    assert ("rnn_params", "rnn/linear", "w") in flat
    assert ("ff_mod_stack", "~", "w0__13") in flat
    assert list(flat) == list(theta_shapes(8, 4))
    rebuilt = unflatten_theta(flat)
    assert rebuilt.keys() == theta.keys()
    _assert_bit_equal(rebuilt, theta)
    assert leaf_name(("rnn_params", "rnn/linear", "w")) == "rnn_params/rnn/linear/w"


def test_unflatten_rejects_conflicting_paths():
    with pytest.raises(ValueError, match="a/b"):
        unflatten_theta({("a", "b"): 1, ("a", "b", "c"): 2})


# --- init_theta


def test_init_theta_shapes_and_validity():
    theta = init_theta(seed=0)
    flat = flatten_theta(theta)
    assert {p: v.shape for p, v in flat.items()} == theta_shapes()
    assert all(v.dtype == np.float32 for v in flat.values())
    assert theta_num_parameters(theta) == TOTAL_VALUES
    validate_theta(theta, source="init_theta(0)")


def test_init_theta_deterministic_per_seed():
    _assert_bit_equal(init_theta(seed=3), init_theta(seed=3))
    a = init_theta(seed=3)["rnn_params"]["linear"]["w"]
    b = init_theta(seed=4)["rnn_params"]["linear"]["w"]
    assert not np.array_equal(a, b)


def test_init_theta_biases_and_state_zero_weights_not():
    flat = flatten_theta(init_theta(seed=0))
    for path, leaf in flat.items():
        is_zero_init = path[0] == "lstm_init_state" or path[-1].startswith("b")
        assert (not leaf.any()) == is_zero_init, leaf_name(path)


# Truncated at ±2σ, the sample std is σ·sqrt(1 - 4φ(2)/(2Φ(2) - 1)) = 0.8796σ (haiku keeps σ
# as the pre-truncation scale). Tolerances: 3 to 10 standard errors of the sample std for the
# leaf's size (the seed is fixed, so the test is deterministic either way).
_TRUNC_STD = 0.87962566


@pytest.mark.parametrize(
    "path,stddev,rel_tol",
    [
        (("rnn_params", "rnn/linear", "w"), 1 / math.sqrt(1024), 0.005),
        (("rnn_params", "linear_1", "w"), 1 / math.sqrt(30), 0.02),
        (("rnn_params", "rnn_to_controls", "w"), 1 / math.sqrt(512), 0.01),
        (("rnn_params", "step_size", "w"), 1 / math.sqrt(512), 0.15),
        (("ff_mod_stack", "~", "w0__3"), 1 / math.sqrt(30), 0.04),
        (("ff_mod_stack", "~", "w1"), 0.5, 0.04),
        (("ff_mod_stack", "~", "w2"), 0.5, 0.04),
    ],
)
def test_init_theta_truncated_normal_scale(path, stddev, rel_tol):
    leaf = flatten_theta(init_theta(seed=0))[path]
    assert np.max(np.abs(leaf)) <= 2 * stddev * (1 + 1e-6)
    assert abs(float(np.mean(leaf))) < 4 * stddev / math.sqrt(leaf.size)
    assert float(np.std(leaf)) == pytest.approx(_TRUNC_STD * stddev, rel=rel_tol)


# --- validate_theta on in-memory thetas


def test_validate_theta_errors_name_source_and_leaf():
    theta = init_theta(seed=0, lstm_hidden_size=8, num_param_inits=4)
    theta["rnn_params"]["rnn_to_controls"]["w"] = np.zeros((8, 5), np.float32)
    with pytest.raises(ThetaError) as info:
        validate_theta(theta, source="my theta")
    message = str(info.value)
    assert message.startswith("my theta")
    assert "rnn_params/rnn_to_controls/w" in message
    assert "(8, 5)" in message and "(8, 4)" in message
    assert "keras_velo.write_checkpoint" in message


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda t: t["ff_mod_stack"]["~"].pop("w0__7"), "missing leaves ['ff_mod_stack/~/w0__7']"),
        (lambda t: t["rnn_params"]["linear"].update(extra=np.zeros(1, np.float32)),
         "unexpected leaves ['rnn_params/linear/extra']"),
        (lambda t: t["rnn_params"]["linear"].__setitem__("b", np.zeros(8, np.int32)),
         "'rnn_params/linear/b' has dtype int32"),
        (lambda t: t["lstm_init_state"]["cell"].__setitem__((0, 3), np.inf),
         "'lstm_init_state/cell' has 1 non-finite"),
        (lambda t: t.pop("lstm_init_state"), "'lstm_init_state/hidden' is missing"),
        (lambda t: t["ff_mod_stack"]["~"].__setitem__("b0", np.zeros(4, np.float32)),
         "'ff_mod_stack/~/b0' has shape (4,)"),
    ],
)
def test_validate_theta_detects(mutate, expected):
    theta = init_theta(seed=0, lstm_hidden_size=8, num_param_inits=4)
    mutate(theta)
    with pytest.raises(ThetaError, match=re.escape(expected)):
        validate_theta(theta, source="test")


def test_validate_theta_accepts_other_float_dtypes():
    flat = flatten_theta(init_theta(seed=0, lstm_hidden_size=8, num_param_inits=4))
    validate_theta(unflatten_theta({p: v.astype(np.float64) for p, v in flat.items()}), "f64")


def test_error_hierarchy():
    assert issubclass(ThetaError, CheckpointError)
    assert issubclass(CheckpointError, ValueError)


# --- reading the golden checkpoints


@pytest.mark.parametrize("name", sorted(GOLDEN_THETAS))
@pytest.mark.parametrize("form", ["directory", "params file", "str path"])
def test_read_golden_checkpoint(golden_dir, golden_reference, name, form):
    path = {
        "directory": golden_dir / name,
        "params file": golden_dir / name / "params",
        "str path": str(golden_dir / name),
    }[form]
    theta = read_checkpoint(path)
    flat = flatten_theta(theta)
    assert {p: v.shape for p, v in flat.items()} == _index_leaves(golden_dir)
    assert theta_num_parameters(theta) == TOTAL_VALUES
    assert all(v.flags.writeable and v.dtype == np.float32 for v in flat.values())
    _assert_bit_equal(theta, golden_reference[name]["params"])


def test_golden_spot_values(golden_dir, golden_reference):
    random = read_checkpoint(golden_dir / "velo_random_theta")
    perturbed = read_checkpoint(golden_dir / "velo_perturbed_theta")
    # The random init has zero biases and state; the perturbed one does not, with hidden != cell.
    assert not random["rnn_params"]["rnn/linear"]["b"].any()
    assert not random["lstm_init_state"]["hidden"].any()
    assert perturbed["rnn_params"]["rnn/linear"]["b"].std() > 0.05
    assert not np.array_equal(perturbed["lstm_init_state"]["hidden"],
                              perturbed["lstm_init_state"]["cell"])
    ref = golden_reference["velo_perturbed_theta"]["params"]
    assert perturbed["lstm_init_state"]["cell"][0, 17] == ref["lstm_init_state"]["cell"][0, 17]
    w0_13 = perturbed["ff_mod_stack"]["~"]["w0__13"]
    assert w0_13[255, 2, 3] == ref["ff_mod_stack"]["~"]["w0__13"][255, 2, 3]
    # Weights shared by both thetas are identical (only biases and state were perturbed).
    np.testing.assert_array_equal(random["rnn_params"]["rnn/linear"]["w"],
                                  perturbed["rnn_params"]["rnn/linear"]["w"])


def test_read_returns_independent_copies(golden_dir):
    first = read_checkpoint(golden_dir / "velo_random_theta")
    first["rnn_params"]["linear"]["w"][:] = 0
    second = read_checkpoint(golden_dir / "velo_random_theta")
    assert second["rnn_params"]["linear"]["w"].any()


# --- writing


@pytest.mark.parametrize("name", sorted(GOLDEN_THETAS))
def test_write_reproduces_golden_file_byte_for_byte(golden_dir, tmp_path, name):
    theta = read_checkpoint(golden_dir / name)
    written = write_checkpoint(tmp_path, theta, gen_id=GOLDEN_THETAS[name], step=0)
    assert written == tmp_path / "params"
    assert written.read_bytes() == (golden_dir / name / "params").read_bytes()
    assert (tmp_path / "config.gin").read_bytes() == (golden_dir / name / "config.gin").read_bytes()


def test_write_read_round_trip_bit_exact(tmp_path, small_theta, golden_reference, golden_dir):
    path = write_checkpoint(tmp_path / "ckpt", small_theta, gen_id="round trip", step=12345)
    _assert_bit_equal(read_checkpoint(path), small_theta)
    raw = _independent_read(path)
    assert raw["gen_id"] == "round trip" and raw["step"] == 12345
    golden = read_checkpoint(golden_dir / "velo_perturbed_theta")
    _assert_bit_equal(read_checkpoint(write_checkpoint(tmp_path / "g" / "params", golden)), golden)


def test_write_directory_and_file_targets(tmp_path, small_theta):
    # An existing directory, and a new one named with a trailing separator: params + config.gin.
    existing = tmp_path / "existing"
    existing.mkdir()
    assert write_checkpoint(existing, small_theta) == existing / "params"
    new_dir = str(tmp_path / "new" / "dir") + os.sep
    assert write_checkpoint(new_dir, small_theta) == tmp_path / "new" / "dir" / "params"
    for directory in (existing, tmp_path / "new" / "dir"):
        assert (directory / "config.gin").read_text().splitlines() == [
            "run_train.lopt = @HyperV2()",
            "HyperV2.lstm_hidden_size = 8",
            "HyperV2.param_inits = 4",
            "HyperV2.use_bugged_loss_features = False",
        ]
        assert sorted(p.name for p in directory.iterdir()) == ["config.gin", "params"]
    # Anything else is the file itself, with no config.gin beside it.
    target = tmp_path / "files" / "velo.msgpack"
    assert write_checkpoint(target, small_theta) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["velo.msgpack"]
    _assert_bit_equal(read_checkpoint(target), small_theta)


def test_write_overwrites_atomically(tmp_path, small_theta):
    write_checkpoint(tmp_path, small_theta)
    other = init_theta(seed=99, lstm_hidden_size=8, num_param_inits=4)
    write_checkpoint(tmp_path, other)
    _assert_bit_equal(read_checkpoint(tmp_path), other)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.gin", "params"]


def test_write_rejects_invalid_theta(tmp_path, small_theta):
    del small_theta["rnn_params"]["step_size"]
    with pytest.raises(ThetaError, match="rnn_params/step_size/w"):
        write_checkpoint(tmp_path, small_theta)
    assert not any(tmp_path.iterdir())


# --- reading broken checkpoints


def test_truncated_file(golden_dir, tmp_path):
    path = tmp_path / "params"
    path.write_bytes((golden_dir / "velo_random_theta" / "params").read_bytes()[:1_000_000])
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path)
    message = str(info.value)
    assert str(path) in message
    assert "truncated" in message and "1000000 bytes" in message


@pytest.mark.parametrize(
    "content",
    [b"", b"\xc1" * 64, b"not a checkpoint at all", np.random.default_rng(0).bytes(4096)],
    ids=["empty", "reserved-byte", "text", "random"],
)
def test_garbage_file(tmp_path, content):
    path = tmp_path / "garbage.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        read_checkpoint(path)


def test_wrong_top_level_structure(tmp_path):
    for i, obj in enumerate([{"foo": 1, "bar": 2}, [1, 2, 3], 7]):
        path = tmp_path / f"params{i}"
        path.write_bytes(msgpack.packb(obj))
        with pytest.raises(CheckpointError, match="wrong top-level structure"):
            read_checkpoint(path)


def _write_tree(tmp_path, tree, top_level=True):
    path = tmp_path / "params"
    state = {"params": tree, "gen_id": "test", "step": 0} if top_level else tree
    path.write_bytes(_pack_tree(state))
    return path


def test_leaf_with_wrong_shape(tmp_path, golden_reference):
    tree = _corrupt_golden_tree(golden_reference)
    tree["rnn_params"]["rnn/linear"]["w"] = tree["rnn_params"]["rnn/linear"]["w"][:, :2047].copy()
    path = _write_tree(tmp_path, tree)
    with pytest.raises(ThetaError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "rnn_params/rnn/linear/w" in message
    assert "(1024, 2047)" in message and "(1024, 2048)" in message
    assert "re-download" in message.lower()


def test_missing_leaf(tmp_path, golden_reference):
    tree = _corrupt_golden_tree(golden_reference)
    del tree["rnn_params"]["step_size"]["b"]
    with pytest.raises(CheckpointError, match=re.escape("rnn_params/step_size/b")):
        read_checkpoint(_write_tree(tmp_path, tree))


def test_extra_leaf_and_non_array_leaf(tmp_path, golden_reference):
    tree = _corrupt_golden_tree(golden_reference)
    tree["rnn_params"]["linear_3"] = {"w": np.zeros((30, 512), np.float32)}
    with pytest.raises(CheckpointError, match=re.escape("rnn_params/linear_3/w")):
        read_checkpoint(_write_tree(tmp_path, tree))
    tree = _corrupt_golden_tree(golden_reference)
    tree["rnn_params"]["linear"]["b"] = [0.0] * 512
    with pytest.raises(CheckpointError, match=re.escape("'rnn_params/linear/b' is a list")):
        read_checkpoint(_write_tree(tmp_path, tree))


def test_array_payload_with_wrong_byte_count(tmp_path, golden_reference):
    tree = _corrupt_golden_tree(golden_reference)
    bad = msgpack.packb([[512], "float32", b"\x00" * 2044], use_bin_type=True)
    state = {"params": tree, "gen_id": "test", "step": 0}

    def convert(node):
        if isinstance(node, dict):
            return {k: convert(v) for k, v in node.items()}
        payload = [list(node.shape), node.dtype.name, node.tobytes()]
        return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))

    packed = convert(tree)
    packed["rnn_params"]["linear_2"]["b"] = msgpack.ExtType(1, bad)
    state["params"] = packed
    path = tmp_path / "params"
    path.write_bytes(msgpack.packb(state, use_bin_type=True))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path)
    message = str(info.value)
    assert "rnn_params/linear_2/b" in message
    assert "2044 bytes" in message and "2048 bytes" in message


def test_non_finite_leaf(tmp_path, golden_reference):
    tree = _corrupt_golden_tree(golden_reference)
    tree["ff_mod_stack"]["~"]["w1"][3, 1, 2] = np.nan
    with pytest.raises(ThetaError, match=re.escape("'ff_mod_stack/~/w1' has 1 non-finite")):
        read_checkpoint(_write_tree(tmp_path, tree))


def test_missing_path_and_directory_without_params(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CheckpointError, match=re.escape(f"'{missing}' does not exist")):
        read_checkpoint(missing)
    (tmp_path / "empty_ckpt").mkdir()
    (tmp_path / "empty_ckpt" / "config.gin").write_text("x = 1\n")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path / "empty_ckpt")
    assert str(tmp_path / "empty_ckpt") in str(info.value)
    assert "no file named 'params'" in str(info.value) and "config.gin" in str(info.value)


# --- accepted variants


def test_old_namedtuple_layout_of_lstm_init_state(tmp_path, golden_reference):
    tree = _corrupt_golden_tree(golden_reference)
    state = tree["lstm_init_state"]
    tree["lstm_init_state"] = {
        "name": "LSTMState",
        "fields": {"0": "hidden", "1": "cell"},
        "values": {"0": state["hidden"], "1": state["cell"]},
    }
    theta = read_checkpoint(_write_tree(tmp_path, tree))
    _assert_bit_equal(theta, golden_reference["velo_random_theta"]["params"])
    # Use the perturbed theta too, where hidden != cell, so a swap would show.
    tree = golden_reference["velo_perturbed_theta"]["params"]
    swapped = dict(tree, lstm_init_state={
        "name": "LSTMState",
        "fields": {"0": "cell", "1": "hidden"},
        "values": {"0": tree["lstm_init_state"]["cell"], "1": tree["lstm_init_state"]["hidden"]},
    })
    _assert_bit_equal(read_checkpoint(_write_tree(tmp_path, swapped)), tree)


def test_bare_theta_map(tmp_path, golden_reference):
    tree = golden_reference["velo_perturbed_theta"]["params"]
    theta = read_checkpoint(_write_tree(tmp_path, tree, top_level=False))
    _assert_bit_equal(theta, tree)


def test_float64_file_is_cast_to_float32(tmp_path, small_theta):
    tree = unflatten_theta({p: v.astype(np.float64) for p, v in flatten_theta(small_theta).items()})
    theta = read_checkpoint(_write_tree(tmp_path, tree))
    _assert_bit_equal(theta, small_theta)


# --- gzip-compressed checkpoints (the bundled weights ship as params.gz)


def _as_directory(path):
    """A path string with a trailing separator: write_checkpoint writes into it."""
    return str(path) + os.sep


def test_write_compressed_round_trip(tmp_path, small_theta):
    path = write_checkpoint(_as_directory(tmp_path / "ckpt"), small_theta, gen_id="gz", step=3,
                            compress=True)
    assert path == tmp_path / "ckpt" / "params.gz"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.gin", "params.gz"]
    plain = write_checkpoint(tmp_path / "plain.msgpack", small_theta, gen_id="gz", step=3)
    assert gzip.decompress(path.read_bytes()) == plain.read_bytes()
    for source in (path.parent, path, str(path)):  # the directory, the file, a str
        _assert_bit_equal(read_checkpoint(source), small_theta)


def test_write_compressed_is_deterministic(tmp_path, small_theta):
    first = write_checkpoint(_as_directory(tmp_path / "a"), small_theta, compress=True)
    second = write_checkpoint(_as_directory(tmp_path / "b"), small_theta, compress=True)
    first, second = first.read_bytes(), second.read_bytes()
    assert first == second
    # RFC 1952 header: magic, deflate, no flags (so no file name), mtime 0.
    assert first[:4] == b"\x1f\x8b\x08\x00"
    assert first[4:8] == b"\x00\x00\x00\x00"


def test_compressed_file_with_any_name_is_detected(tmp_path, small_theta):
    target = tmp_path / "files" / "theta.bin"
    assert write_checkpoint(target, small_theta, compress=True) == target
    assert sorted(p.name for p in target.parent.iterdir()) == ["theta.bin"]
    _assert_bit_equal(read_checkpoint(target), small_theta)


def test_gzip_written_by_other_tools_is_read(golden_dir, golden_reference, tmp_path):
    """A gzip with a file name and a time stamp in its header (Python's gzip module)."""
    raw = (golden_dir / "velo_random_theta" / "params").read_bytes()
    with gzip.GzipFile(tmp_path / "params.gz", "wb", mtime=1_700_000_000) as stream:
        stream.write(raw)
    _assert_bit_equal(read_checkpoint(tmp_path), golden_reference["velo_random_theta"]["params"])


def test_directory_prefers_params_and_writes_replace_the_other_kind(tmp_path, small_theta):
    other = init_theta(seed=99, lstm_hidden_size=8, num_param_inits=4)
    write_checkpoint(tmp_path, small_theta)
    (tmp_path / "params.gz").write_bytes(gzip.compress((tmp_path / "params").read_bytes()))
    write_checkpoint(tmp_path / "x.msgpack", other)
    (tmp_path / "params").write_bytes((tmp_path / "x.msgpack").read_bytes())
    (tmp_path / "x.msgpack").unlink()
    _assert_bit_equal(read_checkpoint(tmp_path), other)  # `params` wins over `params.gz`
    write_checkpoint(tmp_path, small_theta, compress=True)  # replaces the stale `params`
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.gin", "params.gz"]
    _assert_bit_equal(read_checkpoint(tmp_path), small_theta)
    write_checkpoint(tmp_path, other)  # and back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.gin", "params"]
    _assert_bit_equal(read_checkpoint(tmp_path), other)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "bad header"])
def test_corrupt_gzip(tmp_path, small_theta, damage):
    path = write_checkpoint(_as_directory(tmp_path / "ckpt"), small_theta, compress=True)
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":
        middle = len(data) // 2
        data[middle : middle + 16] = bytes(b ^ 0xFF for b in data[middle : middle + 16])
    else:
        data[2] = 99  # compression method other than deflate
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(path.parent)
    message = str(info.value)
    assert str(path) in message
    assert "gzip" in message and "corrupt or truncated" in message


def test_gzip_of_something_else(tmp_path):
    path = tmp_path / "params.gz"
    path.write_bytes(gzip.compress(b"not a checkpoint at all"))
    with pytest.raises(CheckpointError, match="not a msgpack checkpoint"):
        read_checkpoint(tmp_path)


def test_write_compress_must_be_bool(tmp_path, small_theta):
    with pytest.raises(TypeError, match="compress"):
        write_checkpoint(tmp_path, small_theta, compress="yes")
    assert not any(tmp_path.iterdir())


def test_directory_without_either_params_file(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here\n")
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(tmp_path)
    assert "'params'" in str(info.value) and "'params.gz'" in str(info.value)
    assert "notes.txt" in str(info.value)
