"""keras-velo: VeLO, Google's learned optimizer, for Keras 3 on JAX, TensorFlow and PyTorch."""

from keras_velo import callbacks
from keras_velo.callbacks import VeLOCallback, VeLOMonitor
from keras_velo.checkpoint import read_checkpoint, write_checkpoint
from keras_velo.compilation_cache import enable_compilation_cache
from keras_velo.health import NonFiniteTrainingError
from keras_velo.integration import attach
from keras_velo.optimizer import VeLO, find_velo
from keras_velo.prefab import plan_horizon, prefab_update
from keras_velo.pretrained import (
    PUBLISHED_WEIGHTS,
    WeightsUnavailableError,
    resolve_weights,
)
from keras_velo.theta import CheckpointError, ThetaError, init_theta, validate_theta
from keras_velo.state_view import TensorState, tensor_states
from keras_velo.update import StepDiagnostics, VeLOState, init_state, velo_update

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
