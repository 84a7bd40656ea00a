"""Real image datasets that work offline, as numpy arrays.

* Fashion-MNIST (60k/10k, 28x28 greyscale, 10 classes) from the Debian
  package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`,
  installed by the README's set-up and `.ci/run`), read from its IDX files.
  Set `KERAS_VELO_FASHION_MNIST` to read another folder with the same files.
* scikit-learn's bundled digits (1797 8x8 greyscale images, 10 classes).

Images come back as float32 in [0, 1], shape `[n, height, width]`; labels as
int32 `[n]`.
"""

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
