"""Meta-validation: a fixed held-out set of tasks on which any theta is scored.

A meta-training run is judged here, not by its training meta-loss (a PES
meta-loss depends on where each member is in its episode, and is noise at
the scale that matters). `validation_tasks(families)` draws a fixed set of
tasks from the meta-training distribution, the way `meta.task_distribution`
draws a member's task, but from seeds the training never uses: new
architectures, initialisations and batch orders, never a canonical
evaluation task, with horizons of 100-500 steps. `score(records)` turns
the normalised losses of a theta's runs into its meta-validation score:

* `final`: the mean over tasks of the normalised final training loss
  (`loss / initial loss`, clipped to [0, 1.5], averaged over the last 10%
  of the steps, so that one batch does not decide it), with its standard
  error across tasks;
* `mean`: the mean over tasks of the normalised training loss over the
  whole run (the area under the curve, which also rewards speed), with its
  standard error.

Lower is better; 1 is "no progress", 1.5 "diverged". The set is fixed (its
name carries a version): scores of different runs and checkpoints are
comparable. `python -m meta.evaluate --theta PATH` scores any checkpoint.

A second kind of set, `FixedValidationSet`, lists its tasks by hand: the
out-of-distribution set `meta.ood_validation.OOD_VALIDATION`, architectures
meta-training never samples. Given each task's Adam(1e-3) reference
(`meta.adam_reference`), `score` also says, per task, how the theta's
`final` compares with Adam's, and every score has per-family rows;
`judge` compares two scores the way a theta must be judged: the paired
difference of `final`, the mean per-task log ratio of final losses (a
tenfold lower loss on a task that converges counts as much as on one that
does not; `final` barely sees it) with its paired standard error, and
each family's.

>>> tasks = validation_tasks()          # "cpu-valid-v1": 21 tasks, 3 per family
>>> records = LocalScorer(theta).score(tasks)
>>> score(records)["final"]
"""

import dataclasses
import math

import numpy as np

from meta.task_distribution import ALL_FAMILIES

VALIDATION_SEED = 0xA11D  # never a member's seed: members draw from (run seed, member, iteration)
FINAL_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class ValidationTask:
    """One meta-validation task: a config trained for `horizon` steps on fixed batches."""

    name: str
    config: dict
    horizon: int
    data_seed: int
    param_scale: float = 1.0

    def to_dict(self):
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ValidationSet:
    """A named, versioned set of validation tasks drawn from a task distribution.

    Attributes:
        name: e.g. "cpu-valid-v1".
        families: the families drawn from (registry names, or user families).
        tasks_per_family: tasks drawn from each.
        max_flops_per_step: the distribution's budget.
        min_horizon, max_horizon: horizons are log-uniform in this range.
        seed: the draw's seed.
    """

    name: str
    families: tuple
    tasks_per_family: int = 3
    max_flops_per_step: float = 3e8
    min_horizon: int = 100
    max_horizon: int = 500
    seed: int = VALIDATION_SEED

    def tasks(self):
        return validation_tasks(self)


CPU_VALIDATION = ValidationSet("cpu-valid-v1", ALL_FAMILIES)


@dataclasses.dataclass(frozen=True)
class FixedValidationSet:
    """A named, versioned set of hand-written `ValidationTask`s."""

    name: str
    tasks_list: tuple

    def tasks(self):
        return tuple(self.tasks_list)

    @property
    def families(self):
        return tuple(dict.fromkeys(t.config["family"] for t in self.tasks_list))


def reference_specs(tasks):
    """`(config, steps, data_seed)` of each task's Adam reference (`meta.adam_reference`)."""
    return [(t.config, t.horizon, t.data_seed) for t in tasks]


def task_references(tasks, records):
    """`{task name: reference record}` for the tasks whose reference is in `records`."""
    from meta.adam_reference import reference_key

    found = {}
    for task in tasks:
        record = records.get(reference_key(task.config, task.horizon, task.data_seed))
        if record is not None:
            found[task.name] = record
    return found


def validation_tasks(validation_set=CPU_VALIDATION):
    """The tasks of `validation_set`, in a fixed order (family by family)."""
    from meta.task_distribution import family_name, sample_family_config

    tasks = []
    for f, family in enumerate(validation_set.families):
        for k in range(validation_set.tasks_per_family):
            rng = np.random.default_rng([validation_set.seed, f, k])
            config = sample_family_config(family, 1_000_003 + validation_set.seed + 97 * f + k,
                                          validation_set.max_flops_per_step)
            low, high = validation_set.min_horizon, validation_set.max_horizon
            horizon = int(round(math.exp(rng.uniform(math.log(low), math.log(high)))))
            tasks.append(ValidationTask(
                name=f"{family_name(family)}-{k}",
                config=config,
                horizon=horizon,
                data_seed=int(rng.integers(2**31)),
            ))
    return tuple(tasks)


def task_summary(record):
    """`(final, mean)` normalised losses of one task's record (`ParticleRunner.score_task`)."""
    values = np.asarray(record["normalised"], np.float64)
    last = max(1, int(round(FINAL_FRACTION * values.size)))
    return float(values[-last:].mean()), float(values.mean())


