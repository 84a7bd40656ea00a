"""Meta-training estimators and parameterisations, compared at equal CPU time on meta-validation.

    KERAS_BACKEND=jax python benchmarks/meta_estimators.py --warm --init bundled --minutes 15
    KERAS_BACKEND=jax python benchmarks/meta_estimators.py --variants tbptt-blocks,pes-blocks

`--warm` first compiles every program the variants run into JAX's
persistent cache (`warm_compilation_cache`), so that the comparison
measures learning at steady state, not compilation. Each variant is the
`cpu` preset with another estimator, part of theta and
meta learning rate (`VARIANTS`), trained for `--minutes` of training time
(meta-validation excluded) from the same starting theta, on the same
members' tasks, scored on the `cpu` meta-validation set every
`--validate-every` training minutes. Runs are resumable (an interrupted
comparison continues where it stopped; a finished variant is not rerun).
Writes `OUT/table.md` (the score at the end against the start, with the
paired standard error across tasks) and `OUT/meta_estimators.png` (the
meta-validation curves against training minutes, as the change from the
start in percent).
"""

import argparse
import dataclasses
import json
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

BLOCKS = ("step_size_head", "mlp_bank", "mix_layers")
VARIANTS = {
    # name: (estimator, blocks, random-subspace dimension, meta learning rate)
    "pes-full": ("pes", ("all",), None, 3e-4),
    "pes-random1000": ("pes", ("all",), 1000, 3e-3),
    "pes-blocks": ("pes", BLOCKS, None, 3e-3),
    "tbptt-blocks": ("tbptt", BLOCKS, None, 3e-3),
    "pes+tbptt-blocks": ("pes+tbptt", BLOCKS, None, 3e-3),
}


def variant_config(name, minutes, validate_every):
    from meta.configs import get_preset
    from meta.subspace import SubspaceSpec

    estimator, blocks, dimension, learning_rate = VARIANTS[name]
    return dataclasses.replace(
        get_preset("cpu"), name=f"cpu-{name}", estimator=estimator,
        subspace=SubspaceSpec(blocks, dimension), learning_rate=learning_rate,
        minutes=minutes, iterations=100_000, validate_every_minutes=validate_every,
    )


def warm_compilation_cache(names, init, workers=2):
    """Compiles every program the variants will run, on every config they can meet.

    Members draw from 28 fixed configs (the `cpu` preset's pool) and the
    meta-validation set has 21 more; compiling a config's programs costs
    10-40 s a worker, more than many truncations. JAX's persistent cache
    then serves them to every variant's processes, so that the comparison
    measures learning, not compilation (which a long run amortises).
    """
    import time

    from meta.learner import ESTIMATORS
    from meta.train import build_subspace
    from meta.workers import make_pool

    seen = set()
    for name in names:
        config = variant_config(name, 1.0, 1.0)
        subspace, _ = build_subspace(config, init)
        arms, gradients = ESTIMATORS[config.estimator]
        key = (subspace.variable_paths, arms, gradients)
        if key in seen:
            continue
        seen.add(key)
        configs = config.distribution.pool_configs() + [t.config for t in config.validation.tasks()]
        started = time.perf_counter()
        pool = make_pool((subspace, config.distribution, config.seed, config.sigma,
                          config.unroll_truncation, config.max_loss_ratio, arms, gradients), workers)
        try:
            pool.compile_tasks(configs)
        finally:
            pool.close()
        print(f"compiled {len(configs)} configs for {name}'s programs in "
              f"{time.perf_counter() - started:.0f} s", flush=True)


def run_variant(name, out, init, minutes, validate_every):
    from meta.train import RUN_STATE, read_metrics, train

    directory = pathlib.Path(out) / name
    config = variant_config(name, minutes, validate_every)
    records = read_metrics(directory)
    trained = max([r.get("training_minutes", 0) for r in records], default=0)
    if (directory / RUN_STATE).exists() and trained >= minutes:
        return
    train(config, directory, init=init, resume=(directory / RUN_STATE).exists(), progress=False)


