"""Named meta-training presets (`python -m meta.train --config NAME`).

* `smoke`: a minutes-long end-to-end check on 2 CPU cores (tiny image MLPs,
  2 members, 3 iterations). For CI; its theta is not meant to be used.
* `cpu`: this project's machine (2 cores, no GPU): all eleven families
  within a small FLOP budget (`WIDE_DISTRIBUTION`: 3 configs each, 6
  residual nets; 36 architectures, each compiled once in ~30-60 s, then kept
  in JAX's persistent cache), horizons of 100-3,000 steps; full-unroll
  antithetic ES with VeLO's sign(L+ - L-), 4 members, on the objective that
  weighs the end of training and ending above Adam(1e-3) with a CVaR tail
  over members (`meta.objective`), on three blocks of theta (the step-size
  head, the MLP bank, the mix layers: 72,961 weights), Adam 3e-3,
  meta-validation on `cpu-valid-v1` and `ood-valid-v1` every 6 training
  minutes (`benchmarks/meta_objectives.py` chose the estimator and
  objective). Resumable; run it for as long as it improves.
* `cpu-transformers`: the `cpu` preset with the Transformer families
  (`vit`, `gpt_lm`, `transformer_lm`) drawn about half the time
  (`TRANSFORMER_DISTRIBUTION`).
* `cpu-v2`: the `cpu` preset before (the seven first families, horizons
  100-1,000, Persistent ES and truncated backprop by inverse variance on
  the area under 50-step truncations, 8 members), for the runs made with it.
* `gpu`: a GPU machine or a Ray cluster: Celo's settings (PES, truncation
  50, perturbation 0.01, horizons 100-2,000, Adam 3e-4), 64 members,
  larger tasks, and the reference's parameter-scale augmentation.
"""

import dataclasses

from meta.learner import ESTIMATORS
from meta.objective import MetaObjective
from meta.ood_validation import OOD_VALIDATION
from meta.subspace import SubspaceSpec
from meta.task_distribution import ALL_FAMILIES, WIDE_FAMILIES, TaskDistribution, family_name
from meta.validation import CPU_VALIDATION, ValidationSet

# All eleven families (residual nets with the normalisation in the branch,
# ViTs, GPT-style LMs with either norm placement and tables beside the first
# seven), 3 configs each, horizons up to the canonical ones (3,000 steps).
# The objectives were compared on it (benchmarks/meta_objectives.py).
WIDE_DISTRIBUTION_POOL3 = TaskDistribution(WIDE_FAMILIES, 3e8, 100, 3000, (0.1, 10.0), config_pool=3)
# Its three residual nets all drew no normalisation; six cover BatchNorm too
# (three with, three without: the draws of seeds 0-5).
WIDE_DISTRIBUTION = dataclasses.replace(WIDE_DISTRIBUTION_POOL3, pool_sizes=(("residual_net", 6),))
# The same, with the Transformers (ViTs, GPT-style and pre-norm LMs) drawn about half the time:
# where users start and where the shipped weights lost to AdamW, ScheduleFreeAdamW and Muon.
TRANSFORMER_DISTRIBUTION = dataclasses.replace(
    WIDE_DISTRIBUTION, family_weights=(("vit", 3), ("gpt_lm", 3), ("transformer_lm", 2)))



