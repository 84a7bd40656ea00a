"""The score: pure functions of run logs (no training, no plotting).

Conventions. A *condition* is "steps" (budget: the workload's `num_steps`;
clock: the step count) or "time" (budget: `max_seconds`; clock: training
seconds). A *metric* is "train_loss" or "validation_loss" (lower is
better). Runs are `RunLog`s read by `load_runs`; the AlgoPerf view
(protocol section 2) is `targets` -> `time_to_target` -> `benchmark_scores`
/ `performance_profiles`; the VeLOdrome view (section 1) is
`speedups_over_tuned_adam`.
"""

import dataclasses
import json
import math
import pathlib

import numpy as np

TARGET_FRACTION = 0.75
CLOCKS = {"steps": "step", "time": "train_seconds"}
BUDGETS = {"steps": "num_steps", "time": "max_seconds"}
METRICS = ("train_loss", "validation_loss")


@dataclasses.dataclass(frozen=True)
class RunLog:
    """A finished run: its `start` header, `eval` records, `train` records and `end` record."""

    header: dict
    evals: tuple
    curve: tuple
    end: dict

    def __getattr__(self, name):
        header = object.__getattribute__(self, "header")
        if name in header:
            return header[name]
        raise AttributeError(name)

    def budget(self, condition):
        return self.header[BUDGETS[condition]]


