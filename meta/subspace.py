"""What meta-training moves: theta = theta0 + P z, for a named part of VeLO or a random subspace.

Evolution strategies with n antithetic pairs in D dimensions estimate a
gradient whose cosine with the true one is about sqrt(n / D): 0.002 for 8
pairs in all of VeLO's 2.3M weights. A `ThetaSubspace` gives the learner
a smaller vector `z` (d values, starting at 0) and maps it to a full
theta:

* `blocks`: which parts of VeLO's network may change (`BLOCKS`: the
  step-size head, the control head, the per-parameter MLP bank, the mix
  layers, the LSTM's input or recurrent weights, its biases, its initial
  state; "all" is every weight). Everything else stays at theta0.
* `dimension`: None moves every coordinate of those blocks (z holds one
  value per coordinate, so `blocks=("all",)` is full-space meta-training);
  an integer d makes z a seeded random subspace of them (Li et al., 2018,
  "Measuring the intrinsic dimension of objective landscapes", with their
  sparse projection): each coordinate j of the blocks follows one entry
  of z, `theta_j = theta0_j + s_j z[b_j]`, its bucket `b_j` and sign
  `s_j = ±1` drawn from `seed`. P is regenerated from the seed, never
  stored. A unit of z moves each of its coordinates by one unit, as in
  full space, so perturbation scales and learning rates carry over.

theta0 is the run's starting theta (`--init`), so a run's state is z and
its optimizer's state: d values each.

>>> space = ThetaSubspace(SubspaceSpec(blocks=("step_size_head",)), theta0)
>>> space.size                             # 513
>>> theta = space.theta(np.zeros(space.size, np.float32))   # == theta0
"""

import dataclasses
import functools
import hashlib
import math

import numpy as np

from keras_velo.maths.theta import flatten_theta, unflatten_theta, validate_theta


def _leaves(*paths):
    return tuple((tuple(p), None) for p in paths)


def _mlp_bank():
    from keras_velo.maths.theta import theta_shapes

    return _leaves(*[p for p in theta_shapes() if p[0] == "ff_mod_stack"])


BLOCKS = {
    # lambda, each tensor's step multiplier: `h W + b` (spec §5.5).
    "step_size_head": _leaves(("rnn_params", "step_size", "w"), ("rnn_params", "step_size", "b")),
    # The mixing coefficients of the 256 MLP sets (spec §5.7).
    "control_head": _leaves(("rnn_params", "rnn_to_controls", "w"),
                            ("rnn_params", "rnn_to_controls", "b")),
    # The per-parameter MLPs (spec §5.8-§5.9).
    "mlp_bank": None,  # filled below (needs theta_shapes)
    # The features' way into the LSTM: the max-pooled and the per-tensor mix
    # layer (the dead one, `linear`, is left out: it changes nothing).
    "mix_layers": _leaves(("rnn_params", "linear_1", "w"), ("rnn_params", "linear_1", "b"),
                          ("rnn_params", "linear_2", "w"), ("rnn_params", "linear_2", "b")),
    # The LSTM's gates: input rows (first H of `rnn/linear/w`), recurrent
    # rows (last H), and the gate biases.
    "lstm_input_weights": (((("rnn_params", "rnn/linear", "w")), (0, 1)),),
    "lstm_recurrent_weights": (((("rnn_params", "rnn/linear", "w")), (1, 2)),),
    "lstm_bias": _leaves(("rnn_params", "rnn/linear", "b")),
    "lstm_init_state": _leaves(("lstm_init_state", "hidden"), ("lstm_init_state", "cell")),
}
BLOCKS["mlp_bank"] = _mlp_bank()


