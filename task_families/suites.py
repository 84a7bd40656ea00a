"""Fixed, versioned task suites, and the meta-training / held-out split.

A suite is a named tuple of `SuiteTask`s: a config plus its budgets (the
AlgoPerf `step_hint` as `num_steps`, a wall-clock `max_seconds` on the
reference machine, an evaluation cadence). A suite's name carries its
version (`canonical-cpu-v1`): once published its tasks never change; a
change is a new version, so results stay comparable.

Suites:

* `tiny-v1`: the smallest task of each of the first seven families
  (`registry.FIRST_FAMILIES`), 30 steps. For tests and CI.
* `canonical-cpu-v1`: 8 tasks spanning every family (two image MLPs: 28px
  Fashion-MNIST and MNIST-1D), each a fixed sample of its family, sized so
  that Adam trains the step budget in 2-10 s and VeLO in under a minute on
  2 CPU cores (JAX). `max_seconds` is 1.5 x Adam's measured time for the
  step budget + 2 s of compilation, rounded up (README, "Task families").

Split: the canonical suite is held out. `sample_meta_training_task(seed)`
samples a family and a config from the seed and rejects any config that is
a held-out task up to its `init_seed` (re-drawing from a derived seed), so
meta-training never sees a held-out architecture-and-data combination.
"""

import dataclasses

from task_families.family import family_rng, pick
from task_families.registry import FAMILIES, FIRST_FAMILIES, config_from_dict


@dataclasses.dataclass(frozen=True)
class SuiteTask:
    """One task of a suite.

    Attributes:
        name: short unique name within the suite (e.g. "mlp-fashion28").
        config: the task's `TaskConfig`.
        num_steps: the step budget (AlgoPerf's step hint).
        max_seconds: the wall-clock training budget on the reference machine
            (2 CPU cores, JAX), evaluation time excluded.
        eval_every: evaluation cadence in steps.
        sample_seed: the family sample seed the config came from (None if hand-written).
    """

    name: str
    config: object
    num_steps: int
    max_seconds: float
    eval_every: int
    sample_seed: int | None = None

    def to_dict(self):
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_dict()
        return out

    @classmethod
    def from_dict(cls, data):
        return cls(**{**data, "config": config_from_dict(data["config"])})


@dataclasses.dataclass(frozen=True)
class Suite:
    name: str
    description: str
    tasks: tuple

    def __post_init__(self):
        names = [t.name for t in self.tasks]
        if len(set(names)) != len(names):
            raise ValueError(f"Suite {self.name}: task names must be unique, got {names}.")

    def task(self, name):
        for suite_task in self.tasks:
            if suite_task.name == name:
                return suite_task
        raise KeyError(f"Suite {self.name} has no task {name!r}; tasks: {[t.name for t in self.tasks]}.")


def _sampled(name, family, seed, num_steps, max_seconds):
    return SuiteTask(name, FAMILIES[family].sample(seed), num_steps, max_seconds, num_steps // 10, seed)


def _tiny_suite():
    return Suite(
        "tiny-v1",
        "Each of the first seven families' smallest task, 30 steps: for tests and CI.",
        tuple(SuiteTask(f"{name}-smallest", FAMILIES[name].smallest(), 30, 5.0, 10) for name in FIRST_FAMILIES),
    )


def _canonical_cpu_suite():
    return Suite(
        "canonical-cpu-v1",
        "8 tasks over every family, 2-10 s of Adam each on 2 CPU cores.",
        (
            _sampled("mlp-fashion28", "image_mlp", 2, 2000, 6.0),
            _sampled("mlp-mnist1d", "image_mlp", 8, 2000, 5.0),
            _sampled("cnn-fashion16-colour", "image_cnn", 9, 1500, 17.0),
            _sampled("resnet-fashion8", "resnet", 40, 1000, 17.0),
            _sampled("transformer-stdlib", "transformer_lm", 1, 1500, 9.0),
            _sampled("lstm-stdlib", "rnn_lm", 6, 1000, 8.0),
            _sampled("ae-fashion16", "autoencoder", 15, 2000, 6.0),
            _sampled("vae-fashion8", "vae", 17, 2000, 6.0),
        ),
    )


SUITES = {suite.name: suite for suite in (_tiny_suite(), _canonical_cpu_suite())}
HELD_OUT_SUITE = "canonical-cpu-v1"


def get_suite(name):
    if name not in SUITES:
        raise ValueError(f"Unknown suite {name!r}; known suites: {sorted(SUITES)}.")
    return SUITES[name]


def _identity(config):
    """A config up to its init seed: what "the same task" means for the split."""
    data = config.to_dict()
    data.pop("init_seed")
    return tuple(sorted((k, repr(v)) for k, v in data.items()))


HELD_OUT_IDENTITIES = frozenset(_identity(t.config) for t in SUITES[HELD_OUT_SUITE].tasks)


def is_held_out(config):
    return _identity(config) in HELD_OUT_IDENTITIES


# Meta-training draws family sample seeds from [0, META_TRAINING_SEED_SPACE):
# up to 7 x 1000 distinct tasks, a space that contains the held-out samples.
META_TRAINING_SEED_SPACE = 1000


def sample_meta_training_task(seed, families=None, max_flops_per_step=None, max_tries=1000, reject_held_out=True):
    """A meta-training config from `seed`: random family, random config, never a held-out task.

    `families` restricts the family choice; `max_flops_per_step` rejects
    expensive samples. Rejected draws move on to the next draw of the same
    seeded generator, so the result is deterministic in `seed`.
    (`reject_held_out=False` exists only to show, in tests, that the raw
    distribution does contain held-out tasks.)
    """
    names = tuple(sorted(families or FAMILIES))
    rng = family_rng("meta_training", seed)
    for _ in range(max_tries):
        family = pick(rng, names)
        config = FAMILIES[family].sample(int(rng.integers(META_TRAINING_SEED_SPACE)))
        if reject_held_out and is_held_out(config):
            continue
        if max_flops_per_step is not None and config.flops_per_step() > max_flops_per_step:
            continue
        return config
    raise ValueError(f"No meta-training task found in {max_tries} draws; loosen the constraints.")
