"""Meta-objectives and start points compared at equal CPU time, on both meta-validation sets.

    KERAS_BACKEND=jax python benchmarks/meta_objectives.py --warm                 # objectives
    KERAS_BACKEND=jax python benchmarks/meta_objectives.py --compare starts \\
        --variant final+adam+tail                                                # start points

Every variant is the `cpu` preset on the wide task distribution (all eleven
families, 3 configs each, horizons 100-3,000:
`meta.configs.WIDE_DISTRIBUTION_POOL3` for the objectives, as they were
compared; `WIDE_DISTRIBUTION`, with six residual nets so that BatchNorm
ones are among them, for the start points),
trained for `--minutes` of training time (meta-validation excluded) and
scored every `--validate-every` training minutes on `cpu-valid-v1` and
`ood-valid-v1`, each task also against its Adam(1e-3) reference.

* `--compare objectives` (default): the variants of `OBJECTIVES`, from one
  start (`--init`, default the known answer's repaired theta, the best
  measured so far): the area under the curve (the objective until now)
  against weighing the end of training, a penalty for ending above Adam,
  a CVaR tail over members, with Persistent ES and truncated backprop
  combined, Persistent ES alone, or full-unroll ES with VeLO's
  sign(L+ - L-) on fewer members.
* `--compare starts`: one variant (`--variant`) from each of `STARTS`:
  the bootstrap, the repaired theta, and the bootstrap with half its step.

`--warm` first compiles every program the runs will use into JAX's
persistent cache (`meta_comparison.warm_compilation_cache`). Runs are
resumable. Writes `OUT/table.md` and `OUT/comparison.png`.
"""

import argparse
import dataclasses
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

REPAIRED = "run:meta/known_answer/run"


def _objective(**fields):
    from meta.objective import MetaObjective

    return MetaObjective(**fields)


def objectives():
    """name -> (estimator, shaping, members, MetaObjective)."""
    end = dict(final_share=0.5, adam_penalty=1.0)
    tail = dict(end, tail_weight=1.0, tail_fraction=0.25)
    return {
        "auc": ("pes+tbptt", "none", 8, _objective()),
        "final+adam": ("pes+tbptt", "none", 8, _objective(**end)),
        "final+adam+tail": ("pes+tbptt", "none", 8, _objective(**tail)),
        "pes-final+adam+tail": ("pes", "none", 8, _objective(**tail)),
        "es-sign-final+adam+tail": ("es", "sign", 4, _objective(**tail)),
    }


STARTS = {"bootstrap": "bundled", "repaired": REPAIRED, "bootstrap-half-step": "bundled-step:0.5"}


def variant_config(name, minutes, validate_every, distribution=None):
    from meta.configs import WIDE_DISTRIBUTION_POOL3, get_preset

    estimator, shaping, members, objective = objectives()[name]
    return dataclasses.replace(
        get_preset("cpu-v2"), name=f"cpu-wide-{name}", distribution=distribution or WIDE_DISTRIBUTION_POOL3,
        estimator=estimator, shaping=shaping, members=members, objective=objective,
        minutes=minutes, iterations=100_000, validate_every_minutes=validate_every,
    )


def table(rows, label, descriptions):
    """Markdown: per variant, its change on each set, tasks above Adam, collapsed families."""
    from meta_comparison import SETS

    header = (f"| {label} | what | iterations | minutes | "
              + " | ".join(f"{title} final (start → end) | change (paired SE) | mean change (paired SE) "
                           f"| tasks > 10% above Adam (start → end) | families collapsed"
                           for _, title in SETS) + " | better on both |")
    lines = [header, "|---|---|---:|---:|" + "---:|---:|---:|---:|---|" * len(SETS) + "---|"]
    for name, row in rows.items():
        cells = [name, descriptions[name], str(row["iterations"]), f"{row['minutes']:.1f}"]
        better = True
        for set_key, _ in SETS:
            if set_key not in row["changes"]:
                cells += ["—"] * 5
                better = False
                continue
            start, end, change, error = row["changes"][set_key]["final"]
            _, _, mean_change, mean_error = row["changes"][set_key]["mean"]
            above = row["above_adam"][set_key]
            verdict = row["judgement"][set_key]
            cells += [f"{start:.4f} → {end:.4f}", f"{change:+.1%} ({error:.1%})",
                      f"{mean_change:+.1%} ({mean_error:.1%})", f"{above[0]} → {above[1]}",
                      ", ".join(verdict["collapsed"]) or "none"]
            better = better and verdict["better"]
        cells.append("yes" if better else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compare", choices=("objectives", "starts"), default="objectives")
    parser.add_argument("--out", help="default: meta/comparison/<objectives|starts>")
    parser.add_argument("--init", default=REPAIRED, help="the start of --compare objectives")
    parser.add_argument("--variant", default="final+adam+tail", help="the variant of --compare starts")
    parser.add_argument("--minutes", type=float, default=12.0, help="training minutes per run")
    parser.add_argument("--validate-every", type=float, default=6.0, help="training minutes")
    parser.add_argument("--only", help="comma-separated subset of the runs")
    parser.add_argument("--warm", action="store_true",
                        help="first compile every program into JAX's persistent cache")
    args = parser.parse_args(argv)

    from meta_comparison import plot, run_variant, variant_rows, warm_compilation_cache

    out = pathlib.Path(args.out or f"meta/comparison/{args.compare}")
    if args.compare == "objectives":
        runs = {name: (variant_config(name, args.minutes, args.validate_every), args.init)
                for name in objectives()}
        descriptions = {name: f"{estimator}{'/' + shaping if shaping != 'none' else ''}, "
                              f"{members} members: {objective.describe()}"
                        for name, (estimator, shaping, members, objective) in objectives().items()}
    else:
        from meta.configs import WIDE_DISTRIBUTION

        config = variant_config(args.variant, args.minutes, args.validate_every, WIDE_DISTRIBUTION)
        runs = {start: (config, init) for start, init in STARTS.items()}
        descriptions = {start: f"{args.variant} from {init}" for start, init in STARTS.items()}
    if args.only:
        runs = {name: runs[name] for name in args.only.split(",")}
    if args.warm:  # the programs do not depend on theta's values: one start serves all
        warm_compilation_cache([config for config, _ in runs.values()], next(iter(runs.values()))[1])
    for name, (config, init) in runs.items():
        print(f"== {name}: {config.minutes:g} training minutes from {init}", flush=True)
        run_variant(config, out / name, init)
    rows = variant_rows(out, list(runs), args.minutes)
    text = table(rows, "variant" if args.compare == "objectives" else "start", descriptions)
    (out / "table.md").write_text(text)
    plot(rows, out / "comparison.png", f"meta-training {args.compare} at equal CPU time")
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'comparison.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
