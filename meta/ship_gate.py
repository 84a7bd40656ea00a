"""The ship gate: whether a theta may replace the incumbent `weights="bundled"`.

    python -m meta.ship_gate --meta-validation SCORES.json \
        --comparison COMPARE_DIR --candidate velo_candidate --incumbent velo \
        --study INCUMBENT_STUDY --candidate-study CANDIDATE_STUDY [--out GATE.md]
    python -m meta.ship_gate --goals --comparison COMPARE_DIR --study STUDY \
        --transformer-tasks meta/experiments/transformer_tasks/results     # the shipped theta's goals

A theta ships only if it beats the theta shipped now, by criteria that a
noisy evaluation cannot pass by chance and that no family or example may
pay for, measured on the loss each optimizer minimised:

* held-out sets (`SCORES.json`: `python -m meta.evaluate --theta CANDIDATE
  --against INCUMBENT --json SCORES.json`, both sets): on each set the mean
  over tasks of log(candidate's final loss / incumbent's) is below 0 by
  more than two paired standard errors (`meta.validation.judge`'s
  `log_ratio`), and no family is more than 10% worse (the geometric mean
  of its tasks' ratios above 1.1);
* `examples/compare.py` (`COMPARE_DIR`, all seven examples, with both
  thetas among `--velo-weights`): the candidate's median final training
  loss ratio to tuned Adam is lower than the incumbent's, and no example
  ends more than 10% above the incumbent's final training loss;
* canonical-cpu-v1 (`INCUMBENT_STUDY`: the baselines, the Adam grid and
  the incumbent's `velo-100`; `CANDIDATE_STUDY`: the candidate's `velo-100`,
  3 trials each; scored together, the candidate renamed): the candidate's
  AlgoPerf benchmark scores on the step budget (training and validation
  loss) are not lower than the incumbent's, and no workload's final
  training loss is more than 10% above constant Adam(1e-3)'s.

The goals the project set itself (a canonical median speed-up over tuned
Adam of 1.3; at or below tuned Adam on at least 4 of the 5 small examples;
both KerasHub examples at or below ScheduleFreeAdamW's and Muon's
defaults; ood-valid-v1's ViT and GPT tasks at or below AdamW's,
ScheduleFreeAdamW's and Muon's defaults) are reported beside the gate
(`goals`), not part of it: the gate asks for progress, the goals say how
far there is to go.

Any of the three evaluations may be left out (each costs CPU time): its
criteria are reported as not run (`passed` None), and the verdict is "does
not ship" as soon as one that ran fails, "undecided" while none failed and
some did not run. `gate(...)` and `goals(...)` are pure functions of the
loaded artefacts and return `Criterion`s.
"""

import argparse
import dataclasses
import json
import math
import pathlib
import sys

import numpy as np

WORSE_LIMIT = 1.10  # a family, example or workload more than 10% worse fails
GOAL_MEDIAN_SPEEDUP = 1.3
GOAL_SMALL_EXAMPLES_AT_OR_BELOW_TUNED_ADAM = 4
KERAS_HUB_EXAMPLES = ("keras_hub_gpt2", "keras_hub_vit")
VELO_ALGORITHM = "VeLO 100%"
CANDIDATE_SUFFIX = " (candidate)"
ADAM_1E3 = "Adam lr=0.001"  # the grid's constant-rate run (evaluation.submissions)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One check: what was measured against what it had to reach."""

    name: str
    value: str
    required: str
    passed: bool | None  # None: its evaluation was not run


# ------------------------------------------------------------------ held-out sets


def meta_validation_criteria(scores):
    """The held-out checks from `python -m meta.evaluate --against INCUMBENT --json` output."""
    criteria = []
    for name, judgement in scores["judgement"].items():
        mean, error = judgement["log_ratio"]
        criteria.append(Criterion(
            f"{name}: mean log(final loss / incumbent's) over tasks",
            f"{mean:+.4f} ± {error:.4f} (geometric mean ratio {math.exp(mean):.3f})",
            "< 0 beyond 2 paired SE", mean < -2 * error))
        families = judgement["family_log_ratios"]
        worse = sorted((f for f, v in families.items() if math.exp(v) > WORSE_LIMIT), key=lambda f: -families[f])
        criteria.append(Criterion(
            f"{name}: families more than 10% worse than the incumbent",
            f"{len(worse)} of {len(families)}" + (
                f" ({', '.join(f'{f} {math.exp(families[f]):.2f}x' for f in worse)})" if worse else "")
            + (f"; worst {max(families, key=families.get)} {math.exp(max(families.values())):.2f}x"
               if families else ""),
            "0", not worse))
    return criteria