@dataclasses.dataclass(frozen=True)
class SubspaceSpec:
    """Which part of theta a run moves, and how (see the module docstring).

    Attributes:
        blocks: names from `BLOCKS`, or ("all",) for every leaf (the dead
            mix layer included, as full-space ES always did).
        dimension: None for every coordinate of the blocks, else the size
            d of a seeded random subspace of them.
        seed: the random subspace's seed (ignored without `dimension`).
    """

    blocks: tuple = ("all",)
    dimension: int | None = None
    seed: int = 0

    def __post_init__(self):
        blocks = tuple(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        unknown = [b for b in blocks if b != "all" and b not in BLOCKS]
        if not blocks or unknown or ("all" in blocks and len(blocks) > 1):
            raise ValueError(
                f"blocks must be ('all',) or names from {sorted(BLOCKS)}, got {blocks!r}."
            )
        if self.dimension is not None and not (
            isinstance(self.dimension, int) and not isinstance(self.dimension, bool)
            and self.dimension >= 1
        ):
            raise ValueError(f"dimension must be None or an int >= 1, got {self.dimension!r}.")

    def to_dict(self):
        return {"blocks": list(self.blocks), "dimension": self.dimension, "seed": self.seed}

    @classmethod
    def from_dict(cls, data):
        return cls(tuple(data["blocks"]), data["dimension"], data["seed"])

    def describe(self):
        where = "all of theta" if self.blocks == ("all",) else "+".join(self.blocks)
        if self.dimension is None:
            return where
        return f"random {self.dimension}-dim subspace of {where} (seed {self.seed})"


def _row_mask(shape, rows):
    """Boolean mask of a leaf's rows `[start, stop) * shape[0] / 2` (the LSTM's halves)."""
    half = shape[0] // 2
    mask = np.zeros(shape, bool)
    mask[rows[0] * half : rows[1] * half] = True
    return mask


class ThetaSubspace:
    """`theta(z) = theta0 + P z` (see the module docstring).

    Args:
        spec: `SubspaceSpec`.
        theta0: the starting theta (nested dict of numpy arrays).

    Attributes:
        size: d, the length of z.
        variable_paths: the leaves that depend on z (in file order); the
            others are `constant_leaves`, theta0's values.
    """

    def __init__(self, spec, theta0):
        validate_theta(theta0, source="theta0 of a subspace")
        self.spec = spec
        flat = {p: np.asarray(v, np.float32) for p, v in flatten_theta(theta0).items()}
        self.paths = tuple(flat)
        masks = self._masks(flat)
        self.variable_paths = tuple(p for p in self.paths if p in masks)
        self.constant_leaves = {p: flat[p] for p in self.paths if p not in masks}
        self._theta0 = {p: flat[p] for p in self.variable_paths}
        self._maps = {}  # path -> (index [leaf size] into z with a zero slot at d, sign or None)
        rng = None if spec.dimension is None else np.random.default_rng([spec.seed, 0x5B5])
        offset = 0
        for path in self.variable_paths:
            mask = masks[path].ravel()
            count = int(mask.sum())
            if spec.dimension is None:
                positions = offset + np.arange(count)
                offset += count
                sign = None
            else:
                positions = rng.integers(0, spec.dimension, count)
                sign = np.zeros(mask.size, np.float32)
                sign[mask] = rng.choice(np.asarray([-1.0, 1.0], np.float32), count)
            index = np.full(mask.size, -1, np.int64)
            index[mask] = positions
            whole = bool(mask.all()) and sign is None
            self._maps[path] = (None if whole else index, sign, int(positions[0]) if whole else None)
        self.size = offset if spec.dimension is None else spec.dimension
        for path, (index, sign, start) in list(self._maps.items()):
            if index is not None:
                index = np.where(index < 0, self.size, index).astype(np.int32)
            self._maps[path] = (index, sign, start)

    def _masks(self, flat):
        if self.spec.blocks == ("all",):
            return {p: np.ones(v.shape, bool) for p, v in flat.items()}
        masks = {}
        for name in self.spec.blocks:
            for path, rows in BLOCKS[name]:
                shape = flat[path].shape
                mask = np.ones(shape, bool) if rows is None else _row_mask(shape, rows)
                masks[path] = masks.get(path, np.zeros(shape, bool)) | mask
        return masks

    @property
    def fingerprint(self):
        """SHA-256 of theta0 and the spec: what `--resume` checks."""
        digest = hashlib.sha256(repr(self.spec.to_dict()).encode())
        for path in self.paths:
            digest.update("/".join(path).encode())
            leaf = self.constant_leaves.get(path, self._theta0.get(path))
            digest.update(np.ascontiguousarray(leaf).tobytes())
        return digest.hexdigest()

    def zeros(self):
        return np.zeros(self.size, np.float32)

    def variable_leaves(self, z):
        """`{path: theta0 + (P z) there}` for the variable leaves (numpy or JAX, traceable)."""
        xp = _array_module(z)
        padded = None
        leaves = {}
        for path in self.variable_paths:
            index, sign, start = self._maps[path]
            base = self._theta0[path]
            if index is None:
                offset = z[start : start + base.size]
            else:
                if padded is None:
                    padded = xp.concatenate([z, xp.zeros((1,), z.dtype)])
                offset = padded[index]
                if sign is not None:
                    offset = offset * sign
            leaves[path] = base + offset.reshape(base.shape)
        return leaves

    def theta(self, z):
        """The full nested theta at z (numpy or JAX)."""
        leaves = dict(self.constant_leaves)
        leaves.update(self.variable_leaves(z))
        return unflatten_theta({p: leaves[p] for p in self.paths})

    def merge(self, variable, constant=None):
        """A nested theta from variable leaves (and the constant ones, default theta0's)."""
        leaves = dict(self.constant_leaves if constant is None else constant)
        leaves.update(variable)
        return unflatten_theta({p: leaves[p] for p in self.paths})

    def pullback(self, z, cotangents):
        """`P^T` applied to cotangents of the variable leaves: `[d]` gradient with respect to z."""
        import jax

        _, vjp = jax.vjp(self.variable_leaves, z)
        (gradient,) = vjp({p: cotangents[p] for p in self.variable_paths})
        return gradient


def _array_module(x):
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp

    return jnp


@functools.lru_cache(maxsize=None)
def block_sizes():
    """`{block name: coordinates}` for the default VeLO (H=512, K=256)."""
    from keras_velo.maths.theta import theta_shapes

    shapes = theta_shapes()
    sizes = {}
    for name, entries in BLOCKS.items():
        total = 0
        for path, rows in entries:
            size = math.prod(shapes[path])
            total += size if rows is None else size * (rows[1] - rows[0]) // 2
        sizes[name] = total
    return sizes
