"""The ship gate: whether a meta-trained theta may replace the bundled weights.

    python -m meta.ship_gate [--study STUDY_DIR] [--comparison COMPARE_DIR] \
        [--meta-validation SCORES.json] [--candidate NAME] [--out GATE.md]

A theta ships as `weights="bundled"` only if every criterion holds; else
the bootstrap stays, and the model card says which failed. The inputs are
the artefacts the three evaluations write:

* `STUDY_DIR`: a `python -m evaluation` study of `canonical-cpu-v1` with
  the candidate as `velo-100` (3 trials), the baselines and the Adam grid:
  median speed-up over learning-rate-tuned Adam >= 1.3; AlgoPerf
  benchmark score on the step budget >= 0.90 (training loss) and >= 0.80
  (validation loss); no workload whose training loss at the end of the
  step budget is more than 10% above constant Adam(1e-3)'s (the grid's
  `adam-lr0.001`).
* `COMPARE_DIR`: `examples/compare.py --velo-weights bundled,NAME=PATH`
  (the bootstrap first, the candidate as NAME): no example where the
  candidate's validation metric is worse than the bootstrap's by more than
  `EXAMPLE_TOLERANCE` (one seed each: a hair's difference is noise), and
  on every KerasHub example a final training loss at or below AdamW's at
  Keras' defaults.
* `SCORES.json`: `python -m meta.evaluate --theta CANDIDATE --against
  bundled --json SCORES.json` (both held-out sets): on each set `final`
  at least 5% below the bootstrap's and beyond two paired standard
  errors, and no task ending more than 10% above its Adam(1e-3)
  reference (`meta.validation.ABOVE_ADAM`).

Each evaluation costs CPU time (the study ~1.5 h, the examples ~40
minutes, meta-validation minutes), and one failed criterion decides, so
any of the three may be left out: its criteria are reported as not run
(`passed` None), and the verdict is "does not ship" as soon as one that
ran fails, "undecided" while none failed and some did not run.

`gate(...)` is pure (the criteria from loaded artefacts) and returns one
`Criterion` per check.
"""

import argparse
import dataclasses
import json
import math
import pathlib
import sys

MIN_MEDIAN_SPEEDUP = 1.3
MIN_SCORE_TRAIN = 0.90
MIN_SCORE_VALIDATION = 0.80
MAX_ABOVE_ADAM = 1.10
MIN_META_VALIDATION_GAIN = 0.05
EXAMPLE_TOLERANCE = 0.01
KERAS_HUB_EXAMPLES = ("keras_hub_gpt2", "keras_hub_vit")
VELO_ALGORITHM = "VeLO 100%"
ADAM_1E3 = "Adam lr=0.001"  # the grid's constant-rate run (evaluation.submissions)


@dataclasses.dataclass(frozen=True)
class Criterion:
    """One check: what was measured against what it had to reach."""

    name: str
    value: str
    required: str
    passed: bool | None  # None: its evaluation was not run


def canonical_criteria(runs, algorithm=VELO_ALGORITHM):
    """The `canonical-cpu-v1` checks from a study's runs (`evaluation.scoring.load_runs`)."""
    from evaluation import scoring

    criteria = []
    speedups = scoring.speedups_over_tuned_adam(runs).get(algorithm, {})
    median = float(_median(list(speedups.values()))) if speedups else math.nan
    worst = sorted(speedups, key=speedups.get)[:3]
    criteria.append(Criterion(
        "canonical-cpu-v1: median speed-up over tuned Adam", f"{median:.3g} (lowest: "
        + ", ".join(f"{w} {speedups[w]:.2f}" for w in worst) + ")",
        f">= {MIN_MEDIAN_SPEEDUP}", median >= MIN_MEDIAN_SPEEDUP))
    for metric, minimum in (("train_loss", MIN_SCORE_TRAIN), ("validation_loss", MIN_SCORE_VALIDATION)):
        runs_steps = scoring.runs_in(scoring.scored_runs(runs), "steps")
        targets = scoring.targets(runs_steps, "steps", metric)
        times = scoring.time_to_target(runs_steps, "steps", metric, targets)
        score = scoring.benchmark_scores(times).get(algorithm, math.nan)
        criteria.append(Criterion(f"canonical-cpu-v1: benchmark score, step budget, {metric}",
                                  f"{score:.3f}", f">= {minimum}", score >= minimum))
    quality = scoring.quality_table(runs, "steps", "train_loss")
    ratios = {w: quality[algorithm][w][0] / quality[ADAM_1E3][w][0]
              for w in quality.get(algorithm, {}) if w in quality.get(ADAM_1E3, {})}
    above = sorted((w for w, r in ratios.items() if r > MAX_ABOVE_ADAM), key=lambda w: -ratios[w])
    criteria.append(Criterion(
        "canonical-cpu-v1: workloads > 10% above Adam(1e-3)'s training loss",
        f"{len(above)} of {len(ratios)}" + (f" ({', '.join(above)})" if above else "")
        + f"; highest ratio {max(ratios.values()):.2f}" if ratios else "no Adam(1e-3) runs",
        "0", bool(ratios) and not above))
    return criteria