# ------------------------------------------------------------------ compare.py


def _velo(result, key):
    """One VeLO's summary in one example's result (`"velo"` or a key of `other_velos`)."""
    return result["velo"] if key == "velo" else result["other_velos"].get(key)


def comparison_criteria(results, candidate, incumbent):
    """The `examples/compare.py` checks from its `results.json` (VeLO keys `candidate`, `incumbent`)."""
    summary = results["summary"]
    for key in (candidate, incumbent):
        if key not in summary:
            raise KeyError(f"{key!r} is not among the compared VeLO weights: {sorted(summary)}.")
    mine, theirs = summary[candidate], summary[incumbent]
    ratios = {}
    for example, result in results["examples"].items():
        ratios[example] = _velo(result, candidate)["final_train_loss"] / _velo(result, incumbent)["final_train_loss"]
    worse = sorted((e for e, r in ratios.items() if not r <= WORSE_LIMIT), key=lambda e: -ratios[e])
    return [
        Criterion("examples/compare.py: median final-loss ratio to tuned Adam",
                  f"{mine['median_loss_ratio_to_tuned_adam']:.3f} against the incumbent's "
                  f"{theirs['median_loss_ratio_to_tuned_adam']:.3f} ({mine['examples']} examples)",
                  "lower than the incumbent's",
                  mine["median_loss_ratio_to_tuned_adam"] < theirs["median_loss_ratio_to_tuned_adam"]),
        Criterion("examples/compare.py: examples more than 10% above the incumbent's final training loss",
                  f"{len(worse)} of {len(ratios)}" + (
                      f" ({', '.join(f'{e} {ratios[e]:.2f}x' for e in worse)})" if worse else "")
                  + f"; ratios {', '.join(f'{e} {r:.2f}' for e, r in ratios.items())}",
                  "0", not worse),
    ]


# ------------------------------------------------------------------ canonical-cpu-v1


def combined_runs(incumbent_runs, candidate_runs):
    """The incumbent's study with the candidate's VeLO runs added under `<algorithm> (candidate)`."""
    renamed = [dataclasses.replace(r, header={**r.header, "algorithm": r.algorithm + CANDIDATE_SUFFIX})
               for r in candidate_runs if r.kind == "velo"]
    return list(incumbent_runs) + renamed


def step_budget_scores(runs):
    """`{metric: {algorithm: B}}`: AlgoPerf's benchmark scores on the step budget."""
    from evaluation import scoring

    scored = scoring.runs_in(scoring.scored_runs(runs), "steps")
    out = {}
    for metric in scoring.METRICS:
        targets = scoring.targets(scored, "steps", metric)
        out[metric] = scoring.benchmark_scores(scoring.time_to_target(scored, "steps", metric, targets))
    return out


def canonical_criteria(runs):
    """The `canonical-cpu-v1` checks from `combined_runs(...)`."""
    from evaluation import scoring

    candidate = VELO_ALGORITHM + CANDIDATE_SUFFIX
    criteria = []
    for metric, scores in step_budget_scores(runs).items():
        mine, theirs = scores.get(candidate, math.nan), scores.get(VELO_ALGORITHM, math.nan)
        criteria.append(Criterion(f"canonical-cpu-v1: benchmark score, step budget, {metric}",
                                  f"{mine:.3f} against the incumbent's {theirs:.3f}",
                                  "not lower than the incumbent's", mine >= theirs))
    quality = scoring.quality_table(runs, "steps", "train_loss")
    ratios = {w: quality[candidate][w][0] / quality[ADAM_1E3][w][0]
              for w in quality.get(candidate, {}) if w in quality.get(ADAM_1E3, {})}
    above = sorted((w for w, r in ratios.items() if not r <= WORSE_LIMIT), key=lambda w: -ratios[w])
    criteria.append(Criterion(
        "canonical-cpu-v1: workloads > 10% above Adam(1e-3)'s final training loss",
        (f"{len(above)} of {len(ratios)}" + (f" ({', '.join(above)})" if above else "")
         + f"; highest ratio {max(ratios.values()):.2f}") if ratios else "no Adam(1e-3) runs",
        "0", bool(ratios) and not above))
    return criteria


# ------------------------------------------------------------------ the gate and the goals


NOT_RUN = {
    "meta_validation": ("held-out sets: mean log ratio to the incumbent, families more than 10% worse",
                        "< 0 beyond 2 paired SE; 0"),
    "comparison": ("examples/compare.py: median ratio to tuned Adam, examples more than 10% worse",
                   "lower than the incumbent's; 0"),
    "canonical": ("canonical-cpu-v1: step-budget benchmark scores, workloads above Adam(1e-3)",
                  "not lower than the incumbent's; 0"),
}


