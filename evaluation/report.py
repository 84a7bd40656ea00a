"""The report of a study directory: markdown tables and PNG plots from its finished run logs."""

import json
import math
import pathlib

import numpy as np

from evaluation import plots, scoring

METRIC_LABELS = {"train_loss": "train loss", "validation_loss": "validation loss"}
CONDITION_LABELS = {"steps": "step budget (clock: steps)", "time": "wall-clock budget (clock: training seconds)"}


def _fmt(value, digits=3):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return f"{value:.{digits}g}"


def _rate(submission):
    """The learning rate in a grid submission's name ("muon-lr0.003" -> "0.003"); "default" for the default."""
    if submission is None:
        return "—"
    return submission.rsplit("-lr", 1)[1] if "-lr" in submission else "default"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _median_curve(runs, clock, metric):
    """Median over trials of an eval metric, on the first run's evaluation points."""
    series = [[(r[clock], r[metric]) for r in run.evals if r.get(metric) is not None] for run in runs]
    length = min(len(s) for s in series)
    if length == 0:
        return np.array([]), np.array([])
    x = np.median([[p[0] for p in s[:length]] for s in series], axis=0)
    y = np.median([[p[1] for p in s[:length]] for s in series], axis=0)
    return x, y


def build_report(out_dir):
    """Write `out_dir/report/report.md` and its PNGs; returns the markdown path."""
    out_dir = pathlib.Path(out_dir)
    runs = scoring.load_runs(out_dir)
    if not runs:
        raise FileNotFoundError(f"No finished runs under {out_dir / 'runs'}; run a study first.")
    report_dir = out_dir / "report"
    report_dir.mkdir(exist_ok=True)
    study = json.loads((out_dir / "study.json").read_text()) if (out_dir / "study.json").exists() else {}
    scored = scoring.scored_runs(runs)
    workloads = sorted({r.workload for r in runs})
    lines = ["# Study report", ""]
    if study:
        lines += ["Command(s): " + ", ".join(f"`{c}`" for c in study.get("commands", [])), "",
                  f"Suite `{study.get('suite')}`, {study.get('trials')} trials, machine: {study.get('machine', '?')}, "
                  f"backend {study.get('backend')}, Python {study.get('python')}, keras {study.get('keras')}.", ""]
    diverged = [f"{r.workload}/{r.submission}/trial{r.trial}" for r in runs if r.end["status"] != "finished"]
    lines += [f"{len(runs)} finished runs over {len(workloads)} workloads; diverged: "
              f"{', '.join(diverged) if diverged else 'none'}.", "",
              "What is measured: the training loss is the mean of the training batches' losses in training "
              "mode (the loss each optimizer minimised, BatchNorm on batch statistics); the validation loss "
              "is measured in inference mode on the held-out split, BatchNorm with its moving statistics "
              "(momentum as the model sets it).", ""]

    lines += ["## Benchmark scores (AlgoPerf)", "",
              "B = integral of the performance profile over tau in [1, 4] / 3 (1 = fastest everywhere). "
              "Targets: per workload, the best over algorithms of the median metric at 75% of the budget.", ""]
    score_rows, profile_panels = {}, {"steps": [], "time": []}
    detail = []
    def pool(condition, metric):  # the scored runs and each alternative tuned over its grid for this metric
        return scored + scoring.tuned_alternatives(runs, condition, metric)

    for condition in ("steps", "time"):
        for metric in scoring.METRICS:
            targets = scoring.targets(pool(condition, metric), condition, metric)
            ttt = scoring.time_to_target(pool(condition, metric), condition, metric, targets)
            scores = scoring.benchmark_scores(ttt)
            column = f"{condition} / {METRIC_LABELS[metric]}"
            for algorithm, score in scores.items():
                score_rows.setdefault(algorithm, {})[column] = score
            taus, profiles = scoring.performance_profiles(ttt)
            profile_panels[condition].append((f"{condition} budget, {METRIC_LABELS[metric]}", taus, profiles))
            clock = "steps" if condition == "steps" else "seconds"
            detail += [f"### Time to target: {CONDITION_LABELS[condition]}, {METRIC_LABELS[metric]}", "",
                       _table(["algorithm"] + workloads,
                              [["**target**"] + [_fmt(targets.get(w)) for w in workloads]]
                              + [[a] + [_fmt(ttt[a].get(w, math.nan), 4) for w in workloads] for a in sorted(ttt)]),
                       "", f"({clock} to reach the target; inf = missed within the budget)", ""]
    columns = [f"{c} / {METRIC_LABELS[m]}" for c in ("steps", "time") for m in scoring.METRICS]
    lines += [_table(["algorithm"] + columns,
                     [[a] + [_fmt(score_rows[a].get(c, math.nan)) for c in columns] for a in sorted(score_rows)]), ""]
    for condition in ("steps", "time"):
        name = f"profiles_{condition}.png"
        plots.performance_profiles(report_dir / name, profile_panels[condition])
        lines += [f"![performance profiles, {condition} budget]({name})", ""]
    lines += detail

    grids = scoring.alternative_grids(runs)
    if grids:
        lines += ["## The alternatives tuned over their grids", "",
                  "Each alternative's tuned view takes, per workload, budget and metric, the learning rate of "
                  f"its grid with the lowest median metric at the end of the budget ({', '.join(grids)}). "
                  "The rates chosen:", ""]
        rows = []
        for condition in ("steps", "time"):
            for metric in scoring.METRICS:
                chosen = {(r.algorithm, r.workload): r.tuned_from
                          for r in scoring.tuned_alternatives(runs, condition, metric)}
                for title in grids:
                    rows.append([title, f"{condition} / {METRIC_LABELS[metric]}"]
                                + [_rate(chosen.get((title, w))) for w in workloads])
        lines += [_table(["algorithm", "budget / metric"] + workloads, rows), ""]

    lines += ["## Quality at the end of the budget (mean ± std over trials)", ""]
    for condition in ("steps", "time"):
        for metric in scoring.METRICS:
            table = scoring.quality_table(pool(condition, metric), condition, metric)
            lines += [f"### {CONDITION_LABELS[condition]}, {METRIC_LABELS[metric]}", "",
                      _table(["algorithm"] + workloads,
                             [[a] + [f"{_fmt(table[a][w][0])} ± {_fmt(table[a][w][1], 2)}" if w in table[a] else "—"
                                     for w in workloads] for a in sorted(table)]), ""]

    timed = scoring.runs_in(scored, "time")
    if timed:
        split = scoring.time_split_table(timed)
        lines += ["## Where the wall-clock budget goes (median over trials)", "",
                  "Per run of the wall-clock condition: seconds of the first call (compiling the train "
                  "step, and that step), milliseconds per step after it, and steps trained within the "
                  "budget (training seconds only; evaluations excluded).", "",
                  _table(["algorithm"] + workloads,
                         [[a] + [f"{_fmt(split[a][w][0], 2)} s + {_fmt(1e3 * split[a][w][1], 2)} ms × "
                                 f"{split[a][w][2]:.0f}" if w in split[a] else "—" for w in workloads]
                          for a in sorted(split)]), ""]

    speedups = scoring.speedups_over_tuned_adam(runs + scoring.tuned_alternatives(runs, "steps", "train_loss"))
    if speedups:
        lines += ["## Speed-up over learning-rate-tuned Adam (VeLOdrome view, step budget)", "",
                  "Steps the lower envelope of the EMA(0.95)-smoothed training-loss curves of constant-rate Adam "
                  f"over the grid needs to reach each optimizer's final smoothed training loss, divided by the "
                  "steps that optimizer used (median over trials).", ""]
        num_steps = {r.workload: r.num_steps for r in runs}
        bounds = {w: scoring.speedup_lower_bound(runs, w, num_steps[w]) for w in workloads}

        def shown(value, workload):
            return f"> {bounds[workload]:.3g}" if math.isinf(value) else _fmt(value)

        def at_least(values, level):  # an unbounded speed-up counts when its lower bound reaches the level
            hits = [v >= level if not math.isinf(v) else bounds[w] >= level for w, v in values.items()]
            return f"{np.mean(hits):.0%}"

        rows = []
        for algorithm in sorted(speedups):
            by_workload = speedups[algorithm]
            rows.append([algorithm] + [shown(by_workload[w], w) if w in by_workload else "—" for w in workloads]
                        + [at_least(by_workload, level) for level in (1, 4, 16)])
        lines += [_table(["algorithm"] + workloads + ["≥1x", "≥4x", "≥16x"], rows), "",
                  "`> b`: tuned Adam's envelope does not reach that loss within its grid runs, which are "
                  "`b` times as long; the speed-up is at least `b`.", ""]
        plots.speedup_distribution(report_dir / "speedup.png", speedups)
        lines += ["![speed-up distribution](speedup.png)", ""]

    for metric in scoring.METRICS:
        sensitivity = scoring.prompt_sensitivity(runs, metric)
        if sensitivity:
            fractions = sorted({f for by_f in sensitivity.values() for f in by_f}, reverse=True)
            lines += [f"## VeLO step-prompt sensitivity: {METRIC_LABELS[metric]} at the end of the step budget", "",
                      "VeLO told `fraction × num_steps` steps, trained for num_steps.", "",
                      _table(["workload"] + [f"prompt {f:.0%}" for f in fractions],
                             [[w] + [f"{_fmt(sensitivity[w][f][0])} ± {_fmt(sensitivity[w][f][1], 2)}"
                                     if f in sensitivity[w] else "—" for f in fractions] for w in sorted(sensitivity)]),
                      ""]

    for condition, clock, label in (("steps", "step", "step"), ("time", "train_seconds", "training seconds")):
        curves = {}
        for workload, by_algorithm in scoring.group_runs(
                scoring.runs_in(pool(condition, "validation_loss"), condition)).items():
            curves[workload] = {a: _median_curve(rs, clock, "validation_loss") for a, rs in by_algorithm.items()}
        name = f"curves_{condition}.png"
        plots.loss_curves(report_dir / name, curves, label, "validation loss (median over trials)")
        lines += [f"## Validation loss curves, {CONDITION_LABELS[condition]}", "", f"![loss curves]({name})", ""]

    path = report_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