def comparison_criteria(results, candidate):
    """The `examples/compare.py` checks from its `results.json` (`candidate`: the other VeLO's key)."""
    examples = results["examples"]
    worse, hub = [], []
    for example, result in examples.items():
        other = result["other_velos"].get(candidate)
        if other is None:
            raise KeyError(f"{candidate!r} is not among the compared VeLO weights of {example}: "
                           f"{sorted(result['other_velos'])}.")
        reference, value = result["velo"]["metric"], other["metric"]
        sign = 1 if result["metric"]["higher_is_better"] else -1
        if not math.isfinite(value) or sign * (value - reference) < -EXAMPLE_TOLERANCE * abs(reference):
            worse.append(f"{example} {value:.4g} vs {reference:.4g}")
        if example in KERAS_HUB_EXAMPLES:
            hub.append((example, other["final_train_loss"], result["adamw"]["final_train_loss"]))
    missing = [e for e in KERAS_HUB_EXAMPLES if e not in examples]
    return [
        Criterion("examples/compare.py: examples where the candidate's validation metric is worse "
                  f"than the bootstrap's (by > {EXAMPLE_TOLERANCE:.0%})",
                  f"{len(worse)} of {len(examples)}" + (f" ({'; '.join(worse)})" if worse else ""),
                  "0", not worse),
        Criterion("examples/compare.py: KerasHub examples, final training loss vs AdamW's defaults",
                  "; ".join(f"{e} {mine:.4g} vs {theirs:.4g}" for e, mine, theirs in hub)
                  + (f"; missing {', '.join(missing)}" if missing else ""),
                  "<= AdamW on each", not missing and all(mine <= theirs for _, mine, theirs in hub)),
    ]


def meta_validation_criteria(scores):
    """The meta-validation checks from `python -m meta.evaluate --against bundled --json` output."""
    criteria = []
    for name, candidate in scores["scores"].items():
        bootstrap = scores["against"]["scores"][name]
        difference, error = scores["judgement"][name]["final"]
        relative = difference / bootstrap["final"]
        criteria.append(Criterion(
            f"{name}: final against the bootstrap", f"{relative:+.1%} ({difference:+.4f} ± {error:.4f})",
            f"<= -{MIN_META_VALIDATION_GAIN:.0%} and beyond 2 paired SE",
            relative <= -MIN_META_VALIDATION_GAIN and difference < -2 * error))
        above = candidate.get("above_adam")
        criteria.append(Criterion(
            f"{name}: tasks > 10% above their Adam(1e-3) reference",
            "no references" if above is None else f"{len(above)}" + (f" ({', '.join(above)})" if above else ""),
            "0", above is not None and not above))
    return criteria


NOT_RUN = {
    "canonical": ("canonical-cpu-v1 (3 trials): median speed-up, benchmark scores, workloads above "
                  f"Adam(1e-3)", f">= {MIN_MEDIAN_SPEEDUP}; >= {MIN_SCORE_TRAIN} / {MIN_SCORE_VALIDATION}; 0"),
    "comparison": ("examples/compare.py: examples worse than the bootstrap, KerasHub examples vs AdamW",
                   "0; <= AdamW on each"),
    "meta_validation": ("meta-validation on both held-out sets: final against the bootstrap, tasks above "
                        "Adam(1e-3)", f"<= -{MIN_META_VALIDATION_GAIN:.0%} beyond 2 paired SE; 0"),
}


def gate(runs, comparison, candidate, scores):
    """Every criterion (`Criterion`), from the loaded artefacts; an artefact given as None
    (its evaluation not run) is one criterion with `passed` None."""
    def or_not_run(key, artefact, criteria):
        if artefact is None:
            return [Criterion(NOT_RUN[key][0], "not run", NOT_RUN[key][1], None)]
        return criteria(artefact)

    return (or_not_run("canonical", runs, canonical_criteria)
            + or_not_run("comparison", comparison, lambda c: comparison_criteria(c, candidate))
            + or_not_run("meta_validation", scores, meta_validation_criteria))


def verdict(criteria):
    """"ships" (every criterion ran and holds), "does not ship" (one that ran fails) or "undecided"."""
    if any(c.passed is False for c in criteria):
        return "does not ship"
    return "ships" if all(c.passed for c in criteria) else "undecided"


def markdown(criteria):
    marks = {True: "pass", False: "**fail**", None: "not run"}
    lines = ["| criterion | measured | required | |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.value} | {c.required} | {marks[c.passed]} |" for c in criteria]
    ran = [c for c in criteria if c.passed is not None]
    return ("\n".join(lines) + f"\n\n{sum(bool(c.passed) for c in ran)} of {len(ran)} criteria run hold"
            + (f" ({len(criteria) - len(ran)} not run)" if len(ran) < len(criteria) else "")
            + f": the candidate {verdict(criteria)}.\n")


def _median(values):
    import numpy as np

    return np.median(values)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m meta.ship_gate", description=__doc__.split("\n")[0])
    parser.add_argument("--study", help="canonical-cpu-v1 study directory (left out: not run)")
    parser.add_argument("--comparison", help="examples/compare.py output directory (left out: not run)")
    parser.add_argument("--candidate", default="candidate", help="the candidate's name in --comparison")
    parser.add_argument("--meta-validation", help="python -m meta.evaluate --json output (left out: not run)")
    parser.add_argument("--out", help="write the table here (markdown)")
    args = parser.parse_args(argv)
    if not (args.study or args.comparison or args.meta_validation):
        parser.error("give at least one of --study, --comparison, --meta-validation")
    from evaluation.scoring import load_runs

    runs = None
    if args.study:
        runs = load_runs(args.study)
        if not runs:
            parser.error(f"no finished runs under {args.study}/runs (a report's runs.tar.gz must be "
                         "unpacked first: tar -xzf runs.tar.gz -C DIR)")
    criteria = gate(runs,
                    json.loads(pathlib.Path(args.comparison, "results.json").read_text())
                    if args.comparison else None,
                    args.candidate,
                    json.loads(pathlib.Path(args.meta_validation).read_text())
                    if args.meta_validation else None)
    text = markdown(criteria)
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)
    return 0 if verdict(criteria) == "ships" else 1


if __name__ == "__main__":
    sys.exit(main())
