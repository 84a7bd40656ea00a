"""Resolving `weights=` (keras_velo.weights.pretrained), with the network always faked.

The published checkpoint cannot be reached from here, so a stand-in of the
exact published size is made from the golden random theta: the same format,
with `gen_id` padded so that the msgpack file is 9,282,564 bytes long.
No Keras here: these tests behave the same under every KERAS_BACKEND.
"""

import dataclasses
import io
import pathlib
import socket
import sys
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest

from keras_velo.weights import pretrained
from keras_velo.weights.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from keras_velo.weights.pretrained import (
    PUBLISHED_WEIGHTS,
    BundledWeights,
    WeightsUnavailableError,
    cache_dir,
    load_published_weights,
    resolve_weights,
)
from keras_velo.maths.theta import (
    ThetaError,
    flatten_theta,
    init_theta,
    leaf_name,
    unflatten_theta,
    validate_theta,
)
from meta.bootstrap_theta import bootstrap_theta, write_bootstrap_checkpoint

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
VELO = PUBLISHED_WEIGHTS["velo"]
PUBLISHED_SIZE = 9_282_564


def _assert_bit_equal(theta_a, theta_b):
    flat_a, flat_b = flatten_theta(theta_a), flatten_theta(theta_b)
    assert set(flat_a) == set(flat_b)
    for path, a in flat_a.items():
        assert a.dtype == np.float32 and a.shape == flat_b[path].shape, leaf_name(path)
        np.testing.assert_array_equal(
            a.view(np.uint32), flat_b[path].view(np.uint32), err_msg=leaf_name(path)
        )


@pytest.fixture(scope="module")
def golden_theta(golden_dir):
    return read_checkpoint(golden_dir / "velo_random_theta")