ABOVE_ADAM = 1.1  # a task "ends above Adam" when its final is > 10% above Adam's


def score(records, references=None):
    """The meta-validation score of a theta from its per-task records.

    Args:
        records: per-task records (`ParticleRunner.score_task`).
        references: None, or `{task name: Adam reference record}`.

    Returns `{"final", "final_se", "mean", "mean_se", "tasks": {name: [final,
    mean]} (6 significant digits), "task_families": {name: family},
    "families": {family: {"final", "mean", "tasks"}}}` and, with
    references, `"vs_adam": {name: final / Adam's final}`, `"above_adam"`
    (the tasks more than 10% above Adam, worst first) and `"worst_vs_adam"`.
    """
    summaries = {r["name"]: task_summary(r) for r in records}
    finals = np.asarray([s[0] for s in summaries.values()])
    means = np.asarray([s[1] for s in summaries.values()])
    n = max(1, finals.size)
    families = {}
    for record in records:
        families.setdefault(record["family"], []).append(summaries[record["name"]])
    result = {
        "final": float(finals.mean()),
        "final_se": float(finals.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "mean": float(means.mean()),
        "mean_se": float(means.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0,
        "tasks": {name: [_significant(f), _significant(m)] for name, (f, m) in summaries.items()},
        "task_families": {record["name"]: record["family"] for record in records},
        "families": {family: {"final": round(float(np.mean([v[0] for v in values])), 6),
                              "mean": round(float(np.mean([v[1] for v in values])), 6),
                              "tasks": len(values)}
                     for family, values in families.items()},
    }
    if references:
        ratios = {name: round(summaries[name][0] / max(references[name]["final"], 1e-6), 4)
                  for name in summaries if name in references}
        result["vs_adam"] = ratios
        result["above_adam"] = sorted((name for name, r in ratios.items() if r > ABOVE_ADAM),
                                      key=lambda name: -ratios[name])
        result["worst_vs_adam"] = max(ratios.values()) if ratios else None
    return result


def _significant(value, digits=6):
    return float(f"{value:.{digits}g}")


# A family "collapses" when its mean final normalised loss rises by this much.
COLLAPSE = 0.05
# Normalised final losses below this (1e-4 of the initial loss) count as solved: a log ratio
# between two such tasks says nothing about the optimizer.
LOG_RATIO_FLOOR = 1e-4


def task_family(score_record, name):
    """The family of task `name` in a `score` (older scores: the name up to its last "-")."""
    return score_record.get("task_families", {}).get(name, name.rsplit("-", 1)[0])


def log_ratios(candidate, reference):
    """`{task: log(candidate's final / reference's final)}` over the tasks both scored,
    each final floored at `LOG_RATIO_FLOOR`."""
    names = sorted(set(candidate["tasks"]) & set(reference["tasks"]))
    return {n: math.log(max(candidate["tasks"][n][0], LOG_RATIO_FLOOR)
                        / max(reference["tasks"][n][0], LOG_RATIO_FLOOR)) for n in names}


def judge(candidate, reference):
    """How `candidate` compares with `reference` (two `score`s on the same set).

    Returns `{"final": (difference, paired SE), "mean": (...), "families":
    {family: final difference}, "collapsed": [families whose mean final
    rose by more than COLLAPSE (absolute), worst first], "better": the
    paired `final` difference is below zero by more than two standard
    errors and no family collapsed, "log_ratio": (mean over tasks of
    `log_ratios`, its standard error), "family_log_ratios": {family: the
    mean of its tasks' log ratios}}`: a theta is not better if it lowers
    the mean and collapses a family.
    """
    final = paired_difference(candidate, reference, "final")
    mean = paired_difference(candidate, reference, "mean")
    ratios = log_ratios(candidate, reference)
    values = np.asarray(list(ratios.values()))
    log_ratio = (float(values.mean()) if values.size else 0.0,
                 float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else 0.0)
    by_family = {}
    for name, value in ratios.items():
        by_family.setdefault(task_family(candidate, name), []).append(value)
    families = {family: round(candidate["families"][family]["final"] - values["final"], 6)
                for family, values in reference.get("families", {}).items()
                if family in candidate.get("families", {})}
    collapsed = sorted((f for f, d in families.items() if d > COLLAPSE), key=lambda f: -families[f])
    return {"final": final, "mean": mean, "families": families, "collapsed": collapsed,
            "better": final[0] < -2 * final[1] and not collapsed, "log_ratio": log_ratio,
            "family_log_ratios": {f: float(np.mean(v)) for f, v in by_family.items()}}


def paired_difference(candidate, reference, key="final"):
    """`(mean difference, its standard error)` of per-task values, candidate - reference.

    The tasks are the same for both, so the paired standard error is what
    says whether a difference is beyond noise.
    """
    names = sorted(set(candidate["tasks"]) & set(reference["tasks"]))
    column = 0 if key == "final" else 1
    differences = np.asarray(
        [candidate["tasks"][n][column] - reference["tasks"][n][column] for n in names]
    )
    if differences.size < 2:
        return float(differences.mean()) if differences.size else 0.0, 0.0
    return float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(differences.size))
