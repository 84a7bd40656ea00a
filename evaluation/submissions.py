"""How a workload is trained: the optimizers under comparison, each a named submission.

* Baselines, the published untuned defaults of the VeLO re-evaluation
  (protocol, section 2): `adam` (5e-3), `nadam` (1e-2), `nadamw` (1e-2,
  decoupled weight decay 4e-3) with warm-up + cosine over 75% of the step
  hint; `heavy_ball` and `nesterov` (5e-2, momentum 0.9) with warm-up +
  linear decay to 1e-3 at the step hint.
* What a Keras user would pick instead (`evaluation.alternatives`), at
  Keras' defaults, scored like the baselines: `adamw_cosine` (AdamW 1e-3,
  5% linear warm-up, cosine decay to 0 over the step budget),
  `schedule_free_adamw` (2.5e-3) and `muon` (1e-3).
* VeLO, its step prompt set by a fixed rule from the budget, never tuned
  per workload: `velo-100` / `velo-75` / `velo-50` are told `fraction x
  num_steps` steps (the step-budget condition); `velo-time-100` /
  `velo-time-75` run in VeLO's time-budget mode, training fraction =
  training seconds / (fraction x max_seconds), and are told the same step
  count for the loss features' time scales (the wall-clock condition).
* `<alternative>-lr<lr>` (group `alternatives-grid`): the other rates of
  each alternative's grid (`evaluation.alternatives`), 3 trials like the
  defaults; the report scores each alternative *tuned*: per workload,
  budget and metric, the rate of its grid (default included) with the
  best median metric at the end of the budget (the per-workload choice of
  AlgoPerf's external tuning).
* `adam-lr<lr>`: constant-rate Adam over a half-decade grid 1e-4 .. 3e-2,
  the tuned-Adam baseline of the VeLOdrome speed-up view (the reference
  used 15 values 1e-7 .. 1; below 1e-4 and above 3e-2 nothing on these
  tasks trains in budget), one trial per rate, trained for 4x the step
  budget so that speed-ups up to 4x can be measured rather than bounded.

A submission says which budget conditions it takes part in and when its
run stops: baselines run until both budgets are spent (so one run serves
the step and the wall-clock conditions), VeLO until its own condition's
budget is spent.
"""

import dataclasses
from typing import Callable

import keras

from evaluation.alternatives import ALTERNATIVES, USER_CHOICES
from evaluation.schedules import WarmupCosine, WarmupLinearDecay

CONDITIONS = ("steps", "time")
ADAM_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
GRID_STEP_MULTIPLIER = 4
VELO_STEP_FRACTIONS = (1.0, 0.75, 0.5)
VELO_TIME_FRACTIONS = (1.0, 0.75)
SCORED_PROMPT_FRACTIONS = (1.0, 0.75)  # other prompts ("velo_prompt") only feed the sensitivity table


@dataclasses.dataclass(frozen=True)
class Submission:
    """One way of training a workload.

    Attributes:
        name: unique id (used in run file names).
        algorithm: the name scores and tables show; a step-condition and a
            time-condition submission of the same method share it.
        kind: "baseline", "velo" (scored), "alternative_grid" (scored through
            its alternative's tuned view), "velo_prompt" (prompt-sensitivity
            table only) or "adam_grid" (the tuned-Adam envelope only).
        conditions: the budget conditions it is scored in.
        stop: "both" (both budgets spent), "steps" or "time".
        make_optimizer: `make_optimizer(workload) -> keras optimizer`.
        time_budget_fraction: VeLO time mode: its budget is this x max_seconds.
        prompt_fraction: VeLO: the fraction of the budget it is told.
    """

    name: str
    algorithm: str
    kind: str
    conditions: tuple
    stop: str
    make_optimizer: Callable
    time_budget_fraction: float | None = None
    prompt_fraction: float | None = None
    max_trials: int | None = None  # the Adam grid runs one trial per learning rate
    step_multiplier: int = 1  # the Adam grid runs 4x the step budget, so speed-ups up to 4x are measurable


def _baseline(name, algorithm, make):
    return Submission(name, algorithm, "baseline", CONDITIONS, "both", make)


def _alternative(name):
    alternative = ALTERNATIVES[name]
    return _baseline(name, alternative.title,
                     lambda workload: alternative.make(total_steps=workload.num_steps))


def _alternative_at(name, learning_rate):
    """One non-default point of an alternative's grid: scored only through its tuned view."""
    alternative = ALTERNATIVES[name]
    return Submission(f"{name}-lr{learning_rate:g}", f"{alternative.title} lr={learning_rate:g}",
                      "alternative_grid", CONDITIONS, "both",
                      lambda workload: alternative.make(learning_rate, total_steps=workload.num_steps))