def summarise(out, names, minutes=None):
    """`(markdown table, {name: validation records})`, each variant scored at `minutes`.

    A variant trained for longer than `minutes` (an earlier, longer
    comparison) is scored on its last validation within them (5% slack for
    the iteration that crosses the budget), so that rows compare equal time.
    """
    from meta.plots import validation_records
    from meta.train import read_metrics
    from meta.validation import paired_difference

    rows = ["| variant | estimator | part of theta (d) | meta lr | iterations | meta-valid final (start → end) | change (paired SE) | meta-valid mean (start → end) | change (paired SE) |",
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    curves = {}
    for name in names:
        records = read_metrics(pathlib.Path(out) / name)
        valid = validation_records(records)
        if minutes is not None:
            valid = [r for r in valid if r["training_minutes"] <= minutes * 1.05]
        if len(valid) < 2:
            continue
        curves[name] = valid
        start, end = valid[0]["meta_valid"], valid[-1]["meta_valid"]
        iterations = valid[-1]["after_iteration"]
        estimator, blocks, dimension, learning_rate = VARIANTS[name]
        config = json.loads((pathlib.Path(out) / name / "run_config.json").read_text())
        cells = []
        for key in ("final", "mean"):
            difference, error = paired_difference(end, start, key)
            cells += [f"{start[key]:.4f} → {end[key]:.4f}",
                      f"{difference / start[key]:+.1%} ({error / start[key]:.1%})"]
        where = "+".join(blocks) if dimension is None else f"random subspace of {'+'.join(blocks)}"
        size = config.get("subspace_size", "")
        rows.append(f"| {name} | {estimator} | {where}{f' ({size:,})' if size else ''} | "
                    f"{learning_rate:g} | {iterations} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n", curves


def plot(curves, path, top=30.0):
    """Change of each meta-validation score against the start, in percent.

    A variant that leaves the axis (above `top` percent) is drawn to the
    edge with its value written beside it, so that it does not flatten the
    others.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    for index, (name, records) in enumerate(curves.items()):
        minutes = [r["training_minutes"] for r in records]
        for axis, key in zip(axes, ("final", "mean")):
            start = records[0]["meta_valid"][key]
            change = [100 * (r["meta_valid"][key] / start - 1) for r in records]
            axis.plot(minutes, [min(c, top) for c in change], "o-", color=f"C{index}", label=name)
            for x, c in zip(minutes, change):
                if c > top:
                    axis.annotate(f"{c:+.0f}%", (x, top), textcoords="offset points",
                                  xytext=(4, -12), fontsize=7, color=f"C{index}")
    for axis, key in zip(axes, ("final", "mean")):
        axis.axhline(0, color="black", linewidth=0.8)
        axis.set_ylim(top=top + 2)
        axis.set_xlabel("training minutes (2-core CPU)")
        axis.set_ylabel(f"meta-validation {key}: change from the start (%)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle("meta-training estimators at equal CPU time, from the bootstrap (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/meta_estimators")
    parser.add_argument("--init", default="bundled", help="the common starting theta")
    parser.add_argument("--minutes", type=float, default=20.0, help="training minutes per variant")
    parser.add_argument("--validate-every", type=float, default=5.0, help="training minutes")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--warm", action="store_true",
                        help="first compile every program into JAX's persistent cache")
    parser.add_argument("--warm-only", action="store_true", help="only compile (see --warm)")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {sorted(VARIANTS)}")
    if args.warm or args.warm_only:
        warm_compilation_cache(names, args.init)
        if args.warm_only:
            return 0
    for name in names:
        print(f"== {name}: {args.minutes:g} training minutes from {args.init}", flush=True)
        run_variant(name, args.out, args.init, args.minutes, args.validate_every)
    table, curves = summarise(args.out, names, args.minutes)
    out = pathlib.Path(args.out)
    (out / "table.md").write_text(table)
    plot(curves, out / "meta_estimators.png")
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'meta_estimators.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
