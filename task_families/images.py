"""Image transforms that turn a raw dataset into a task's input: resize, colourise, pad.

All functions take and return float32 numpy arrays in [0, 1], channels last.
"""

import numpy as np


def area_resize_matrix(in_size, out_size):
    """`[out_size, in_size]` matrix averaging the input pixels each output pixel covers.

    Down-sampling averages (anti-aliased); up-sampling repeats pixels.
    """
    scale = in_size / out_size
    matrix = np.zeros((out_size, in_size), np.float64)
    for j in range(out_size):
        start, stop = j * scale, (j + 1) * scale
        for i in range(int(np.floor(start)), int(np.ceil(stop))):
            matrix[j, i] = min(stop, i + 1) - max(start, i)
    return (matrix / matrix.sum(axis=1, keepdims=True)).astype(np.float32)


def resize(images, size):
    """`[n, h, w, c]` -> `[n, size, size, c]` by separable area averaging."""
    n, height, width, channels = images.shape
    if (height, width) == (size, size):
        return images
    rows = area_resize_matrix(height, size)
    cols = area_resize_matrix(width, size)
    return np.einsum("ah,nhwc,bw->nabc", rows, images, cols, optimize=True).astype(np.float32)


def colourise(images, seed):
    """Greyscale `[n, h, w, 1]` -> colour `[n, h, w, 3]`: a random ink and paper colour per image.

    `x * ink + (1 - x) * paper`, colours uniform in [0, 1]^3 from `seed`, so the
    class is still carried by the shape while the network must ignore colour.
    """
    rng = np.random.default_rng(seed)
    ink = rng.uniform(size=(len(images), 1, 1, 3)).astype(np.float32)
    paper = rng.uniform(size=(len(images), 1, 1, 3)).astype(np.float32)
    return images * ink + (1.0 - images) * paper


def pad(images, amount):
    """Zero-pad `amount` pixels on every side of `[n, h, w, c]`."""
    if amount == 0:
        return images
    return np.pad(images, ((0, 0), (amount, amount), (amount, amount), (0, 0)))