def gate(scores, comparison, candidate, incumbent, runs):
    """Every criterion (`Criterion`), from the loaded artefacts; an artefact given as None
    (its evaluation not run) is one criterion with `passed` None."""
    def or_not_run(key, artefact, criteria):
        if artefact is None:
            return [Criterion(NOT_RUN[key][0], "not run", NOT_RUN[key][1], None)]
        return criteria(artefact)

    return (or_not_run("meta_validation", scores, meta_validation_criteria)
            + or_not_run("comparison", comparison, lambda c: comparison_criteria(c, candidate, incumbent))
            + or_not_run("canonical", runs, canonical_criteria))


def transformer_task_goal(results, label):
    """Goal: VeLO (`label` in `meta/experiments/transformer_tasks` results) at or below AdamW's,
    ScheduleFreeAdamW's and Muon's defaults on each of ood-valid-v1's ViT and GPT tasks."""
    alternatives = ("adamw", "schedule_free_adamw", "muon")
    scored = {task: r for task, r in results.items() if label in r and all(a in r for a in alternatives)}
    if not scored:
        return Criterion("ood-valid-v1 ViT/GPT tasks: at or below AdamW's, ScheduleFreeAdamW's and Muon's "
                         "defaults", "not run", "all", None)
    below = [task for task, r in scored.items()
             if all(r[label]["final"] <= r[a]["final"] for a in alternatives)]
    return Criterion("ood-valid-v1 ViT/GPT tasks: at or below AdamW's, ScheduleFreeAdamW's and Muon's defaults",
                     f"{len(below)} of {len(scored)}" + (f" ({', '.join(below)})" if below else ""),
                     f"{len(scored)} of {len(scored)}", len(below) == len(scored))


def goals(comparison, key, runs=None, algorithm=VELO_ALGORITHM, transformer_tasks=None,
          transformer_label="velo_bundled"):
    """The project's absolute goals for one theta (`key` in the comparison, `algorithm` in `runs`,
    `transformer_label` in the `transformer_tasks` results)."""
    out = []
    if runs is not None:
        from evaluation import scoring

        speedups = scoring.speedups_over_tuned_adam(runs).get(algorithm, {})
        median = float(np.median(list(speedups.values()))) if speedups else math.nan
        out.append(Criterion("canonical-cpu-v1: median speed-up over tuned Adam", f"{median:.3g}",
                             f">= {GOAL_MEDIAN_SPEEDUP}", median >= GOAL_MEDIAN_SPEEDUP))
    if comparison is not None:
        small = {e: r for e, r in comparison["examples"].items() if e not in KERAS_HUB_EXAMPLES}
        below = [e for e, r in small.items()
                 if _velo(r, key)["final_train_loss"] <= r["alternatives"]["adam"]["tuned"]["final_train_loss"]]
        out.append(Criterion("examples/compare.py: small examples at or below tuned Adam",
                             f"{len(below)} of {len(small)}",
                             f">= {GOAL_SMALL_EXAMPLES_AT_OR_BELOW_TUNED_ADAM} of 5",
                             len(below) >= GOAL_SMALL_EXAMPLES_AT_OR_BELOW_TUNED_ADAM))
        for example in KERAS_HUB_EXAMPLES:
            result = comparison["examples"].get(example)
            if result is None:
                out.append(Criterion(f"{example}: at or below ScheduleFreeAdamW's and Muon's defaults",
                                     "not run", "<= both", None))
                continue
            loss = _velo(result, key)["final_train_loss"]
            others = {name: result["alternatives"][name]["default"]["final_train_loss"]
                      for name in ("schedule_free_adamw", "muon") if name in result["alternatives"]}
            out.append(Criterion(f"{example}: at or below ScheduleFreeAdamW's and Muon's defaults",
                                 f"{loss:.4g} against " + ", ".join(f"{n} {v:.4g}" for n, v in others.items()),
                                 "<= both", len(others) == 2 and all(loss <= v for v in others.values())))
    if transformer_tasks is not None:
        out.append(transformer_task_goal(transformer_tasks, transformer_label))
    return out


def verdict(criteria):
    """"ships" (every criterion ran and holds), "does not ship" (one that ran fails) or "undecided"."""
    if any(c.passed is False for c in criteria):
        return "does not ship"
    return "ships" if criteria and all(c.passed for c in criteria) else "undecided"


