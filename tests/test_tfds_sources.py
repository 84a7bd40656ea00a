"""Tests for `task_families.tfds_sources`, offline: tfds mock data, or an empty
`data_dir` with downloading disabled (which must fail fast, without network).

Backend-independent, so run in only one of the per-backend pytest processes.
"""

import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from task_families import tfds_sources  # noqa: E402
from task_families.tfds_sources import load_tfds_images, load_tfds_text  # noqa: E402

pytestmark = pytest.mark.backends("jax")

N = 6


@pytest.fixture
def recorded_splits(monkeypatch):
    """The `split=` of each `tfds.load` call (mock data ignores split names)."""
    splits = []
    real_load = tfds.load

    def load(*args, **kwargs):
        splits.append(kwargs["split"])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(tfds, "load", load)
    return splits


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [
        ("mnist", (28, 28, 1), 10),
        ("cifar10", (32, 32, 3), 10),
        ("imagenet_resized", (32, 32, 3), 1000),
    ],
)
def test_images_from_mock_data(name, shape, num_classes):
    with tfds.testing.mock_data(num_examples=N):
        images, labels = load_tfds_images(name, split="test", download=False)
    assert images.shape == (N, *shape)
    assert images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.0
    assert labels.shape == (N,) and labels.dtype == np.int32
    assert 0 <= labels.min() and labels.max() < num_classes


def test_max_examples_and_split_names(recorded_splits):
    with tfds.testing.mock_data(num_examples=N):
        images, labels = load_tfds_images(
            "mnist", split="test", download=False, max_examples=3
        )
        small, _ = load_tfds_images(
            "imagenet_resized", split="test", download=False, max_examples=2,
            resolution=8,
        )
    assert images.shape == (3, 28, 28, 1) and labels.shape == (3,)
    assert small.shape == (2, 8, 8, 3)
    assert recorded_splits == ["test[:3]", "validation[:2]"]


def test_bad_imagenet_resolution():
    with pytest.raises(ValueError, match="resolution"):
        load_tfds_images("imagenet_resized", resolution=48)


def test_text_from_mock_data():
    with tfds.testing.mock_data(num_examples=N):
        text = load_tfds_text("tiny_shakespeare", download=False)
        head = load_tfds_text("tiny_shakespeare", download=False, max_bytes=10)
    assert isinstance(text, bytes) and len(text) > 0
    assert text.count(b"\n") == N - 1  # mock data has N examples, joined by b"\n"
    assert head == text[:10]


@pytest.mark.parametrize(
    "loader, name", [(load_tfds_images, "imagenet"), (load_tfds_text, "mnist")]
)
def test_unknown_name(loader, name):
    with pytest.raises(ValueError, match=repr(name)) as info:
        loader(name)
    if loader is load_tfds_images:
        valid = tfds_sources.IMAGE_DATASETS
    else:
        valid = tfds_sources.TEXT_DATASETS
    assert all(v in str(info.value) for v in valid)


@pytest.mark.parametrize(
    "loader, name",
    [(load_tfds_images, "mnist"), (load_tfds_text, "tiny_shakespeare")],
)
def test_not_prepared_without_download(tmp_path, loader, name):
    with pytest.raises(FileNotFoundError) as info:
        loader(name, data_dir=str(tmp_path), download=False)
    message = str(info.value)
    assert str(tmp_path) in message
    assert tfds_sources.DOWNLOAD_ENV in message and "data_dir" in message
    assert isinstance(info.value.__cause__, AssertionError)


def test_download_env_var(monkeypatch, tmp_path):
    monkeypatch.delenv(tfds_sources.DOWNLOAD_ENV, raising=False)
    assert tfds_sources._download_enabled(None) is True
    assert tfds_sources._download_enabled(False) is False
    monkeypatch.setenv(tfds_sources.DOWNLOAD_ENV, "1")
    assert tfds_sources._download_enabled(None) is True
    monkeypatch.setenv(tfds_sources.DOWNLOAD_ENV, "0")
    assert tfds_sources._download_enabled(None) is False
    assert tfds_sources._download_enabled(True) is True
    # End to end: download=None reads the variable, so this fails fast offline.
    with pytest.raises(FileNotFoundError, match="not prepared"):
        load_tfds_images("mnist", data_dir=str(tmp_path))


def test_missing_tfds_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
    with pytest.raises(ImportError, match="pip install tensorflow-datasets"):
        load_tfds_text("lm1b", download=False)
