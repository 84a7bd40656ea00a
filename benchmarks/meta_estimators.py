"""Meta-training estimators and parameterisations, compared at equal CPU time on meta-validation.

    KERAS_BACKEND=jax python benchmarks/meta_estimators.py --warm --init bundled --minutes 15
    KERAS_BACKEND=jax python benchmarks/meta_estimators.py --variants tbptt-blocks,pes-blocks

`--warm` first compiles every program the variants run into JAX's
persistent cache (`meta_comparison.warm_compilation_cache`), so that the
comparison measures learning at steady state, not compilation. Each variant is the
`cpu-v2` preset (the `cpu` preset when it ran) with another estimator, part of theta and
meta learning rate (`VARIANTS`), trained for `--minutes` of training time
(meta-validation excluded) from the same starting theta, on the same
members' tasks, scored on `cpu-valid-v1` every
`--validate-every` training minutes. Runs are resumable (an interrupted
comparison continues where it stopped; a finished variant is not rerun).
Writes `OUT/table.md` (the score at the end against the start, with the
paired standard error across tasks) and `OUT/meta_estimators.png` (the
meta-validation curves against training minutes, as the change from the
start in percent).
"""

import argparse
import dataclasses
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
        get_preset("cpu-v2"), name=f"cpu-{name}", estimator=estimator,
        subspace=SubspaceSpec(blocks, dimension), learning_rate=learning_rate,
        minutes=minutes, iterations=100_000, validate_every_minutes=validate_every,
        ood_validation=None,  # compared on cpu-valid-v1, as when they ran
    )


def summarise(out, names, minutes=None):
    """`(markdown table, rows)`: each variant's change on `cpu-valid-v1` at `minutes`
    (`meta_comparison.variant_rows`)."""
    from meta_comparison import variant_rows

    table = ["| variant | estimator | part of theta (d) | meta lr | iterations | meta-valid final (start → end) | change (paired SE) | meta-valid mean (start → end) | change (paired SE) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    rows = variant_rows(out, names, minutes)
    for name, row in rows.items():
        estimator, blocks, dimension, learning_rate = VARIANTS[name]
        cells = []
        for key in ("final", "mean"):
            start, end, change, error = row["changes"]["meta_valid"][key]
            cells += [f"{start:.4f} → {end:.4f}", f"{change:+.1%} ({error:.1%})"]
        where = "+".join(blocks) if dimension is None else f"random subspace of {'+'.join(blocks)}"
        size = row["subspace_size"]
        table.append(f"| {name} | {estimator} | {where}{f' ({size:,})' if size else ''} | "
                     f"{learning_rate:g} | {row['iterations']} | " + " | ".join(cells) + " |")
    return "\n".join(table) + "\n", rows


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
    from meta_comparison import plot, run_variant, warm_compilation_cache

    configs = {name: variant_config(name, args.minutes, args.validate_every) for name in names}
    if args.warm or args.warm_only:
        warm_compilation_cache(list(configs.values()), args.init)
        if args.warm_only:
            return 0
    for name in names:
        print(f"== {name}: {args.minutes:g} training minutes from {args.init}", flush=True)
        run_variant(configs[name], pathlib.Path(args.out) / name, args.init)
    table, rows = summarise(args.out, names, args.minutes)
    out = pathlib.Path(args.out)
    (out / "table.md").write_text(table)
    plot(rows, out / "meta_estimators.png",
         "meta-training estimators at equal CPU time, from the bootstrap")
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'meta_estimators.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
