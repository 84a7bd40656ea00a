"""Real datasets that work offline, as numpy arrays, and the registry tasks name them by.

* `fashion_mnist`: Fashion-MNIST (60k/10k, 28x28 greyscale, 10 classes) from
  the Debian package `dataset-fashion-mnist` (`apt-get install
  dataset-fashion-mnist`, installed by the README's set-up and `.ci/run`),
  read from its IDX files. Set `KERAS_VELO_FASHION_MNIST` to read another
  folder with the same files.
* `digits`: scikit-learn's bundled digits (1797 8x8 greyscale images, 10
  classes), split 80/20 with a fixed seed.
* `mnist1d`: MNIST-1D (Greydanus, 2020; PyPI `mnist1d`), 4000/1000
  40-sample signals in 10 classes, generated procedurally with the package's
  default arguments (no download).
* `python_stdlib`: byte-level text from the CPython standard library sources
  (see `task_families.text`).
* `tfds:<name>`: the canonical tensorflow-datasets names (`tfds:mnist`,
  `tfds:fashion_mnist`, `tfds:cifar10`, `tfds:cifar100`,
  `tfds:imagenet_resized`, `tfds:lm1b`, `tfds:tiny_shakespeare`) for users
  with internet or a prepared `TFDS_DATA_DIR` (see
  `task_families.tfds_sources`). Never sampled by default: they need network.

Raw images come back as float32 in [0, 1], shape `[n, height, width]`;
labels as int32 `[n]`. `load_images` returns a task's view: resized,
colourised or padded, `[n, h, w, c]`.
"""

import dataclasses
import functools
import gzip
import os
import pathlib

import numpy as np

FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def fashion_mnist_dir():
    return pathlib.Path(os.environ.get("KERAS_VELO_FASHION_MNIST", FASHION_MNIST_DIR))


def has_fashion_mnist():
    return (fashion_mnist_dir() / "train-images-idx3-ubyte.gz").exists()


def load_fashion_mnist(split="train"):
    """`(images [n, 28, 28] float32, labels [n] int32)` for split "train" or "test"."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    folder = fashion_mnist_dir()
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {folder}. Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or point "
            "KERAS_VELO_FASHION_MNIST at a folder holding the four IDX .gz files."
        )
    images = _read_idx(images_path).astype(np.float32) / 255.0
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int32)
    return images, labels


def load_digits(split="train", test_fraction=0.2, seed=0):
    """scikit-learn's 8x8 digits, `(images [n, 8, 8] float32 in [0,1], labels int32)`.

    Split deterministically into train/test by `seed`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)
    order = np.random.default_rng(seed).permutation(len(labels))
    num_test = int(round(test_fraction * len(labels)))
    chosen = order[num_test:] if split == "train" else order[:num_test]
    return images[chosen], labels[chosen]


def load_mnist1d(split="train"):
    """MNIST-1D `(signals [n, 40] float32, labels [n] int32)`, generated offline."""
    data = _mnist1d()
    if split == "train":
        return data["x"], data["y"]
    return data["x_test"], data["y_test"]


