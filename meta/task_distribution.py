"""What each member of a meta-training population trains: a task, a horizon, a parameter scale.

`sample_member_task(distribution, seed, member, episode_start)` is a pure
function of its arguments, so a worker on any machine -- or a run resumed
after a kill -- draws the same task for the same member and episode:

* the family, uniformly over `distribution.families` (BatchNorm residual
  nets, `resnet`, are one of the seven) or in proportion to
  `family_weights`, then a config of that family from
  `task_families.suites.sample_meta_training_task`, which never returns a
  held-out (canonical evaluation) task, within the FLOP budget (or, for a
  user's family, `meta.user_family`, the seed its function gets);
* the horizon (the inner run's length, the `total_steps` VeLO is told),
  log-uniform in `[min_horizon, max_horizon]`, as the anchors sample unroll
  lengths;
* the parameter scale, log-uniform in `param_scale_range` (the reference's
  `ReparamWeightsFamily` augmentation; (1, 1) turns it off);
* the seed of the task's batch order.

With `config_pool` k, the config is one of k fixed draws per family (the
horizon, scale and batch order still vary): on a CPU, where compiling a new
architecture costs more than training it for a truncation, compiled steps
are then reused. `pool_sizes` gives some families more draws than k (so
that a family with variants that matter, such as residual nets with and
without BatchNorm, is covered).
"""

import dataclasses
import math

import numpy as np

# The seven families of the first presets and of cpu-valid-v1.
ALL_FAMILIES = ("image_mlp", "image_cnn", "resnet", "transformer_lm", "rnn_lm", "autoencoder", "vae")
# With the four added where unseen models broke (task_families.registry).
WIDE_FAMILIES = ALL_FAMILIES + ("residual_net", "vit", "gpt_lm", "tabular")


@dataclasses.dataclass(frozen=True)
class TaskDistribution:
    """What members train.

    Attributes:
        families: registry names (`task_families.FAMILIES`) and/or
            `meta.user_family.UserFamily` objects.
        max_flops_per_step: budget of a registry family's sampled config.
        min_horizon, max_horizon: horizons are log-uniform in this range.
        param_scale_range: the parameter-scale augmentation's range.
        config_pool: None, or the number of fixed configs per family.
        pool_sizes: `((family name, k), ...)`: families with another number of
            fixed configs than `config_pool`.
        family_weights: `((family name, w), ...)`: families drawn w times as
            often as the others (weight 1); empty: uniform.
    """

    families: tuple
    max_flops_per_step: float
    min_horizon: int
    max_horizon: int
    param_scale_range: tuple = (1.0, 1.0)
    config_pool: int | None = None
    pool_sizes: tuple = ()
    family_weights: tuple = ()

    def __post_init__(self):
        from task_families import FAMILIES

        object.__setattr__(self, "families", tuple(self.families))
        unknown = sorted(str(f) for f in self.families if isinstance(f, str) and f not in FAMILIES)
        others = [f for f in self.families if not isinstance(f, str) and not _is_user_family(f)]
        if not self.families or unknown or others:
            raise ValueError(
                f"families must be names from {sorted(FAMILIES)} or meta.user_family.UserFamily "
                f"objects, got {self.families!r}."
            )
        if not 1 <= self.min_horizon <= self.max_horizon:
            raise ValueError(
                f"need 1 <= min_horizon <= max_horizon, got {self.min_horizon} and {self.max_horizon}."
            )
        low, high = self.param_scale_range
        if self.config_pool is not None and self.config_pool < 1:
            raise ValueError(f"config_pool must be None or >= 1, got {self.config_pool!r}.")
        object.__setattr__(self, "pool_sizes", tuple(tuple(p) for p in self.pool_sizes))
        names = [family_name(f) for f in self.families]
        for name, size in self.pool_sizes:
            if name not in names or not (isinstance(size, int) and size >= 1) or self.config_pool is None:
                raise ValueError(f"pool_sizes must pair families of this distribution with sizes >= 1 "
                                 f"(and needs config_pool), got {self.pool_sizes!r}.")
        object.__setattr__(self, "family_weights", tuple(tuple(w) for w in self.family_weights))
        for name, weight in self.family_weights:
            if name not in names or not (isinstance(weight, (int, float)) and weight > 0):
                raise ValueError(f"family_weights must pair families of this distribution with weights > 0, "
                                 f"got {self.family_weights!r}.")
        if not 0 < low <= high:
            raise ValueError(f"param_scale_range must be (low, high) with 0 < low <= high, got {self.param_scale_range!r}.")

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["families"] = [family_name(f) for f in self.families]
        for key in ("pool_sizes", "family_weights"):
            if not data[key]:  # as runs recorded it before the field existed
                del data[key]
        return data

    def family_probabilities(self):
        """The probability of drawing each of `families`, in order."""
        weights = dict(self.family_weights)
        values = np.asarray([float(weights.get(family_name(f), 1.0)) for f in self.families])
        return values / values.sum()

    def pool_configs(self):
        """Every config members can draw (one per family and pool seed); needs `config_pool`."""
        if self.config_pool is None:
            raise ValueError("a distribution without config_pool has no finite set of configs.")
        return [sample_family_config(f, seed, self.max_flops_per_step)
                for f in self.families for seed in range(self.pool_size(f))]

    def pool_size(self, family):
        """The number of fixed configs of `family` (with `config_pool`)."""
        return dict(self.pool_sizes).get(family_name(family), self.config_pool)

    def register_user_families(self):
        """Makes this distribution's user families buildable in this process."""
        from meta.user_family import register

        for family in self.families:
            if not isinstance(family, str):
                register(family)


def _is_user_family(family):
    from meta.user_family import UserFamily

    return isinstance(family, UserFamily)


def family_name(family):
    """A family's name: the registry name, or a user family's `module:function`."""
    return family if isinstance(family, str) else family.name


def sample_family_config(family, config_seed, max_flops_per_step):
    """The config (a dict) of `family` drawn from `config_seed`."""
    if not isinstance(family, str):
        return {"family": family.name, "seed": int(config_seed)}
    from task_families.suites import sample_meta_training_task

    return sample_meta_training_task(
        config_seed, families=(family,), max_flops_per_step=max_flops_per_step
    ).to_dict()


@dataclasses.dataclass(frozen=True)
class MemberTask:
    """One member's inner training problem for one episode (a JSON-friendly record)."""

    config: dict
    horizon: int
    param_scale: float
    data_seed: int


def _log_uniform(rng, low, high):
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def sample_member_task(distribution, seed, member, episode_start):
    """The task of `member` for the episode that begins at iteration `episode_start`."""
    rng = np.random.default_rng([int(seed), int(member), int(episode_start), 0x7E10])
    if distribution.family_weights:
        index = int(rng.choice(len(distribution.families), p=distribution.family_probabilities()))
    else:  # uniform, drawn as runs before family_weights drew it (they resume exactly)
        index = int(rng.integers(len(distribution.families)))
    family = distribution.families[index]
    config_seed = int(rng.integers(2**31))
    if distribution.config_pool is not None:
        config_seed %= distribution.pool_size(family)
    config = sample_family_config(family, config_seed, distribution.max_flops_per_step)
    horizon = int(round(_log_uniform(rng, distribution.min_horizon, distribution.max_horizon)))
    scale = _log_uniform(rng, *distribution.param_scale_range)
    return MemberTask(config, horizon, scale, int(rng.integers(2**31)))
