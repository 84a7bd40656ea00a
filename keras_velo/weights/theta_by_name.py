"""Saving the weights keras-velo ships by fingerprint instead of by value.

VeLO keeps theta in optimizer variables, so by default every `.keras`
file, `save_weights` file and `BackupAndRestore` backup carries its 9.3 MB.
For a theta shipped inside the package (`weights="bundled"`,
`"bootstrap"`: `pretrained.BUNDLED_WEIGHTS`) that is needless.
`VeLO.save_own_variables` then writes every other variable as Keras would
(under the same keys) plus a fingerprint of theta (SHA-256 of its
leaves), and `VeLO.load_own_variables` restores the shipped theta with
that fingerprint, whatever name it ships under now: a model saved when
`"bundled"` was the bootstrap loads after `"bundled"` has become another
theta. A fingerprint that no shipped theta has (a model saved with weights
this version does not ship) fails to load with an error that says so,
rather than resuming with different weights.

Every other theta (`"velo"`, which may not be cached where the model is
loaded; a path; a dict; `None`; shipped weights modified after
construction) travels by value, as before.
"""

import functools
import hashlib

import numpy as np

FINGERPRINT_KEY = "bundled_theta_sha256"
"""The store key of the fingerprint; its presence means theta was saved by name."""


def fingerprint(flat_theta):
    """SHA-256 (as a `uint8[32]` array) of `{path: array}` theta, leaves in path order."""
    digest = hashlib.sha256()
    for path in sorted(flat_theta):
        value = np.ascontiguousarray(np.asarray(flat_theta[path], np.float32))
        digest.update("/".join(path).encode())
        digest.update(str(value.shape).encode())
        digest.update(value.tobytes())
    return np.frombuffer(digest.digest(), np.uint8).copy()


@functools.lru_cache(maxsize=1)
def shipped_fingerprints():
    """`{fingerprint bytes: weights name}` of every theta shipped in this package.

    Two names that ship the same theta map to the first of them in
    `BUNDLED_WEIGHTS` order.
    """
    from keras_velo.maths.theta import flatten_theta
    from keras_velo.weights.pretrained import BUNDLED_WEIGHTS, resolve_weights

    found = {}
    for name in BUNDLED_WEIGHTS:
        theta, _ = resolve_weights(name)
        found.setdefault(bytes(fingerprint(flatten_theta(theta))), name)
    return found


def shipped_name(value):
    """The name a theta with fingerprint `value` (bytes) ships under here, or None."""
    return shipped_fingerprints().get(bytes(value))