@pytest.fixture(scope="module")
def published_stand_in(golden_theta, tmp_path_factory):
    """Bytes of a valid checkpoint exactly PUBLISHED_SIZE long (the golden theta, padded gen_id)."""
    directory = tmp_path_factory.mktemp("stand_in")
    unpadded = write_checkpoint(directory, golden_theta, gen_id="").stat().st_size
    # The file size is everything else plus the msgpack encoding of gen_id (1 byte for "").
    wanted = PUBLISHED_SIZE - (unpadded - len(msgpack.packb("")))
    length = next(n for n in range(256) if len(msgpack.packb("x" * n)) == wanted)
    gen_id = "keras_velo test stand-in".ljust(length, "_")
    data = write_checkpoint(directory, golden_theta, gen_id=gen_id).read_bytes()
    assert len(data) == PUBLISHED_SIZE
    return data


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """KERAS_HOME in tmp, and any real network access fails loudly."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))

    def no_network(*args, **kwargs):
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)


class FakeUrlopen:
    """Stands in for urllib.request.urlopen: serves `data`, or raises `error`."""

    def __init__(self, data=None, error=None, fail_after=None):
        self.data, self.error, self.fail_after = data, error, fail_after
        self.calls = []

    def __call__(self, url, timeout=None):
        self.calls.append((url, timeout))
        if self.error is not None:
            raise self.error
        stream = io.BytesIO(self.data)
        if self.fail_after is not None:
            read = stream.read

            def failing_read(n=-1):
                if stream.tell() >= self.fail_after:
                    raise ConnectionResetError("connection reset by peer")
                return read(n)

            stream.read = failing_read
        return stream


def _cache_dir_files():
    directory = VELO.cache_path().parent
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# --- registry and cache location


def test_published_weights_registry():
    assert list(PUBLISHED_WEIGHTS) == ["velo"]
    assert VELO.checkpoint_name == "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620"
    assert VELO.url == (
        "https://storage.googleapis.com/gresearch/learned_optimization/pretrained_lopts/"
        "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620/params"
    )
    assert VELO.num_bytes == PUBLISHED_SIZE
    with pytest.raises(dataclasses.FrozenInstanceError):
        VELO.url = "http://elsewhere"


def test_cache_dir_follows_keras_home(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "keras_home" / "keras_velo"
    assert VELO.cache_path() == cache_dir() / VELO.checkpoint_name / "params"
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".keras" / "keras_velo"


def test_cache_dir_falls_back_to_tmp_when_not_writable(tmp_path, monkeypatch):
    read_only = tmp_path / "read_only"
    read_only.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(read_only / "keras"))
    real_access = pretrained.os.access

    def access(path, mode, **kwargs):
        return str(path) != str(read_only) and real_access(path, mode, **kwargs)

    monkeypatch.setattr(pretrained.os, "access", access)
    assert cache_dir() == pretrained.pathlib.Path("/tmp/.keras/keras_velo")


# --- load_published_weights


def test_cached_copy_loads(published_stand_in, golden_theta):
    VELO.cache_path().parent.mkdir(parents=True)
    VELO.cache_path().write_bytes(published_stand_in)
    _assert_bit_equal(load_published_weights("velo"), golden_theta)
    theta, description = resolve_weights("velo")
    _assert_bit_equal(theta, golden_theta)
    assert "velo" in description and VELO.checkpoint_name in description


def test_cached_copy_of_wrong_size(published_stand_in):
    VELO.cache_path().parent.mkdir(parents=True)
    VELO.cache_path().write_bytes(published_stand_in[:1_000_000])
    with pytest.raises(CheckpointError) as info:
        load_published_weights("velo")
    message = str(info.value)
    assert str(VELO.cache_path()) in message
    assert "1000000" in message and str(PUBLISHED_SIZE) in message
    assert "Delete it" in message


def test_cached_copy_of_right_size_but_corrupt(published_stand_in):
    corrupt = bytearray(published_stand_in)
    # Same size, valid msgpack, but 0xff bytes (NaN) in the middle of rnn_params/rnn/linear/w.
    corrupt[4_000_000:4_004_000] = b"\xff" * 4_000
    VELO.cache_path().parent.mkdir(parents=True)
    VELO.cache_path().write_bytes(bytes(corrupt))
    with pytest.raises(ThetaError, match="'rnn_params/rnn/linear/w' has 1000 non-finite"):
        load_published_weights("velo")


@pytest.mark.parametrize(
    "error",
    [
        urllib.error.URLError("[Errno -3] Temporary failure in name resolution"),
        socket.timeout("timed out"),
        ConnectionRefusedError(111, "Connection refused"),
    ],
    ids=["URLError", "timeout", "refused"],
)
def test_network_unavailable(monkeypatch, error):
    fake = FakeUrlopen(error=error)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(WeightsUnavailableError) as info:
        load_published_weights("velo", timeout=5.0)
    assert fake.calls == [(VELO.url, 5.0)]  # one attempt, at once, with the timeout passed on
    assert isinstance(info.value, CheckpointError)
    message = str(info.value)
    assert f"could not be downloaded from {VELO.url}" in message
    assert str(VELO.cache_path()) in message
    assert "weights=None" in message
    assert 'weights="bundled"' in message
    assert 'weights="/path/to/params"' in message
    assert not VELO.cache_path().exists()
    assert _cache_dir_files() == []  # no partial download left behind


def test_not_cached_and_download_disabled(monkeypatch):
    fake = FakeUrlopen(error=AssertionError("must not be called"))
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(WeightsUnavailableError) as info:
        load_published_weights("velo", download=False)
    assert fake.calls == []
    assert str(VELO.cache_path()) in str(info.value) and "weights=None" in str(info.value)


def test_simulated_download(monkeypatch, capsys, published_stand_in, golden_theta):
    fake = FakeUrlopen(data=published_stand_in)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    theta = load_published_weights("velo")
    _assert_bit_equal(theta, golden_theta)
    assert fake.calls == [(VELO.url, 60.0)]
    assert VELO.cache_path().read_bytes() == published_stand_in
    assert _cache_dir_files() == ["params"]
    progress = capsys.readouterr()
    assert progress.out == ""
    assert VELO.url in progress.err and "100%" in progress.err
    assert progress.err.count("%") >= 5  # a line about every 10%
    # Second call: served from the cache, no download, no progress output.
    monkeypatch.setattr(urllib.request, "urlopen", FakeUrlopen(error=AssertionError("cached")))
    _assert_bit_equal(load_published_weights("velo"), golden_theta)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("served", [5_000_000, PUBLISHED_SIZE + 100], ids=["short", "long"])
def test_simulated_download_of_wrong_length(monkeypatch, published_stand_in, served):
    data = (published_stand_in + b"\0" * 100)[:served]
    monkeypatch.setattr(urllib.request, "urlopen", FakeUrlopen(data=data))
    with pytest.raises(WeightsUnavailableError) as info:
        load_published_weights("velo")
    assert str(PUBLISHED_SIZE) in str(info.value) and "nothing was cached" in str(info.value)
    assert not VELO.cache_path().exists()
    assert _cache_dir_files() == []


def test_simulated_download_interrupted(monkeypatch, published_stand_in):
    fake = FakeUrlopen(data=published_stand_in, fail_after=3 << 20)
    monkeypatch.setattr(urllib.request, "urlopen", fake)
    with pytest.raises(WeightsUnavailableError, match="ConnectionResetError"):
        load_published_weights("velo")
    assert _cache_dir_files() == []


def test_simulated_download_of_invalid_content(monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", FakeUrlopen(data=b"\xc1" * PUBLISHED_SIZE))
    with pytest.raises(CheckpointError, match="not a valid VeLO checkpoint"):
        load_published_weights("velo")
    assert _cache_dir_files() == []


def test_unknown_published_name():
    with pytest.raises(ValueError, match="'velo'"):
        load_published_weights("velo2")


# --- resolve_weights


def test_resolve_none_is_random_init():
    theta, description = resolve_weights(None)
    assert description == "random init (seed=0)"
    _assert_bit_equal(theta, init_theta(0))
    theta, description = resolve_weights(None, seed=5)
    assert description == "random init (seed=5)"
    _assert_bit_equal(theta, init_theta(5))


def test_resolve_path(golden_dir, golden_theta):
    for path in (golden_dir / "velo_random_theta", str(golden_dir / "velo_random_theta"),
                 golden_dir / "velo_random_theta" / "params"):
        theta, description = resolve_weights(path)
        _assert_bit_equal(theta, golden_theta)
        assert str(path) in description


def test_resolve_in_memory_theta():
    original = init_theta(seed=2, lstm_hidden_size=8, num_param_inits=4)
    flat = flatten_theta(original)
    as_float64 = unflatten_theta({p: v.astype(np.float64) for p, v in flat.items()})
    theta, description = resolve_weights(as_float64)
    assert description == "in-memory theta"
    _assert_bit_equal(theta, original)
    theta["rnn_params"]["linear"]["w"][:] = 0  # a copy: the caller's dict is untouched
    assert as_float64["rnn_params"]["linear"]["w"].any()


def test_resolve_invalid_in_memory_theta():
    theta = init_theta(seed=2, lstm_hidden_size=8, num_param_inits=4)
    theta["lstm_init_state"]["cell"] = np.zeros((1, 9), np.float32)
    with pytest.raises(ThetaError) as info:
        resolve_weights(theta)
    assert "in-memory theta" in str(info.value) and "lstm_init_state/cell" in str(info.value)


def test_resolve_unknown_string(tmp_path):
    for bad in ("vel0", str(tmp_path / "no_such_checkpoint")):
        with pytest.raises(ValueError) as info:
            resolve_weights(bad)
        message = str(info.value)
        assert repr(bad) in message
        assert "'velo'" in message and "'bundled'" in message
        assert "params" in message


# --- the shipped weights: "bundled" and the bootstrap theta (meta/bootstrap_theta.py)


def test_shipped_registry_and_package_data():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    shipped = pyproject["tool"]["setuptools"]["package-data"]["keras_velo"]
    assert set(pretrained.BUNDLED_WEIGHTS) >= {"bundled", "bootstrap"}
    for name, entry in pretrained.BUNDLED_WEIGHTS.items():
        assert entry.name == name and entry.package == "keras_velo"
        assert entry.path().is_file()
        assert entry.path().read_bytes()[:2] == b"\x1f\x8b"  # gzip
        assert str(pathlib.PurePosixPath(entry.resource).parent / "*") in shipped
    bootstrap = pretrained.BUNDLED_WEIGHTS["bootstrap"]
    assert bootstrap.resource == "weights/bootstrap/params.gz"
    assert "bootstrap" in bootstrap.description and "not meta-trained" in bootstrap.description


def test_resolve_bootstrap_is_the_hand_set_theta():
    theta, description = resolve_weights("bootstrap")
    validate_theta(theta, source="bootstrap")
    _assert_bit_equal(theta, bootstrap_theta())
    assert "bootstrap" in description
    bundled, description = resolve_weights("bundled")
    validate_theta(bundled, source="bundled")
    assert "bundled" in description


def test_bootstrap_file_is_reproduced_byte_for_byte(tmp_path):
    """The script's writer rebuilds the shipped files exactly (see meta/bootstrap_theta.py)."""
    shipped = pretrained.BUNDLED_WEIGHTS["bootstrap"].path()
    written = write_bootstrap_checkpoint(tmp_path)
    assert written == tmp_path / "params.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.gin", "params.gz"]
    assert written.read_bytes() == shipped.read_bytes(), (
        "keras_velo/weights/bootstrap/params.gz is stale: rebuild it with "
        "`python -m meta.bootstrap_theta --out keras_velo/weights/bootstrap`"
    )
    assert (tmp_path / "config.gin").read_bytes() == (
        shipped.parent.joinpath("config.gin").read_bytes()
    )


def test_resolve_bundled_name_without_an_entry(monkeypatch):
    monkeypatch.delitem(pretrained.BUNDLED_WEIGHTS, "bundled")
    with pytest.raises(CheckpointError, match="no bundled weights of that name"):
        resolve_weights("bundled")


def test_resolve_bundled_entry(tmp_path, monkeypatch):
    """Adding a bundled checkpoint is one registry entry (simulated with a throwaway package)."""
    package = tmp_path / "site" / "keras_velo_fake_bundle_pkg"
    (package / "weights").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    small = init_theta(seed=11, lstm_hidden_size=8, num_param_inits=4)
    write_checkpoint(package / "weights" / "velo" / "params", small)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(
        pretrained.BUNDLED_WEIGHTS, "bundled",
        BundledWeights("bundled", "weights/velo/params", package="keras_velo_fake_bundle_pkg"),
    )
    theta, description = resolve_weights("bundled")
    _assert_bit_equal(theta, small)
    assert "bundled" in description
    monkeypatch.delitem(sys.modules, "keras_velo_fake_bundle_pkg", raising=False)


def test_resolve_rejects_other_types():
    with pytest.raises(TypeError, match="int"):
        resolve_weights(3)
