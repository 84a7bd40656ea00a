"""Canonical tensorflow-datasets (tfds) sources, returned as plain numpy/bytes.

For users with internet access, or with a prepared tfds copy in a local
`data_dir`; the offline datasets the project relies on live in `datasets.py`.
`tensorflow_datasets` is imported only when a loader is called.

Downloading is controlled by `download=` or, when that is None, by the
environment variable `KERAS_VELO_TFDS_DOWNLOAD` ("0" disables it; unset or
anything else enables it). `data_dir=None` means the tfds default, which
honours `TFDS_DATA_DIR`.
"""

import os

import numpy as np

IMAGE_DATASETS = ("mnist", "fashion_mnist", "cifar10", "cifar100", "imagenet_resized")
TEXT_DATASETS = ("lm1b", "tiny_shakespeare")
IMAGENET_RESOLUTIONS = (8, 16, 32, 64)
DOWNLOAD_ENV = "KERAS_VELO_TFDS_DOWNLOAD"

# "train"/"test" to a dataset's real split names, where they differ.
_SPLIT_NAMES = {"imagenet_resized": {"test": "validation"}}
# Examples per tf.data batch while reading. tfds' own `batch_size=-1` uses the
# recorded split size, which is 0 under `tfds.testing.mock_data`; TF then
# aborts the process in `batch(sys.maxsize)`, so read in chunks instead.
_CHUNK = 4096


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "task_families.tfds_sources needs tensorflow-datasets: "
            "`pip install tensorflow-datasets`."
        ) from err
    return tfds


def _download_enabled(download):
    if download is not None:
        return bool(download)
    return os.environ.get(DOWNLOAD_ENV, "1") != "0"


def _check_name(name, valid):
    if name not in valid:
        raise ValueError(f"Unknown dataset {name!r}; valid names: {', '.join(valid)}.")


def _load(builder_name, split, data_dir, download, **kwargs):
    """`tfds.load` in `_CHUNK`-sized batches, as an iterator of numpy batches."""
    tfds = _tfds()
    download = _download_enabled(download)
    try:
        ds = tfds.load(
            builder_name, split=split, batch_size=_CHUNK, data_dir=data_dir,
            download=download, **kwargs,
        )
    except AssertionError as err:  # tfds' "could not find data in ..." error
        if download or "could not find data" not in str(err):
            raise
        where = data_dir or os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")
        raise FileNotFoundError(
            f"tfds dataset {builder_name!r} is not prepared in data_dir={where!r} "
            f"and downloading is disabled. Set {DOWNLOAD_ENV}=1 (needs internet), "
            "or pass data_dir= pointing at a prepared tfds copy."
        ) from err
    return tfds.as_numpy(ds)


def load_tfds_images(name, split="train", data_dir=None, download=None,
                     max_examples=None, resolution=32):
    """Load an image classification dataset from tfds.

    `name` is one of `IMAGE_DATASETS`; `split` is "train" or "test" (mapped to
    the dataset's own names, e.g. "validation" for imagenet_resized), or any
    other tfds split string. `max_examples` keeps the first N examples.
    `resolution` picks the imagenet_resized config (8, 16, 32 or 64) and is
    ignored for the others.

    Returns `(images, labels)`: images float32 `[n, h, w, c]` in [0, 1]
    (c is 1 for the MNISTs, 3 otherwise), labels int32 `[n]`.
    """
    _check_name(name, IMAGE_DATASETS)
    builder_name = name
    if name == "imagenet_resized":
        if resolution not in IMAGENET_RESOLUTIONS:
            raise ValueError(
                f"resolution must be one of {IMAGENET_RESOLUTIONS}, got {resolution!r}."
            )
        builder_name = f"imagenet_resized/{resolution}x{resolution}"
    split = _SPLIT_NAMES.get(name, {}).get(split, split)
    if max_examples is not None:
        if max_examples < 1:
            raise ValueError(f"max_examples must be positive, got {max_examples!r}.")
        split = f"{split}[:{max_examples}]"
    batches = list(_load(builder_name, split, data_dir, download, as_supervised=True))
    images = np.concatenate([x for x, _ in batches])[:max_examples]
    labels = np.concatenate([y for _, y in batches])[:max_examples]
    images = images.astype(np.float32)
    images /= 255.0
    return images, labels.astype(np.int32)


def load_tfds_text(name, split="train", data_dir=None, download=None, max_bytes=None):
    """Load a text dataset's "text" feature from tfds as one UTF-8 `bytes`.

    `name` is one of `TEXT_DATASETS`; `split` is a tfds split string ("train",
    "test", and "validation" for tiny_shakespeare). Examples are joined with
    b"\\n" (tiny_shakespeare has a single example per split). `max_bytes`
    stops reading once that many bytes are collected and truncates to it,
    possibly mid-character.
    """
    _check_name(name, TEXT_DATASETS)
    pieces, size = [], 0
    for batch in _load(name, split, data_dir, download):
        for text in batch["text"]:
            pieces.append(text)
            size += len(text) + 1
        if max_bytes is not None and size >= max_bytes:
            break
    return b"\n".join(pieces)[:max_bytes]
