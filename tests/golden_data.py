"""Reading `shared/golden/` for the tests, and the golden tolerance.

The golden files keep the reference's layout (decay axis last); the helpers
here convert to keras-velo's (decay axis first, rms without its last axis).
"""

import functools
import json

import numpy as np

from conftest import GOLDEN_DIR
from keras_velo.weights.checkpoint import read_checkpoint

TRAJECTORIES = [
    "traj_random_n100",
    "traj_random_n1000",
    "traj_random_n100_wd1e-2",
    "traj_random_n300000_accum",
    "traj_perturbed_n100",
    "traj_perturbed_n1000",
]
NUM_UPDATES = 30


@functools.lru_cache(maxsize=None)
def index():
    return json.loads((GOLDEN_DIR / "index.json").read_text())


def leaf_order():
    return index()["pytree"]["leaf_order"]


@functools.lru_cache(maxsize=None)
def theta(name):
    return read_checkpoint(GOLDEN_DIR / name)


@functools.lru_cache(maxsize=None)
def load(name):
    with np.load(GOLDEN_DIR / f"{name}.npz") as data:
        return dict(data)


def trajectory_info(name):
    return index()["trajectories"][f"{name}.npz"]


def displacement_tolerance(name):
    """Fraction of the 30-step displacement allowed (golden README, spec §11)."""
    return 3e-2 if "accum" in name else 1e-3


def param_tolerance(reference_t, reference_first, reference_last, fraction):
    """`2 ulp(|p_ref[t]|) + fraction * max|p_ref[T] - p_ref[0]|`, elementwise.

    No absolute floor: zero-initialised biases move only ~1e-7 in 30 steps.
    """
    displacement = np.max(np.abs(reference_last - reference_first))
    return 2 * np.spacing(np.abs(reference_t)) + fraction * displacement


def to_keras_velo_layout(slot, value):
    """Golden state slot (decay last) -> keras-velo layout (decay first)."""
    if slot == "rms":
        return value[..., 0]
    return np.moveaxis(value, -1, 0)
