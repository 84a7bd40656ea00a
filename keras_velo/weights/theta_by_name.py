"""Saving VeLO's bundled weights by name instead of by value.

VeLO keeps theta in optimizer variables, so by default every `.keras`
file, `save_weights` file and `BackupAndRestore` backup carries its 9.3 MB.
For `weights="bundled"` that is needless: the weights ship with the
package. `VeLO.save_own_variables` then writes every other variable as
Keras would (under the same keys) plus a fingerprint of theta (SHA-256
of its leaves), and `VeLO.load_own_variables` checks that the bundled
weights installed now have that fingerprint before restoring the rest.
A model saved with another version of the bundled weights fails to load
with an error that says so, rather than resuming with different weights.

Every other theta (`"velo"`, which may not be cached where the model is
loaded; a path; a dict; `None`; bundled weights modified after
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
def bundled_fingerprint():
    """The fingerprint of the bundled weights installed with this package."""
    from keras_velo.maths.theta import flatten_theta
    from keras_velo.weights.pretrained import resolve_weights

    theta, _ = resolve_weights("bundled")
    return bytes(fingerprint(flatten_theta(theta)))
