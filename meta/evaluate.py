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
import math
import os
import sys


def score_theta(theta, validation_sets, workers=2, max_loss_ratio=1.5):
    """`{set name: meta.validation.score}` of `theta` (a nested dict) on each of `validation_sets`.

    Each task's Adam(1e-3) reference comes from `meta/references/` (or is
    trained once on the same workers and written there), so every score
    says how the theta ends against Adam.
    """
    from meta.adam_reference import ensure_references
    from meta.particles import ParticleRunner
    from meta.subspace import SubspaceSpec, ThetaSubspace
    from meta.task_distribution import TaskDistribution
    from meta.validation import reference_specs, score, task_references
    from meta.workers import make_pool
    from keras_velo.training.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    # theta itself: a subspace at z = 0.
    subspace = ThetaSubspace(SubspaceSpec(("step_size_head",)), theta)
    distribution = TaskDistribution(("image_mlp",), 1e9, 1, 1)  # no member runs here
    arguments = (subspace, distribution, 0, 0.01, None, max_loss_ratio, "center", False)
    pool = make_pool(arguments, workers) if workers else None
    runner = pool or _LocalScorer(ParticleRunner(*arguments))
    scores = {}
    try:
        z = subspace.zeros()
        for validation_set in validation_sets:
            tasks = validation_set.tasks()
            references = ensure_references(runner, reference_specs(tasks))
            scores[validation_set.name] = score(runner.score(z, tasks),
                                                task_references(tasks, references))
    finally:
        if pool:
            pool.close()
    return scores


class _LocalScorer:
    """A `ParticleRunner` seen as a pool (`workers=0`)."""

    def __init__(self, runner):
        self.runner = runner

    def score(self, z, tasks):
        return self.runner.score(z, tasks)

    def compute_references(self, specs):
        return self.runner.compute_references(specs)


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
    from meta.validation import COLLAPSE, judge

    parser = argparse.ArgumentParser(prog="python -m meta.evaluate", description=__doc__.split("\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--theta", help="bundled | velo | random | PATH of a checkpoint")
    which.add_argument("--run", help="a meta-training run directory")
    parser.add_argument("--against", help="a second theta (or run) to compare with")
    parser.add_argument("--validation", default="cpu",
                        help="the preset whose meta-validation sets to use (default: cpu: "
                             "cpu-valid-v1 and ood-valid-v1)")
    parser.add_argument("--workers", type=int, default=2, help="Ray workers; 0 runs without Ray")
    parser.add_argument("--export", help="write the theta (official format) to this directory")
    parser.add_argument("--json", help="write the scores to this JSON file")
    args = parser.parse_args(argv)

    validation_sets = PRESETS[args.validation].validation_sets()
    theta, description = _resolve(args.run or args.theta)
    if args.export:
        from keras_velo.weights.checkpoint import write_checkpoint

        path = write_checkpoint(args.export.rstrip(os.sep) + os.sep, theta,
                                gen_id="keras_velo_meta_export", step=0)
        print(f"wrote {path}")
    results = {"theta": description, "scores": score_theta(theta, validation_sets, args.workers)}
    if args.against:
        other, other_description = _resolve(args.against)
        results["against"] = {"theta": other_description,
                              "scores": score_theta(other, validation_sets, args.workers)}
    for name in results["scores"]:
        _print(results, name)
        if args.against:
            verdict = judge(results["scores"][name], results["against"]["scores"][name])
            results.setdefault("judgement", {})[name] = verdict
            for key in ("final", "mean"):
                difference, error = verdict[key]
                relative = difference / results["against"]["scores"][name][key]
                print(f"{key}: {difference:+.4f} ± {error:.4f} (paired SE), {relative:+.1%} "
                      f"of {results['against']['theta']}")
            mean, error = verdict["log_ratio"]
            families = ", ".join(f"{f} {math.exp(v):.3f}" for f, v in verdict["family_log_ratios"].items())
            print(f"per-task log ratio of final losses: {mean:+.4f} ± {error:.4f} (paired SE; geometric "
                  f"mean ratio {math.exp(mean):.3f}); per family: {families}")
            print(f"families whose final rose by more than {COLLAPSE}: "
                  f"{', '.join(verdict['collapsed']) or 'none'}; better: {verdict['better']}\n")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=1)
    return 0


def _print(results, name):
    entries = [results] + ([results["against"]] if "against" in results else [])
    scores = [e["scores"][name] for e in entries]
    print(f"{name}: normalised final / mean training loss, final / Adam(1e-3)'s final")
    print("task".ljust(24) + "".join(f"{e['theta'][:40]:>42}" for e in entries))
    for task in scores[0]["tasks"]:
        row = task.ljust(24)
        for s in scores:
            final, mean = s["tasks"][task]
            ratio = s.get("vs_adam", {}).get(task)
            row += f"{final:>14.4f}{mean:>14.4f}" + (f"{ratio:>14.3f}" if ratio is not None else " " * 14)
        print(row)
    for family in scores[0]["families"]:
        row = f"  family {family}".ljust(24)
        for s in scores:
            values = s["families"][family]
            row += f"{values['final']:>14.4f}{values['mean']:>14.4f}" + " " * 14
        print(row)
    for key in ("final", "mean"):
        row = f"{key} (± SE)".ljust(24)
        for s in scores:
            row += f"{s[key]:>23.4f} ± {s[key + '_se']:.4f}" + " " * 10
        print(row)
    for s, e in zip(scores, entries):
        if "above_adam" in s:
            print(f"{e['theta'][:40]}: {len(s['above_adam'])} tasks end > 10% above Adam(1e-3)"
                  + (f" ({', '.join(s['above_adam'])})" if s["above_adam"] else "")
                  + f"; worst final / Adam's {s['worst_vs_adam']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
