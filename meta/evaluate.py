"""`python -m meta.evaluate`: the meta-validation score of any theta.

    python -m meta.evaluate --theta bundled                   # the shipped weights
    python -m meta.evaluate --theta runs/cpu/theta            # a checkpoint
    python -m meta.evaluate --run meta/runs/cpu --against bundled
    python -m meta.evaluate --run meta/runs/cpu --export /tmp/theta   # write the run's theta

Scores on the same fixed held-out tasks `python -m meta.train` validates
on (`meta.validation`; `--validation` picks the set, default the `cpu`
preset's), with the same settings, so the numbers are comparable with a
run's `meta_valid` records. `--against` scores a second theta and prints
the paired difference per task and its standard error. `--run` rebuilds a
run's theta from its compact state (z and the starting theta), so a run
committed without its `theta/` folder can be scored or exported.
"""

import argparse
import json
import os
import sys


def score_theta(theta, validation_set, workers=2, max_loss_ratio=1.5):
    """`meta.validation.score` of `theta` (a nested dict) on `validation_set`."""
    from meta.particles import ParticleRunner
    from meta.subspace import SubspaceSpec, ThetaSubspace
    from meta.task_distribution import TaskDistribution
    from meta.validation import score
    from meta.workers import make_pool
    from keras_velo.training.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    # theta itself: a subspace at z = 0.
    subspace = ThetaSubspace(SubspaceSpec(("step_size_head",)), theta)
    distribution = TaskDistribution(validation_set.families, validation_set.max_flops_per_step,
                                    validation_set.min_horizon, validation_set.max_horizon)
    arguments = (subspace, distribution, 0, 0.01, None, max_loss_ratio, "center", False)
    pool = make_pool(arguments, workers) if workers else None
    try:
        z = subspace.zeros()
        tasks = validation_set.tasks()
        records = pool.score(z, tasks) if pool else ParticleRunner(*arguments).score(z, tasks)
    finally:
        if pool:
            pool.close()
    return score(records)


def _resolve(spec):
    """A theta from a name, a checkpoint path or a run directory."""
    import pathlib

    from meta.train import RUN_STATE, initial_theta, load_run

    if pathlib.Path(spec, RUN_STATE).exists():
        _, subspace, z, _ = load_run(spec)
        return subspace.theta(z), f"run {spec}"
    return initial_theta(spec)


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    from meta.configs import PRESETS
    from meta.validation import paired_difference

    parser = argparse.ArgumentParser(prog="python -m meta.evaluate", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--theta", help="bundled | velo | random | PATH of a checkpoint")
    which.add_argument("--run", help="a meta-training run directory")
    parser.add_argument("--against", help="a second theta (or run) to compare with")
    parser.add_argument("--validation", default="cpu",
                        help="the preset whose meta-validation set to use (default: cpu)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers; 0 runs without Ray")
    parser.add_argument("--export", help="write the theta (official format) to this directory")
    parser.add_argument("--json", help="write the scores to this JSON file")
    args = parser.parse_args(argv)

    validation_set = PRESETS[args.validation].validation
    theta, description = _resolve(args.run or args.theta)
    if args.export:
        from keras_velo.weights.checkpoint import write_checkpoint

        path = write_checkpoint(args.export.rstrip(os.sep) + os.sep, theta,
                                gen_id="keras_velo_meta_export", step=0)
        print(f"wrote {path}")
    results = {"theta": description, "validation": validation_set.name,
               "score": score_theta(theta, validation_set, args.workers)}
    if args.against:
        other, other_description = _resolve(args.against)
        results["against"] = {"theta": other_description,
                              "score": score_theta(other, validation_set, args.workers)}
    _print(results)
    if args.against:
        for key in ("final", "mean"):
            difference, error = paired_difference(results["score"], results["against"]["score"], key)
            relative = difference / results["against"]["score"][key]
            print(f"{key}: {difference:+.4f} ± {error:.4f} (paired SE), {relative:+.1%} "
                  f"of {results['against']['theta']}")
            results[f"{key}_difference"] = [difference, error]
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return 0


def _print(results):
    entries = [results] + ([results["against"]] if "against" in results else [])
    names = list(entries[0]["score"]["tasks"])
    print(f"meta-validation ({results['validation']}): normalised final / mean training loss")
    header = "task".ljust(22) + "".join(f"{e['theta'][:28]:>30}" for e in entries)
    print(header)
    for name in names:
        row = name.ljust(22)
        for e in entries:
            final, mean = e["score"]["tasks"][name]
            row += f"{final:>15.4f}{mean:>15.4f}"
        print(row)
    for key in ("final", "mean"):
        row = f"{key} (± SE)".ljust(22)
        for e in entries:
            row += f"{e['score'][key]:>19.4f} ± {e['score'][key + '_se']:.4f}"
        print(row)


if __name__ == "__main__":
    sys.exit(main())
