"""What each member of a meta-training population trains: a task, a horizon, a parameter scale.

`sample_member_task(distribution, seed, member, episode_start)` is a pure
function of its arguments, so a worker on any machine -- or a run resumed
after a kill -- draws the same task for the same member and episode:

* the family, uniformly over `distribution.families` (BatchNorm residual
  nets, `resnet`, are one of the seven), then a config of that family from
  `task_families.suites.sample_meta_training_task`, which never returns a
  held-out (canonical evaluation) task, within the FLOP budget;
* the horizon (the inner run's length, the `total_steps` VeLO is told),
  log-uniform in `[min_horizon, max_horizon]`, as the anchors sample unroll
  lengths;
* the parameter scale, log-uniform in `param_scale_range` (the reference's
  `ReparamWeightsFamily` augmentation; (1, 1) turns it off);
* the seed of the task's batch order.

With `config_pool` k, the config is one of k fixed draws per family (the
horizon, scale and batch order still vary): on a CPU, where compiling a new
architecture costs more than training it for a truncation, compiled steps
are then reused.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class TaskDistribution:
    families: tuple
    max_flops_per_step: float
    min_horizon: int
    max_horizon: int
    param_scale_range: tuple = (1.0, 1.0)
    config_pool: int | None = None

    def __post_init__(self):
        from task_families import FAMILIES

        unknown = sorted(set(self.families) - set(FAMILIES))
        if not self.families or unknown:
            raise ValueError(f"families must be a non-empty subset of {sorted(FAMILIES)}, got {self.families!r}.")
        if not 1 <= self.min_horizon <= self.max_horizon:
            raise ValueError(
                f"need 1 <= min_horizon <= max_horizon, got {self.min_horizon} and {self.max_horizon}."
            )
        low, high = self.param_scale_range
        if self.config_pool is not None and self.config_pool < 1:
            raise ValueError(f"config_pool must be None or >= 1, got {self.config_pool!r}.")
        if not 0 < low <= high:
            raise ValueError(f"param_scale_range must be (low, high) with 0 < low <= high, got {self.param_scale_range!r}.")


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
    from task_families.suites import sample_meta_training_task

    rng = np.random.default_rng([int(seed), int(member), int(episode_start), 0x7E10])
    family = distribution.families[int(rng.integers(len(distribution.families)))]
    config_seed = int(rng.integers(2**31))
    if distribution.config_pool is not None:
        config_seed %= distribution.config_pool
    config = sample_meta_training_task(
        config_seed,
        families=(family,),
        max_flops_per_step=distribution.max_flops_per_step,
    )
    horizon = int(round(_log_uniform(rng, distribution.min_horizon, distribution.max_horizon)))
    scale = _log_uniform(rng, *distribution.param_scale_range)
    return MemberTask(config.to_dict(), horizon, scale, int(rng.integers(2**31)))
