"""Shared machinery of the meta-training comparisons: variants trained at equal CPU time, then scored.

`benchmarks/meta_estimators.py` (estimators and parts of theta) and
`benchmarks/meta_objectives.py` (meta-objectives and start points) each
define their variants as `MetaTrainingConfig`s and hand them here:

* `warm_compilation_cache(configs, init)`: compiles every program the
  variants run on every config they can meet into JAX's persistent cache,
  so that the comparison measures learning at steady state, not
  compilation (which a long run amortises);
* `run_variant(config, directory, init)`: trains it for `config.minutes`
  of training time (meta-validation excluded), resumable;
* `summarise(out, variants, minutes)`: each variant's change on every
  meta-validation set at its last validation within `minutes`, against
  its own start, with the paired standard error across tasks;
* `plot(curves, path)`: the change in percent against training minutes.
"""

import pathlib
import time


def warm_compilation_cache(configs, init, workers=2):
    """Compiles the programs each distinct (part of theta, estimator) of `configs` runs on
    every member config, and the scoring program on every validation task. Returns seconds."""
    from meta.learner import ESTIMATORS
    from meta.train import build_subspace
    from meta.workers import make_pool

    seen, started = set(), time.perf_counter()

    def compile_on(subspace, config, arms, gradients, configs_to_compile):
        pool = make_pool((subspace, config.distribution, config.seed, config.sigma,
                          config.unroll_truncation, config.max_loss_ratio, arms, gradients), workers)
        try:
            pool.compile_tasks(configs_to_compile)
        finally:
            pool.close()
        print(f"compiled {len(configs_to_compile)} configs ({arms}, gradients {gradients}) for "
              f"{config.name} ({time.perf_counter() - started:.0f} s so far)", flush=True)

    for config in configs:
        subspace, _ = build_subspace(config, init)
        arms, gradients = ESTIMATORS[config.estimator]
        if (subspace.variable_paths, arms, gradients) not in seen:
            seen.add((subspace.variable_paths, arms, gradients))
            compile_on(subspace, config, arms, gradients, config.distribution.pool_configs())
        if (subspace.variable_paths, "score") not in seen:
            seen.add((subspace.variable_paths, "score"))
            tasks = [t.config for s in config.validation_sets() for t in s.tasks()]
            compile_on(subspace, config, "center", False, tasks)
    return time.perf_counter() - started


def run_variant(config, directory, init):
    """Trains `config` into `directory` for `config.minutes`; continues an interrupted run."""
    from meta.train import RUN_STATE, read_metrics, train

    directory = pathlib.Path(directory)
    trained = max([r.get("training_minutes", 0) for r in read_metrics(directory)], default=0)
    if (directory / RUN_STATE).exists() and trained >= config.minutes:
        return
    train(config, directory, init=init, resume=(directory / RUN_STATE).exists(), progress=False)


SETS = (("meta_valid", "in-distribution"), ("ood_valid", "out-of-distribution"))


def variant_rows(out, names, minutes=None):
    """`{name: {"valid": records, "iterations", "subspace_size", "changes": {set key: {score key:
    (start, end, relative change, relative paired SE)}}, "judgement": {set key: judge(end, start)}}}`.

    A variant trained for longer than `minutes` is scored at its last
    validation within them (5% slack for the iteration that crosses the
    budget), so that rows compare equal time.
    """
    import json

    from meta.plots import validation_records
    from meta.train import read_metrics
    from meta.validation import judge, paired_difference

    rows = {}
    for name in names:
        directory = pathlib.Path(out) / name
        valid = validation_records(read_metrics(directory))
        if minutes is not None:
            valid = [r for r in valid if r["training_minutes"] <= minutes * 1.05]
        if len(valid) < 2:
            continue
        record = json.loads((directory / "run_config.json").read_text())
        row = {"valid": valid, "iterations": valid[-1]["after_iteration"],
               "minutes": valid[-1]["training_minutes"],
               "subspace_size": record.get("subspace_size"), "changes": {}, "judgement": {}}
        for set_key, _ in SETS:
            if set_key not in valid[0] or set_key not in valid[-1]:
                continue
            start, end = valid[0][set_key], valid[-1][set_key]
            row["changes"][set_key] = {}
            for key in ("final", "mean"):
                difference, error = paired_difference(end, start, key)
                row["changes"][set_key][key] = (start[key], end[key], difference / start[key],
                                                error / start[key])
            row["judgement"][set_key] = judge(end, start)
            row.setdefault("above_adam", {})[set_key] = (len(start.get("above_adam", [])),
                                                        len(end.get("above_adam", [])))
        rows[name] = row
    return rows


def plot(rows, path, title, top=30.0):
    """Change of `final` on each meta-validation set against the start, in percent.

    A variant that leaves the axis (above `top` percent) is drawn to the
    edge with its value written beside it, so that it does not flatten the
    others.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [(k, label) for k, label in SETS if any(k in r["valid"][0] for r in rows.values())]
    changes = [100 * (r[k]["final"] / row["valid"][0][k]["final"] - 1)
               for row in rows.values() for k, _ in present for r in row["valid"] if k in r]
    top = min(top, max(changes, default=0) + 2)
    figure, axes = plt.subplots(1, max(1, len(present)), figsize=(5.5 * max(1, len(present)), 4),
                                squeeze=False)
    for index, (name, row) in enumerate(rows.items()):
        for axis, (set_key, _) in zip(axes[0], present):
            records = [r for r in row["valid"] if set_key in r]
            if not records:
                continue
            minutes = [r["training_minutes"] for r in records]
            start = records[0][set_key]["final"]
            change = [100 * (r[set_key]["final"] / start - 1) for r in records]
            axis.plot(minutes, [min(c, top) for c in change], "o-", color=f"C{index}", label=name)
            for x, c in zip(minutes, change):
                if c > top:
                    axis.annotate(f"{c:+.0f}%", (x, top), textcoords="offset points",
                                  xytext=(4, -12), fontsize=7, color=f"C{index}")
    for axis, (_, label) in zip(axes[0], present):
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_ylim(top=top + 2)
        axis.set_xlabel("training minutes (2-core CPU)")
        axis.set_ylabel(f"{label} meta-validation final: change (%)")
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    figure.suptitle(title + " (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