def alternative_grid_names(name):
    """The submissions of alternative `name`'s grid: its default (`name`) and the other rates."""
    alternative = ALTERNATIVES[name]
    return tuple(name if lr == alternative.default_learning_rate else f"{name}-lr{lr:g}"
                 for lr in alternative.grid)


def _velo_steps(fraction, weights):
    def make(workload):
        import keras_velo

        return keras_velo.VeLO(total_steps=max(1, round(fraction * workload.num_steps)), weights=weights)

    percent = round(100 * fraction)
    kind = "velo" if fraction in SCORED_PROMPT_FRACTIONS else "velo_prompt"
    return Submission(f"velo-{percent}", f"VeLO {percent}%", kind, ("steps",), "steps", make,
                      prompt_fraction=fraction)


def _velo_time(fraction, weights):
    def make(workload):
        import keras_velo

        return keras_velo.VeLO(
            total_steps=max(1, round(fraction * workload.num_steps)),
            time_budget=fraction * workload.max_seconds,
            weights=weights,
        )

    percent = round(100 * fraction)
    return Submission(f"velo-time-{percent}", f"VeLO {percent}%", "velo", ("time",), "time", make,
                      time_budget_fraction=fraction, prompt_fraction=fraction)


def _adam_constant(lr):
    return Submission(f"adam-lr{lr:g}", f"Adam lr={lr:g}", "adam_grid", ("steps",), "steps",
                      lambda workload: keras.optimizers.Adam(lr), max_trials=1,
                      step_multiplier=GRID_STEP_MULTIPLIER)


def make_submissions(velo_weights="bundled"):
    """All submissions by name. `velo_weights` is VeLO's `weights=` ("bundled", "velo" or a path)."""
    baselines = [
        _baseline("adam", "Adam", lambda w: keras.optimizers.Adam(WarmupCosine(5e-3, w.num_steps), 0.9, 0.999,
                                                                   epsilon=1e-8)),
        _baseline("nadam", "NAdam", lambda w: keras.optimizers.Nadam(WarmupCosine(1e-2, w.num_steps), 0.9, 0.999)),
        _baseline("nadamw", "NAdamW", lambda w: keras.optimizers.Nadam(WarmupCosine(1e-2, w.num_steps), 0.9, 0.999,
                                                                         weight_decay=4e-3)),
        _baseline("heavy_ball", "Heavy-ball", lambda w: keras.optimizers.SGD(WarmupLinearDecay(5e-2, w.num_steps),
                                                                              momentum=0.9)),
        _baseline("nesterov", "Nesterov", lambda w: keras.optimizers.SGD(WarmupLinearDecay(5e-2, w.num_steps),
                                                                          momentum=0.9, nesterov=True)),
    ]
    baselines += [_alternative(name) for name in USER_CHOICES]
    velo = [_velo_steps(f, velo_weights) for f in VELO_STEP_FRACTIONS]
    velo += [_velo_time(f, velo_weights) for f in VELO_TIME_FRACTIONS]
    grid = [_adam_constant(lr) for lr in ADAM_GRID]
    grid += [_alternative_at(name, lr) for name in USER_CHOICES for lr in ALTERNATIVES[name].grid
             if lr != ALTERNATIVES[name].default_learning_rate]
    return {s.name: s for s in baselines + velo + grid}


GROUPS = {
    "baselines": ("adam", "nadam", "nadamw", "heavy_ball", "nesterov", *USER_CHOICES),
    "published-baselines": ("adam", "nadam", "nadamw", "heavy_ball", "nesterov"),
    "alternatives": USER_CHOICES,
    "velo": ("velo-100", "velo-75", "velo-time-100", "velo-time-75"),
    "velo-sensitivity": ("velo-50",),
    "adam-grid": tuple(f"adam-lr{lr:g}" for lr in ADAM_GRID),
    "alternatives-grid": tuple(n for name in USER_CHOICES for n in alternative_grid_names(name) if n != name),
}


def select_submissions(spec, velo_weights="bundled"):
    """Submissions named by a comma-separated `spec` of names and groups (or "all")."""
    available = make_submissions(velo_weights)
    names = []
    for item in [s.strip() for s in spec.split(",") if s.strip()]:
        if item == "all":
            names += list(available)
        elif item in GROUPS:
            names += list(GROUPS[item])
        elif item in available:
            names.append(item)
        else:
            raise ValueError(
                f"Unknown submission {item!r}; choose from {sorted(available)} or groups {sorted(GROUPS)} or 'all'."
            )
    return [available[n] for n in dict.fromkeys(names)]
