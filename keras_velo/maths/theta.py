"""The structure of VeLO's learned weights (theta).

theta is a nested dict of float32 numpy arrays, laid out exactly like the
official checkpoint file (spec §3). For `H = lstm_hidden_size` (512) and
`K = num_param_inits` (256):

| leaf path | shape | role |
|---|---|---|
| `rnn_params/linear/{w,b}` | (30, H), (H,) | mix layer A (computed, output unused) |
| `rnn_params/linear_1/{w,b}` | (30, H), (H,) | mix layer B (cross-tensor max) |
| `rnn_params/linear_2/{w,b}` | (30, H), (H,) | mix layer C |
| `rnn_params/rnn/linear/{w,b}` | (2H, 4H), (4H,) | LSTM gates (`rnn/linear` is one key) |
| `rnn_params/rnn_to_controls/{w,b}` | (H, K), (K,) | mixing-coefficient head |
| `rnn_params/step_size/{w,b}` | (H, 1), (1,) | per-tensor step multiplier head |
| `lstm_init_state/{hidden,cell}` | (1, H) each | initial LSTM state |
| `ff_mod_stack/~/w0__i`, i=0..13 | (K, c_i, 4) | first MLP layer, one block per input group |
| `ff_mod_stack/~/{b0,w1,b1,w2,b2}` | (K,4), (K,4,4), (K,4), (K,4,3), (K,3) | rest of the MLP bank |

33 leaves; 2,320,385 values for H=512, K=256.

Example:

    >>> theta = init_theta(seed=0)
    >>> theta["rnn_params"]["rnn/linear"]["w"].shape
    (1024, 2048)
    >>> theta_num_parameters(theta)
    2320385
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

NUM_TENSOR_FEATURES = 30
"""Width of the per-tensor feature vector fed to the hypernetwork (spec §5.4)."""

MLP_INPUT_GROUP_WIDTHS = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)
"""Channel widths c_i of the 14 per-parameter MLP input groups (sum 30, spec §5.8)."""

MLP_HIDDEN_SIZE = 4
MLP_OUTPUT_SIZE = 3
DEFAULT_LSTM_HIDDEN_SIZE = 512
DEFAULT_NUM_PARAM_INITS = 256

# Standard deviations of the MLP bank's truncated-normal init (spec §3).
_MLP_FIRST_LAYER_STDDEV = 1.0 / math.sqrt(NUM_TENSOR_FEATURES)
_MLP_DEEPER_LAYER_STDDEV = 0.5
_TRUNCATION = 2.0  # truncated normal is cut at ±2 standard deviations, as in haiku

_REMEDY = (
    "Re-download the checkpoint, or pass a checkpoint written by "
    "learned_optimization or keras_velo.write_checkpoint."
)

Path = tuple[str, ...]


class CheckpointError(ValueError):
    """A checkpoint or theta could not be read or is not a valid VeLO theta.

    This is the error to catch around anything that loads weights: file
    problems, corrupt files, wrong structure and failed downloads all derive
    from it.
    """


class ThetaError(CheckpointError):
    """A theta has missing, extra, misshapen, non-float or non-finite leaves."""


def leaf_name(path: Path) -> str:
    """Slash-joined name of a leaf path, for messages.

    >>> leaf_name(("rnn_params", "rnn/linear", "w"))
    'rnn_params/rnn/linear/w'
    """
    return "/".join(str(key) for key in path)


def theta_shapes(
    lstm_hidden_size: int = DEFAULT_LSTM_HIDDEN_SIZE,
    num_param_inits: int = DEFAULT_NUM_PARAM_INITS,
) -> dict[Path, tuple[int, ...]]:
    """Shape of every theta leaf, keyed by leaf path, in checkpoint file order.

    File order is sorted keys at each level, except `lstm_init_state`, whose
    leaves come in namedtuple order (hidden, cell).

    >>> theta_shapes()[("rnn_params", "rnn/linear", "w")]
    (1024, 2048)
    >>> sum(math.prod(s) for s in theta_shapes().values())
    2320385
    """
    hidden, inits = int(lstm_hidden_size), int(num_param_inits)
    if hidden < 1 or hidden != lstm_hidden_size:
        raise ValueError(f"lstm_hidden_size must be a positive int, got {lstm_hidden_size!r}")
    if inits < 1 or inits != num_param_inits:
        raise ValueError(f"num_param_inits must be a positive int, got {num_param_inits!r}")
    mlp = {
        "b0": (inits, MLP_HIDDEN_SIZE),
        "b1": (inits, MLP_HIDDEN_SIZE),
        "b2": (inits, MLP_OUTPUT_SIZE),
        "w1": (inits, MLP_HIDDEN_SIZE, MLP_HIDDEN_SIZE),
        "w2": (inits, MLP_HIDDEN_SIZE, MLP_OUTPUT_SIZE),
    }
    for i, width in enumerate(MLP_INPUT_GROUP_WIDTHS):
        mlp[f"w0__{i}"] = (inits, width, MLP_HIDDEN_SIZE)
    linears = {
        "linear": (NUM_TENSOR_FEATURES, hidden),
        "linear_1": (NUM_TENSOR_FEATURES, hidden),
        "linear_2": (NUM_TENSOR_FEATURES, hidden),
        "rnn/linear": (2 * hidden, 4 * hidden),
        "rnn_to_controls": (hidden, inits),
        "step_size": (hidden, 1),
    }
    shapes: dict[Path, tuple[int, ...]] = {}
    for key in sorted(mlp):
        shapes[("ff_mod_stack", "~", key)] = mlp[key]
    shapes[("lstm_init_state", "hidden")] = (1, hidden)
    shapes[("lstm_init_state", "cell")] = (1, hidden)
    for layer in sorted(linears):
        w_shape = linears[layer]
        shapes[("rnn_params", layer, "b")] = (w_shape[1],)
        shapes[("rnn_params", layer, "w")] = w_shape
    return shapes


def flatten_theta(theta: Mapping) -> dict[Path, object]:
    """Nested dict -> `{leaf path tuple: leaf}`, in the dicts' own order.

    Anything that is not a Mapping is a leaf.

    >>> flat = flatten_theta({"a": {"b": 1, "c": {"d": 2}}})
    >>> flat
    {('a', 'b'): 1, ('a', 'c', 'd'): 2}
    """
    flat: dict[Path, object] = {}

    def visit(node, prefix: Path) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                visit(value, prefix + (key,))
        else:
            flat[prefix] = node

    visit(theta, ())
    return flat


def unflatten_theta(flat: Mapping[Path, object]) -> dict:
    """`{leaf path tuple: leaf}` -> nested dict (inverse of `flatten_theta`).

    >>> unflatten_theta({("a", "b"): 1, ("a", "c", "d"): 2})
    {'a': {'b': 1, 'c': {'d': 2}}}
    """
    nested: dict = {}
    for path, leaf in flat.items():
        if not path:
            raise ValueError("unflatten_theta: empty leaf path ()")
        node = nested
        for depth, key in enumerate(path[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(
                    f"unflatten_theta: {leaf_name(path[: depth + 1])!r} is both a "
                    f"leaf and a prefix of {leaf_name(path)!r}"
                )
        if path[-1] in node:
            raise ValueError(f"unflatten_theta: {leaf_name(path)!r} appears twice")
        node[path[-1]] = leaf
    return nested


def theta_num_parameters(theta: Mapping) -> int:
    """Total number of values over all leaves (2,320,385 for the default VeLO)."""
    return int(sum(np.size(leaf) for leaf in flatten_theta(theta).values()))


def _truncated_normal(rng: np.random.Generator, shape, stddev: float) -> np.ndarray:
    """N(0, stddev²) restricted to ±2·stddev, by redrawing out-of-range values.

    As in haiku, `stddev` is the scale before truncation, so the sample
    standard deviation is about 0.88·stddev.
    """
    sample = rng.standard_normal(shape)
    outside = np.abs(sample) > _TRUNCATION
    while outside.any():
        sample[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(sample) > _TRUNCATION
    return (sample * stddev).astype(np.float32)


def init_theta(
    seed: int,
    lstm_hidden_size: int = DEFAULT_LSTM_HIDDEN_SIZE,
    num_param_inits: int = DEFAULT_NUM_PARAM_INITS,
) -> dict:
    """The reference random init of theta (spec §3), drawn with numpy.

    * `rnn_params/*/w`: truncated normal (±2σ), σ = 1/sqrt(fan_in), fan_in = w.shape[0].
    * `ff_mod_stack/~/w0__i`: truncated normal, σ = 1/sqrt(30); `w1`, `w2`: σ = 1/2.
    * All biases and `lstm_init_state` are zero.

    Same distribution as `HyperV2.init`, not the same numbers. Deterministic
    for a given `seed` (`np.random.default_rng(seed)`).

    >>> theta = init_theta(seed=0)
    >>> float(theta["rnn_params"]["linear"]["b"].sum())
    0.0
    """
    rng = np.random.default_rng(seed)
    flat = {}
    for path, shape in theta_shapes(lstm_hidden_size, num_param_inits).items():
        group, key = path[0], path[-1]
        if group == "rnn_params" and key == "w":
            leaf = _truncated_normal(rng, shape, 1.0 / math.sqrt(shape[0]))
        elif group == "ff_mod_stack" and key.startswith("w0__"):
            leaf = _truncated_normal(rng, shape, _MLP_FIRST_LAYER_STDDEV)
        elif group == "ff_mod_stack" and key in ("w1", "w2"):
            leaf = _truncated_normal(rng, shape, _MLP_DEEPER_LAYER_STDDEV)
        else:  # biases and the initial LSTM state
            leaf = np.zeros(shape, np.float32)
        flat[path] = leaf
    return unflatten_theta(flat)


def _inferred_sizes(theta: Mapping, source: str) -> tuple[int, int]:
    """(H, K) read from `lstm_init_state/hidden` (1, H) and `ff_mod_stack/~/b0` (K, 4)."""
    flat = flatten_theta(theta)
    sizes = []
    for path, axis, what in (
        (("lstm_init_state", "hidden"), 1, "lstm_hidden_size"),
        (("ff_mod_stack", "~", "b0"), 0, "num_param_inits"),
    ):
        if path not in flat:
            raise ThetaError(
                f"{source}: leaf {leaf_name(path)!r} is missing, so {what} cannot be "
                f"inferred; found top-level keys {sorted(map(str, theta))}. {_REMEDY}"
            )
        shape = np.shape(flat[path])
        if len(shape) != 2 or shape[axis] < 1:
            raise ThetaError(
                f"{source}: leaf {leaf_name(path)!r} has shape {shape}, expected a "
                f"2-D array whose axis {axis} gives {what}. {_REMEDY}"
            )
        sizes.append(int(shape[axis]))
    return sizes[0], sizes[1]


def validate_theta(theta: Mapping, source: str) -> None:
    """Check that `theta` is a complete, well-formed VeLO theta; raise ThetaError if not.

    H and K are inferred from `lstm_init_state/hidden` (1, H) and
    `ff_mod_stack/~/b0` (K, 4); every leaf must then have exactly the shape
    given by `theta_shapes(H, K)`, a floating dtype and finite values, and
    there must be no extra leaves. `source` (a file path, or a phrase such as
    "in-memory theta") starts the error message.

    >>> validate_theta(init_theta(seed=0), source="example")
    """
    if not isinstance(theta, Mapping):
        raise ThetaError(
            f"{source}: theta must be a nested dict of arrays, got "
            f"{type(theta).__name__}. {_REMEDY}"
        )
    hidden, inits = _inferred_sizes(theta, source)
    expected = theta_shapes(hidden, inits)
    flat = flatten_theta(theta)
    context = (
        f"(expected shapes are for lstm_hidden_size={hidden}, num_param_inits={inits}, "
        "inferred from lstm_init_state/hidden and ff_mod_stack/~/b0)"
    )
    problems = []
    missing = [leaf_name(p) for p in expected if p not in flat]
    if missing:
        problems.append(f"missing leaves {missing}")
    extra = [leaf_name(p) for p in flat if p not in expected]
    if extra:
        problems.append(
            f"unexpected leaves {extra} (expected exactly {len(expected)} leaves)"
        )
    for path, shape in expected.items():
        if path not in flat:
            continue
        leaf = flat[path]
        found_shape = tuple(np.shape(leaf))
        if found_shape != shape:
            problems.append(
                f"leaf {leaf_name(path)!r} has shape {found_shape}, expected {shape}"
            )
            continue
        dtype = np.asarray(leaf).dtype
        if not (np.issubdtype(dtype, np.floating) or dtype.name == "bfloat16"):
            problems.append(
                f"leaf {leaf_name(path)!r} has dtype {dtype.name}, expected float32"
            )
            continue
        finite = np.isfinite(np.asarray(leaf, dtype=np.float32))
        if not finite.all():
            problems.append(
                f"leaf {leaf_name(path)!r} has {int(finite.size - finite.sum())} "
                "non-finite values (NaN or inf)"
            )
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ThetaError(
            f"{source}: not a valid VeLO theta {context}: " + "; ".join(shown) + f". {_REMEDY}"
        )
