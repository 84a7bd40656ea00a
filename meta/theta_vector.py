"""Theta as one flat float32 vector, the space evolution strategies perturb.

The vector holds every leaf of theta in checkpoint file order
(`keras_velo.theta.flatten_theta`), each raveled. `ThetaLayout` maps a
vector back to the nested dict `velo_update` takes; that mapping is slices
and reshapes, so it runs inside `jax.jit` on a traced vector.
"""

import dataclasses
import math

import numpy as np

from keras_velo.theta import flatten_theta, unflatten_theta, validate_theta


@dataclasses.dataclass(frozen=True)
class ThetaLayout:
    """Leaf paths and shapes, in vector order."""

    paths: tuple
    shapes: tuple

    @classmethod
    def of(cls, theta):
        validate_theta(theta, source="theta to meta-train")
        flat = flatten_theta(theta)
        return cls(tuple(flat), tuple(tuple(np.shape(leaf)) for leaf in flat.values()))

    @property
    def size(self):
        return sum(math.prod(shape) for shape in self.shapes)

    def to_vector(self, theta):
        """numpy float32 `[size]` holding `theta`'s leaves."""
        flat = flatten_theta(theta)
        if tuple(flat) != self.paths:
            raise ValueError("theta's leaves do not match this layout (a different VeLO size?).")
        return np.concatenate([np.asarray(flat[p], np.float32).ravel() for p in self.paths])

    def to_theta(self, vector):
        """The nested theta dict whose leaves are slices of `vector` (numpy or JAX)."""
        if vector.shape != (self.size,):
            raise ValueError(f"theta vector must have shape ({self.size},), got {vector.shape}.")
        leaves, start = {}, 0
        for path, shape in zip(self.paths, self.shapes):
            size = math.prod(shape)
            leaves[path] = vector[start : start + size].reshape(shape)
            start += size
        return unflatten_theta(leaves)
