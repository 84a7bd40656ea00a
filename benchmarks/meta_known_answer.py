"""The known-answer meta-training run: does the trainer repair a theta we damaged on purpose?

    KERAS_BACKEND=jax python benchmarks/meta_known_answer.py              # 30 training minutes
    KERAS_BACKEND=jax python benchmarks/meta_known_answer.py --minutes 10

Damage: the bundled (bootstrap) theta with its step-size head scaled by
`--step-scale` (0.1: every step ten times too small). The `cpu-v2` preset
(the `cpu` preset when it ran: its estimator and part of theta)
meta-trains from the damaged theta for `--minutes` of training time on the
2-core CPU, scored on `cpu-valid-v1` along the way. The answer is known: the
undamaged theta's score. The run passes if it wins back at least half of
the meta-validation gap between the damaged and the undamaged theta.

Writes `OUT/known_answer.json` (the three scores and the fraction of the
gap recovered, per checkpoint) and `OUT/known_answer.png`; the run itself is
in `OUT/run` (resumable: rerunning continues it).
"""

import argparse
import dataclasses
import json
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="benchmarks/results/meta_known_answer")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--step-scale", type=float, default=0.1)
    parser.add_argument("--validate-every", type=float, default=5.0, help="training minutes")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)

    from keras_velo.weights.pretrained import resolve_weights
    from meta.configs import get_preset
    from meta.evaluate import score_theta
    from meta.plots import validation_records
    from meta.train import RUN_STATE, STEP_SCALED, read_metrics, train

    out = pathlib.Path(args.out)
    start = f"{STEP_SCALED}{args.step_scale:g}"  # the damage: meta.train.initial_theta
    config = dataclasses.replace(get_preset("cpu-v2"), minutes=args.minutes, iterations=100_000,
                                 validate_every_minutes=args.validate_every,
                                 workers=args.workers)
    healthy_path = out / "undamaged_score.json"
    if not healthy_path.exists():
        healthy = score_theta(resolve_weights("bundled")[0], [config.validation],
                              args.workers)[config.validation.name]
        healthy_path.write_text(json.dumps(healthy))
    healthy = json.loads(healthy_path.read_text())
    run = out / "run"
    train(config, run, init=start, resume=(run / RUN_STATE).exists(), progress=False)

    valid = validation_records(read_metrics(run))
    damaged = valid[0]["meta_valid"]
    gap = damaged["final"] - healthy["final"]
    curve = [{"training_minutes": r["training_minutes"], "iteration": r["after_iteration"],
              "final": r["meta_valid"]["final"], "final_se": r["meta_valid"]["final_se"],
              "recovered": (damaged["final"] - r["meta_valid"]["final"]) / gap}
             for r in valid]
    result = {"step_scale": args.step_scale, "estimator": config.estimator,
              "subspace": config.subspace.describe(), "minutes": args.minutes,
              "damaged_final": damaged["final"], "undamaged_final": healthy["final"],
              "end_final": curve[-1]["final"], "recovered": curve[-1]["recovered"],
              "passed": curve[-1]["recovered"] >= 0.5, "curve": curve}
    (out / "known_answer.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "known_answer.png")
    for point in curve:
        print(f"{point['training_minutes']:6.1f} min, iteration {point['iteration']:4d}: "
              f"meta-valid final {point['final']:.4f} ({point['recovered']:+.0%} of the gap)")
    print(f"damaged {damaged['final']:.4f}, undamaged {healthy['final']:.4f}: recovered "
          f"{result['recovered']:.0%} of the gap in {args.minutes:g} training minutes "
          f"({'PASS' if result['passed'] else 'FAIL'}: at least 50%)")
    return 0 if result["passed"] else 1


def _plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = result["curve"]
    figure, axis = plt.subplots(figsize=(7, 4))
    minutes = [p["training_minutes"] for p in curve]
    axis.errorbar(minutes, [p["final"] for p in curve], [p["final_se"] for p in curve],
                  fmt="o-", capsize=3, label=f"meta-training ({result['estimator']})")
    axis.axhline(result["damaged_final"], color="C3", linestyle="--", label="damaged start")
    axis.axhline(result["undamaged_final"], color="C2", linestyle="--", label="undamaged (the answer)")
    halfway = (result["damaged_final"] + result["undamaged_final"]) / 2
    axis.axhline(halfway, color="grey", linestyle=":", label="half the gap")
    axis.set_xlabel("training minutes (2-core CPU)")
    axis.set_ylabel("meta-validation: final normalised loss")
    axis.set_title(f"known answer: step-size head x {result['step_scale']}")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    sys.exit(main())