@dataclasses.dataclass(frozen=True)
class MetaTrainingConfig:
    """Everything that defines a meta-training run (saved with it; `--resume` checks it).

    Attributes:
        name: the preset's name.
        distribution: what members train (`TaskDistribution`).
        estimator: "pes" (Persistent ES over truncations), "es" (full-unroll
            antithetic ES), "tbptt" (backpropagation through truncations) or
            "pes+tbptt" (both, combined per coordinate by inverse variance);
            see `meta.learner`.
        subspace: which part of theta moves (`meta.subspace.SubspaceSpec`).
        members: members (antithetic pairs for ES) per iteration.
        truncation: steps per truncation (ignored by "es").
        sigma: perturbation standard deviation (in z).
        shaping: "none", "sign" or "centered_ranks" (`meta.estimators.pair_weights`).
        learning_rate: Adam's learning rate on z.
        clip_norm: global-norm clipping of the estimated gradient.
        max_loss_ratio: the normalised loss of a diverged step.
        iterations: meta-iterations of a run (`--iterations` overrides).
        minutes: stop once the run has trained this long (validation
            excluded), None for no limit (`--minutes` overrides).
        workers: Ray workers (`--workers` overrides).
        checkpoint_every: iterations between checkpoints (and plots).
        validate_every: iterations between meta-validation scores.
        validate_every_minutes: if set, score every this many training
            minutes instead (runs compared at equal CPU time).
        validation: the meta-validation set (`meta.validation.ValidationSet`).
        ood_validation: None, or a second, out-of-distribution held-out
            set (`meta.validation.FixedValidationSet`) scored beside it.
        objective: what the meta-loss weighs (`meta.objective.MetaObjective`).
        seed: the run's seed.
    """

    name: str
    distribution: TaskDistribution
    estimator: str = "pes"
    subspace: SubspaceSpec = SubspaceSpec()
    members: int = 8
    truncation: int = 50
    sigma: float = 0.01
    shaping: str = "none"
    learning_rate: float = 3e-4
    clip_norm: float = 1.0
    max_loss_ratio: float = 1.5
    iterations: int = 1000
    minutes: float | None = None
    workers: int = 2
    checkpoint_every: int = 5
    validate_every: int = 10
    validate_every_minutes: float | None = None
    validation: ValidationSet = CPU_VALIDATION
    ood_validation: object = None
    objective: MetaObjective = MetaObjective()
    seed: int = 0

    def __post_init__(self):
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {self.estimator!r}.")
        if self.shaping not in ("none", "sign", "centered_ranks"):
            raise ValueError(f"shaping must be 'none', 'sign' or 'centered_ranks', got {self.shaping!r}.")
        for name in ("members", "truncation", "iterations", "checkpoint_every", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}.")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = no Ray), got {self.workers!r}.")
        if not self.sigma > 0:
            raise ValueError(f"sigma must be > 0, got {self.sigma!r}.")
        if self.minutes is not None and not self.minutes > 0:
            raise ValueError(f"minutes must be None or > 0, got {self.minutes!r}.")
        if self.validate_every_minutes is not None and not self.validate_every_minutes > 0:
            raise ValueError(f"validate_every_minutes must be None or > 0, got {self.validate_every_minutes!r}.")

    @property
    def unroll_truncation(self):
        """Steps per truncation; None = whole episodes (full-unroll ES)."""
        return None if self.estimator == "es" else self.truncation

    def to_dict(self):
        data = dataclasses.asdict(self)
        data["distribution"] = self.distribution.to_dict()
        data["subspace"] = self.subspace.to_dict()
        data["validation"] = validation_set_dict(self.validation)
        data["ood_validation"] = (None if self.ood_validation is None
                                  else validation_set_dict(self.ood_validation))
        data["objective"] = self.objective.to_dict()
        return data

    def validation_sets(self):
        """The held-out sets a run is scored on, in order: `validation`, then `ood_validation`."""
        return tuple(s for s in (self.validation, self.ood_validation) if s is not None)


PRESETS = {
    "smoke": MetaTrainingConfig(
        name="smoke",
        distribution=TaskDistribution(("image_mlp",), 2e6, 30, 30, config_pool=1),
        members=2,
        truncation=10,
        learning_rate=1e-3,
        iterations=3,
        workers=1,
        checkpoint_every=1,
        validate_every=3,
        validation=ValidationSet("smoke-valid", ("image_mlp",), 2, 2e6, 20, 30),
    ),
    "cpu": MetaTrainingConfig(
        name="cpu",
        distribution=WIDE_DISTRIBUTION,
        # The one variant of benchmarks/meta_objectives.py lower on both held-out
        # sets at 12 CPU-minutes (meta/README.md): full-unroll antithetic ES
        # with VeLO's sign(L+ - L-), 4 members, on the objective that weighs
        # the end of training and ending above Adam, with a CVaR tail.
        estimator="es",
        shaping="sign",
        objective=MetaObjective(final_share=0.5, adam_penalty=1.0, tail_weight=1.0,
                                tail_fraction=0.25),
        subspace=SubspaceSpec(("step_size_head", "mlp_bank", "mix_layers")),
        members=4,
        learning_rate=3e-3,
        iterations=2000,
        workers=2,
        validate_every_minutes=6.0,
        ood_validation=OOD_VALIDATION,
    ),
    # The cpu preset until issue 26: the seven first families, the area under
    # 50-step truncations by PES and truncated backprop (the runs cpu-v2 and
    # known_answer, benchmarks/meta_estimators.py, examples/meta_train_your_own.py).
    "cpu-v2": MetaTrainingConfig(
        name="cpu-v2",
        distribution=TaskDistribution(ALL_FAMILIES, 3e8, 100, 1000, (0.1, 10.0), config_pool=4),
        estimator="pes+tbptt",
        subspace=SubspaceSpec(("step_size_head", "mlp_bank", "mix_layers")),
        members=8,
        truncation=50,
        learning_rate=3e-3,
        iterations=2000,
        workers=2,
        validate_every_minutes=5.0,
        ood_validation=OOD_VALIDATION,
    ),
    "gpu": MetaTrainingConfig(
        name="gpu",
        distribution=TaskDistribution(ALL_FAMILIES, 3e10, 100, 2000, (1e-3, 1e3)),
        members=64,
        truncation=50,
        learning_rate=3e-4,
        iterations=20000,
        workers=8,
        checkpoint_every=20,
    ),
}


PRESETS["cpu-transformers"] = dataclasses.replace(
    PRESETS["cpu"], name="cpu-transformers", distribution=TRANSFORMER_DISTRIBUTION)


def get_preset(name):
    if name not in PRESETS:
        raise ValueError(f"Unknown meta-training config {name!r}; presets: {sorted(PRESETS)}.")
    return PRESETS[name]


def validation_set_dict(validation):
    data = dataclasses.asdict(validation)
    data["families"] = [family_name(f) for f in validation.families]
    return data