def read_run(path):
    """Parse one finished `.jsonl` log; raises ValueError if it has no `end` record."""
    records = [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
    if not records or records[0].get("type") != "start" or records[-1].get("type") != "end":
        raise ValueError(f"{path} is not a finished run log (no start or end record).")
    return RunLog(
        records[0],
        tuple(r for r in records if r["type"] == "eval"),
        tuple(r for r in records if r["type"] == "train"),
        records[-1],
    )


def load_runs(out_dir):
    """Every finished run under `out_dir/runs` (`.partial` logs of interrupted runs are ignored)."""
    return [read_run(p) for p in sorted(pathlib.Path(out_dir).glob("runs/*/*/*.jsonl"))]


SCORED_KINDS = ("baseline", "velo")


def runs_in(runs, condition, kinds=None):
    """Runs that take part in `condition` (and are of one of `kinds`, if given)."""
    return [r for r in runs if condition in r.conditions and (kinds is None or r.kind in kinds)]


def scored_runs(runs):
    """The runs the AlgoPerf view compares: baselines and VeLO at its scored prompts."""
    return [r for r in runs if r.kind in SCORED_KINDS]


def alternative_grids(runs):
    """`{"<title> tuned": submission names}` for each alternative with grid runs (kind
    "alternative_grid", named `<default>-lr<rate>`): its default's runs and its grid's."""
    groups = {}
    for run in runs:
        if run.kind == "alternative_grid":
            title = run.algorithm.rsplit(" lr=", 1)[0] + " tuned"
            groups.setdefault(title, {run.submission.rsplit("-lr", 1)[0]}).add(run.submission)
    return {title: tuple(sorted(names)) for title, names in groups.items()}


def tuned_alternatives(runs, condition, metric):
    """Each alternative tuned over its grid, as runs named "<title> tuned".

    Per workload, the grid point (its default included) with the lowest
    median over trials of `metric` at the end of `condition`'s budget (a
    diverged or missing value counts as worst); a workload where some grid
    point has no run gets no tuned view. The runs keep their header, with
    `algorithm` renamed, `kind` "baseline" and `tuned_from` the submission chosen.
    """
    by_workload = {}
    for run in runs_in(runs, condition):
        by_workload.setdefault(run.workload, {}).setdefault(run.submission, []).append(run)

    def final(submission_runs):
        value = _median([value_at(r, condition, metric, r.budget(condition)) for r in submission_runs])
        return math.inf if math.isnan(value) else value

    out = []
    for title, names in alternative_grids(runs).items():
        for by_submission in by_workload.values():
            if not all(name in by_submission for name in names):
                continue
            best = min(names, key=lambda name: final(by_submission[name]))
            out += [dataclasses.replace(r, header=dict(r.header, algorithm=title, kind="baseline", tuned_from=best))
                    for r in by_submission[best]]
    return out


def group_runs(runs):
    """`{workload: {algorithm: [runs]}}`."""
    out = {}
    for run in runs:
        out.setdefault(run.workload, {}).setdefault(run.algorithm, []).append(run)
    return out


def value_at(run, condition, metric, limit):
    """The metric of the last evaluation at or before `limit` on the condition's clock (nan if none)."""
    clock = CLOCKS[condition]
    values = [r[metric] for r in run.evals if r[clock] <= limit and r.get(metric) is not None]
    return float(values[-1]) if values else math.nan


def _median(values):
    finite_or_inf = [v for v in values if not math.isnan(v)]
    return float(np.median(finite_or_inf)) if finite_or_inf else math.nan


def targets(runs, condition, metric, fraction=TARGET_FRACTION):
    """Per workload: the best over algorithms of the median (over trials) metric at `fraction` of the budget."""
    out = {}
    for workload, by_algorithm in group_runs(runs_in(runs, condition)).items():
        medians = [
            _median([value_at(r, condition, metric, fraction * r.budget(condition)) for r in algorithm_runs])
            for algorithm_runs in by_algorithm.values()
        ]
        medians = [m for m in medians if not math.isnan(m)]
        out[workload] = min(medians) if medians else math.nan
    return out


def trial_time_to_target(run, condition, metric, target):
    """Clock value of the first evaluation within budget whose metric reaches `target`; inf if none."""
    clock = CLOCKS[condition]
    for record in run.evals:
        if record[clock] > run.budget(condition):
            break
        value = record.get(metric)
        if value is not None and value <= target:
            return float(record[clock])
    return math.inf


def time_to_target(runs, condition, metric, workload_targets):
    """`{algorithm: {workload: median over trials of time (or steps) to target}}`, inf where missed."""
    out = {}
    for workload, by_algorithm in group_runs(runs_in(runs, condition)).items():
        target = workload_targets.get(workload, math.nan)
        for algorithm, algorithm_runs in by_algorithm.items():
            times = [trial_time_to_target(r, condition, metric, target) for r in algorithm_runs]
            out.setdefault(algorithm, {})[workload] = float(np.median(times))
    return out


def performance_ratios(time_to_target, max_tau=4.0):
    """`{algorithm: {workload: t / best t}}`; inf where missed, where nobody reached, or above `max_tau`."""
    workloads = sorted({w for times in time_to_target.values() for w in times})
    best = {w: min(times.get(w, math.inf) for times in time_to_target.values()) for w in workloads}
    ratios = {}
    for algorithm, times in time_to_target.items():
        ratios[algorithm] = {}
        for w in workloads:
            t = times.get(w, math.inf)
            if math.isinf(best[w]) or math.isinf(t):
                ratio = math.inf
            else:
                ratio = t / best[w] if best[w] > 0 else (1.0 if t == 0 else math.inf)
            ratios[algorithm][w] = ratio if ratio <= max_tau else math.inf
    return ratios


def performance_profiles(time_to_target, max_tau=4.0, num_points=100):
    """`(taus, {algorithm: rho})`: rho(tau) = fraction of workloads with ratio <= tau, on a linear tau grid."""
    taus = np.linspace(1.0, max_tau, num_points)
    ratios = performance_ratios(time_to_target, max_tau)
    profiles = {}
    for algorithm, by_workload in ratios.items():
        values = np.array(list(by_workload.values()), dtype=float)
        profiles[algorithm] = np.array([np.mean(values <= tau) if len(values) else 0.0 for tau in taus])
    return taus, profiles


def benchmark_scores(time_to_target, max_tau=4.0, num_points=100):
    """AlgoPerf benchmark score per algorithm: the integral of its performance profile over [1, max_tau] / (max_tau - 1).

    `time_to_target` maps algorithm -> workload -> time (`math.inf` when the
    target was missed). Ratios to the per-workload best above `max_tau` count
    as missed; the integral is the trapezoidal rule on `num_points` linearly
    spaced tau values. An algorithm fastest on every workload scores 1.
    """
    if max_tau <= 1:
        raise ValueError(f"max_tau must exceed 1, got {max_tau!r}.")
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2, got {num_points!r}.")
    taus, profiles = performance_profiles(time_to_target, max_tau, num_points)
    return {
        algorithm: float(np.sum((rho[1:] + rho[:-1]) * np.diff(taus)) / 2.0 / (max_tau - 1.0))
        for algorithm, rho in profiles.items()
    }


def quality_table(runs, condition, metric):
    """`{algorithm: {workload: (mean, std)}}` of the metric at the end of the budget, over trials."""
    out = {}
    for workload, by_algorithm in group_runs(runs_in(runs, condition)).items():
        for algorithm, algorithm_runs in by_algorithm.items():
            values = np.array([value_at(r, condition, metric, r.budget(condition)) for r in algorithm_runs])
            values = values[~np.isnan(values)]
            stats = (float(values.mean()), float(values.std())) if len(values) else (math.nan, math.nan)
            out.setdefault(algorithm, {})[workload] = stats
    return out


def time_split(run):
    """`(first_call_s, step_s, steps)`: where a run's training seconds went.

    `step_s` is the steady time per step (the slope of training seconds
    over the logged steps after the first), `first_call_s` the seconds of
    the first call beyond that: compiling the train step (tracing, XLA)
    and the step itself; `steps` the steps the run trained. NaNs when fewer
    than two training records were logged.
    """
    points = [(r["step"], r["train_seconds"]) for r in run.curve]
    if len(points) < 2 or points[-1][0] == points[0][0]:
        return math.nan, math.nan, run.end.get("steps", math.nan)
    (first_step, first_seconds), (last_step, last_seconds) = points[0], points[-1]
    step_s = (last_seconds - first_seconds) / (last_step - first_step)
    return first_seconds - (first_step - 1) * step_s, step_s, run.end.get("steps", last_step)


def time_split_table(runs):
    """`{algorithm: {workload: (first_call_s, step_s, steps)}}`, medians over trials."""
    out = {}
    for workload, by_algorithm in group_runs(runs).items():
        for algorithm, algorithm_runs in by_algorithm.items():
            splits = np.array([time_split(r) for r in algorithm_runs], float)
            out.setdefault(algorithm, {})[workload] = tuple(float(np.nanmedian(c)) if not np.isnan(c).all()
                                                            else math.nan for c in splits.T)
    return out


def ema_curve(run):
    """`(steps, EMA-smoothed training loss)` of a run, as arrays."""
    points = [(r["step"], r["train_loss_ema"]) for r in run.curve if r.get("train_loss_ema") is not None]
    steps, losses = zip(*points) if points else ((), ())
    return np.array(steps, float), np.array(losses, float)


def tuned_adam_envelope(runs, workload):
    """`(steps, loss)`: at each logged step the lowest EMA training loss over the Adam learning-rate grid.

    Grid runs of the same learning rate are averaged first (median over trials).
    """
    by_rate = {}
    for run in runs:
        if run.kind == "adam_grid" and run.workload == workload:
            by_rate.setdefault(run.algorithm, []).append(ema_curve(run))
    curves = []
    for rate_curves in by_rate.values():
        length = min(len(s) for s, _ in rate_curves)
        if length:
            steps = rate_curves[0][0][:length]
            curves.append((steps, np.median([loss[:length] for _, loss in rate_curves], axis=0)))
    if not curves:
        return np.array([]), np.array([])
    length = min(len(s) for s, _ in curves)
    steps = curves[0][0][:length]
    losses = np.array([loss[:length] for _, loss in curves])
    losses = np.where(np.isnan(losses), np.inf, losses)
    return steps, losses.min(axis=0)


def steps_to_reach(steps, envelope, loss):
    """Steps the envelope needs to reach `loss`, interpolating linearly between log points; inf if never."""
    below = np.nonzero(envelope <= loss)[0]
    if len(below) == 0:
        return math.inf
    i = below[0]
    if i == 0:
        return float(steps[0])
    s0, s1, l0, l1 = steps[i - 1], steps[i], envelope[i - 1], envelope[i]
    return float(s0 + (s1 - s0) * (l0 - loss) / (l0 - l1)) if l0 != l1 else float(s1)


def speedups_over_tuned_adam(runs):
    """VeLOdrome speed-up `{algorithm: {workload: speed-up}}` in the step condition.

    For each run of a non-grid algorithm, its final EMA training loss `L`
    after `N` steps; speed-up = (steps the tuned-Adam envelope needs to reach
    `L`) / `N`, median over trials. inf means the envelope never reaches `L`
    within the grid's steps (the speed-up is at least `grid_steps(runs,
    workload) / N`); values below 1 mean slower than tuned Adam.
    """
    out = {}
    for run in runs_in(runs, "steps"):
        if run.kind in ("adam_grid", "alternative_grid"):  # a grid point counts only through its tuned view
            continue
        steps, envelope = tuned_adam_envelope(runs, run.workload)
        run_steps, run_losses = ema_curve(run)
        in_budget = run_steps <= run.num_steps
        if not len(steps) or not in_budget.any():
            continue
        final_step, final_loss = run_steps[in_budget][-1], run_losses[in_budget][-1]
        speedup = steps_to_reach(steps, envelope, final_loss) / final_step
        out.setdefault(run.algorithm, {}).setdefault(run.workload, []).append(speedup)
    return {a: {w: float(np.median(v)) for w, v in by_w.items()} for a, by_w in out.items()}


def grid_steps(runs, workload):
    """The last step of the tuned-Adam envelope of `workload` (0 without grid runs)."""
    steps, _ = tuned_adam_envelope(runs, workload)
    return float(steps[-1]) if len(steps) else 0.0


def speedup_lower_bound(runs, workload, steps_used):
    """What an inf speed-up means: the envelope needs more than `grid_steps / steps_used`."""
    return grid_steps(runs, workload) / steps_used


def prompt_sensitivity(runs, metric):
    """`{workload: {prompt fraction: (mean, std)}}` of VeLO's end-of-budget metric in the step condition."""
    out = {}
    for run in runs_in(runs, "steps"):
        if run.kind in ("velo", "velo_prompt") and run.prompt_fraction is not None:
            value = value_at(run, "steps", metric, run.num_steps)
            out.setdefault(run.workload, {}).setdefault(run.prompt_fraction, []).append(value)
    return {
        w: {f: (float(np.nanmean(v)), float(np.nanstd(v))) for f, v in sorted(by_f.items(), reverse=True)}
        for w, by_f in out.items()
    }
