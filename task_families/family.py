"""What a task family is: a config type, a seeded sampler, a builder and its smallest task."""

import dataclasses
import zlib
from typing import Callable

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskFamily:
    """One entry of `task_families.FAMILIES`.

    Attributes:
        name: the registry key, equal to `config_type.family`.
        config_type: the family's frozen `TaskConfig` subclass.
        sample: `sample(seed) -> config`, deterministic in `seed` on any machine.
        build: `build(config) -> Task`.
        smallest: `smallest() -> config`, the cheapest task (used by tests and CI).
        description: one line for the README and reports.
    """

    name: str
    config_type: type
    sample: Callable
    build: Callable
    smallest: Callable
    description: str


def family_rng(name, seed):
    """The sampler's generator: numpy PCG64 seeded by `(seed, crc32(name))`, stable across machines."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"sample seed must be an int >= 0, got {seed!r}.")
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


def pick(rng, options):
    """One of `options`, uniformly, as the plain Python value."""
    return options[int(rng.integers(len(options)))]