def markdown(criteria, goal_criteria=(), goals_title="Goals (reported, not gating):"):
    """The gate's criteria and verdict, then the goals; an empty `criteria` gives the goals only."""
    marks = {True: "pass", False: "**fail**", None: "not run"}

    def table(rows):
        return ["| criterion | measured | required | |", "|---|---|---|---|"] + [
            f"| {c.name} | {c.value} | {c.required} | {marks[c.passed]} |" for c in rows]

    lines = []
    if criteria:
        ran = [c for c in criteria if c.passed is not None]
        lines += table(criteria) + ["", f"{sum(bool(c.passed) for c in ran)} of {len(ran)} criteria run hold"
                                    + (f" ({len(criteria) - len(ran)} not run)" if len(ran) < len(criteria) else "")
                                    + f": the candidate {verdict(criteria)}.", ""]
    if goal_criteria:
        met = sum(bool(c.passed) for c in goal_criteria)
        lines += [goals_title, ""] + table(goal_criteria) + ["", f"{met} of {len(goal_criteria)} goals met."]
    return "\n".join(lines).rstrip("\n") + "\n"


def _transformer_tasks(args):
    if not args.transformer_tasks:
        return None
    return json.loads(pathlib.Path(args.transformer_tasks, "results.json").read_text())


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m meta.ship_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--meta-validation", help="python -m meta.evaluate --against INCUMBENT --json output")
    parser.add_argument("--comparison", help="examples/compare.py output directory")
    parser.add_argument("--candidate", default="velo_candidate", help="the candidate's key in --comparison")
    parser.add_argument("--incumbent", default="velo", help="the incumbent's key in --comparison")
    parser.add_argument("--study", help="canonical-cpu-v1 study with the incumbent as velo-100")
    parser.add_argument("--candidate-study", help="canonical-cpu-v1 study of the candidate's velo-100")
    parser.add_argument("--transformer-tasks",
                        help="meta/experiments/transformer_tasks results directory (results.json), for the goal "
                        "on ood-valid-v1's ViT/GPT tasks")
    parser.add_argument("--transformer-label", default="velo_bundled",
                        help="the theta's label in --transformer-tasks (default: %(default)s)")
    parser.add_argument("--goals", action="store_true",
                        help="only report the goals of the incumbent (--incumbent in --comparison, "
                        "velo-100 in --study), e.g. for the shipped theta; no gate")
    parser.add_argument("--out", help="write the tables here (markdown)")
    args = parser.parse_args(argv)
    if args.goals:
        if not (args.comparison or args.study or args.transformer_tasks) or args.candidate_study \
                or args.meta_validation:
            parser.error("--goals takes --comparison, --study and --transformer-tasks (the incumbent's), "
                         "nothing else")
        from evaluation.scoring import load_runs

        comparison = json.loads(pathlib.Path(args.comparison, "results.json").read_text()) \
            if args.comparison else None
        runs = load_runs(args.study) if args.study else None
        goal_criteria = goals(comparison, args.incumbent, runs, transformer_tasks=_transformer_tasks(args),
                              transformer_label=args.transformer_label)
        text = markdown([], goal_criteria, f"Goals of {args.incumbent!r} (reported, not gating):")
        print(text)
        if args.out:
            pathlib.Path(args.out).write_text(text)
        return 0 if all(c.passed for c in goal_criteria) else 1
    if not (args.meta_validation or args.comparison or args.study):
        parser.error("give at least one of --meta-validation, --comparison, --study")
    if bool(args.study) != bool(args.candidate_study):
        parser.error("--study and --candidate-study go together (the incumbent's and the candidate's)")
    from evaluation.scoring import load_runs

    runs = None
    if args.study:
        incumbent_runs, candidate_runs = load_runs(args.study), load_runs(args.candidate_study)
        if not incumbent_runs or not candidate_runs:
            parser.error("no finished runs under a study's runs/ (a report's runs.tar.gz must be unpacked "
                         "first: tar -xzf runs.tar.gz -C DIR)")
        runs = combined_runs(incumbent_runs, candidate_runs)
    comparison = json.loads(pathlib.Path(args.comparison, "results.json").read_text()) if args.comparison else None
    scores = json.loads(pathlib.Path(args.meta_validation).read_text()) if args.meta_validation else None
    criteria = gate(scores, comparison, args.candidate, args.incumbent, runs)
    goal_criteria = goals(comparison, args.candidate, runs, VELO_ALGORITHM + CANDIDATE_SUFFIX,
                          _transformer_tasks(args), args.transformer_label) \
        if comparison is not None or runs is not None or args.transformer_tasks else []
    text = markdown(criteria, goal_criteria)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0 if verdict(criteria) == "ships" else 1


if __name__ == "__main__":
    sys.exit(main())
