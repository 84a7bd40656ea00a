"""keras-velo: VeLO, Google's learned optimizer, for Keras 3 on JAX, TensorFlow and PyTorch.

The names in `__all__` below are the public API: import them from
`keras_velo` (and the callbacks also from `keras_velo.callbacks`); the
modules inside the subpackages may move between versions. The implementation lives in four
subpackages, imported one way (`keras_velo/README.md`, "How it is built"):
`maths` (VeLO's computation per tensor and theta's structure) <- `packed`
(the packed layout: every tensor's update as one program) <- `training`
(the Keras optimizer, its state, guards and `fit` integration), with
`weights` (checkpoint files, published and bundled weights) used by
`training` and meta-training.
"""

import sys

from keras_velo.maths.theta import (
    CheckpointError,
    ThetaError,
    init_theta,
    validate_theta,
)
from keras_velo.packed.prefab import plan_horizon, prefab_update
from keras_velo.packed.state_view import TensorState, tensor_states
from keras_velo.packed.update import StepDiagnostics, VeLOState, init_state, velo_update
from keras_velo.training import callbacks
from keras_velo.training.callbacks import VeLOCallback, VeLOMonitor
from keras_velo.training.compilation_cache import enable_compilation_cache
from keras_velo.training.health import NonFiniteTrainingError
from keras_velo.training.integration import attach
from keras_velo.training.optimizer import VeLO, find_velo
from keras_velo.weights.checkpoint import read_checkpoint, write_checkpoint
from keras_velo.weights.pretrained import (
    PUBLISHED_WEIGHTS,
    WeightsUnavailableError,
    resolve_weights,
)

sys.modules.setdefault("keras_velo.callbacks", callbacks)  # public: `keras_velo.callbacks`

__all__ = [
    "NonFiniteTrainingError",
    "VeLOCallback",
    "VeLOMonitor",
    "attach",
    "enable_compilation_cache",
    "callbacks",
    "find_velo",
    "CheckpointError",
    "PUBLISHED_WEIGHTS",
    "StepDiagnostics",
    "TensorState",
    "ThetaError",
    "VeLO",
    "VeLOState",
    "WeightsUnavailableError",
    "init_state",
    "init_theta",
    "plan_horizon",
    "prefab_update",
    "read_checkpoint",
    "resolve_weights",
    "tensor_states",
    "validate_theta",
    "velo_update",
    "write_checkpoint",
]