@functools.lru_cache(maxsize=1)
def _mnist1d():
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as error:
        raise ImportError("The mnist1d dataset needs `pip install mnist1d==0.0.2.post1`.") from error
    data = make_dataset(get_dataset_args())  # procedural, seeded by the package's defaults
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int32),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int32),
    }


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a task needs to know about a dataset before loading it."""

    name: str
    modality: str  # "image", "vector" or "text"
    num_classes: int  # 0 for text (vocabulary is bytes)
    native_size: int  # image side, vector length, or 0 for text
    native_channels: int  # 1 or 3 for images, 0 otherwise


DATASETS = {
    "fashion_mnist": DatasetInfo("fashion_mnist", "image", 10, 28, 1),
    "digits": DatasetInfo("digits", "image", 10, 8, 1),
    "mnist1d": DatasetInfo("mnist1d", "vector", 10, 40, 0),
    "python_stdlib": DatasetInfo("python_stdlib", "text", 0, 0, 0),
}
TFDS_DATASETS = {
    "tfds:mnist": DatasetInfo("tfds:mnist", "image", 10, 28, 1),
    "tfds:fashion_mnist": DatasetInfo("tfds:fashion_mnist", "image", 10, 28, 1),
    "tfds:cifar10": DatasetInfo("tfds:cifar10", "image", 10, 32, 3),
    "tfds:cifar100": DatasetInfo("tfds:cifar100", "image", 100, 32, 3),
    "tfds:imagenet_resized": DatasetInfo("tfds:imagenet_resized", "image", 1000, 32, 3),
    "tfds:lm1b": DatasetInfo("tfds:lm1b", "text", 0, 0, 0),
    "tfds:tiny_shakespeare": DatasetInfo("tfds:tiny_shakespeare", "text", 0, 0, 0),
}


def dataset_info(name):
    if name in DATASETS:
        return DATASETS[name]
    if name in TFDS_DATASETS:
        return TFDS_DATASETS[name]
    raise ValueError(
        f"Unknown dataset {name!r}. Offline datasets: {sorted(DATASETS)}; "
        f"tensorflow-datasets (need internet or TFDS_DATA_DIR): {sorted(TFDS_DATASETS)}."
    )


def check_dataset(name, modalities):
    """Raise ValueError if `name` is unknown or not one of `modalities`."""
    info = dataset_info(name)
    if info.modality not in modalities:
        raise ValueError(
            f"Dataset {name!r} holds {info.modality} data; this family reads {list(modalities)}. "
            f"Pick one of {sorted(n for n, i in {**DATASETS, **TFDS_DATASETS}.items() if i.modality in modalities)}."
        )
    return info


def _raw_images(name, split):
    """`(images [n, h, w, c] float32 in [0, 1], labels int32)` at native resolution."""
    if name == "fashion_mnist":
        images, labels = load_fashion_mnist(split)
    elif name == "digits":
        images, labels = load_digits(split)
    elif name.startswith("tfds:"):
        from task_families import tfds_sources

        return tfds_sources.load_tfds_images(name[len("tfds:"):], split)
    else:
        raise ValueError(f"{name!r} is not an image dataset.")
    return images[..., None], labels


@functools.lru_cache(maxsize=8)
def load_images(name, split, image_size, channels, padding=0):
    """A task's image view: `(images [n, s, s, channels] float32 in [0, 1], labels int32)`.

    `s = image_size + 2 * padding`. Greyscale sources asked for 3 channels are
    colourised (`images.colourise`, fixed seed per split); colour sources asked
    for 1 channel are averaged to grey. Results are cached per process and
    read-only.
    """
    from task_families import images as transforms

    images, labels = _raw_images(name, split)
    images = transforms.resize(images, image_size)
    if channels == 3 and images.shape[-1] == 1:
        images = transforms.colourise(images, seed=0 if split == "train" else 1)
    elif channels == 1 and images.shape[-1] == 3:
        images = images.mean(axis=-1, keepdims=True)
    images = np.ascontiguousarray(transforms.pad(images, padding), np.float32)
    images.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=4)
def load_vectors(name, split):
    """`(vectors [n, d] float32, labels int32)` of a vector dataset (mnist1d)."""
    if name != "mnist1d":
        raise ValueError(f"{name!r} is not a vector dataset.")
    return load_mnist1d(split)


@functools.lru_cache(maxsize=4)
def load_tokens(name, split):
    """`uint8 [n]` byte tokens of a text dataset's split ("train" or "test")."""
    from task_families import text

    if name == "python_stdlib":
        return text.split_tokens(text.python_stdlib_bytes(), split)
    if name.startswith("tfds:"):
        from task_families import tfds_sources

        return np.frombuffer(tfds_sources.load_tfds_text(name[len("tfds:"):], split), np.uint8)
    raise ValueError(f"{name!r} is not a text dataset.")
