"""Run every example with VeLO, Adam(1e-3) and learning-rate-tuned Adam, and compare them.

    python examples/compare.py                             # all five examples, ~30 runs
    python examples/compare.py --examples image_convnet,autoencoder --grid 1e-3,3e-3
    python examples/compare.py --quick --out /tmp/comparison   # a few steps per run
    KERAS_BACKEND=torch python examples/compare.py --out examples/comparison_torch

For each example (`image_convnet`, `text_transformer`,
`timeseries_forecasting`, `autoencoder`, `residual_batchnorm`) it runs, each
in its own Python process (so backends and XLA compiles cannot interfere)
and all with the same `--seed` (same initial weights, same batches):

* VeLO with `--velo-weights` (default: the bundled weights, offline);
* Adam at Keras' default learning rate, 1e-3;
* Adam at every learning rate of `--grid`; "tuned Adam" is the grid point
  with the best final validation metric (accuracy, or the lowest MAE/MSE).

Each run writes `OUT/runs/<example>/<velo|adam_lr<rate>>.json` and its
console output to `OUT/logs/`. A run whose JSON is already there, from the
same command, backend and code (a SHA-256 of the example's script,
`_common.py` and, for VeLO, the keras_velo package with its weights), is
skipped, so an interrupted comparison resumes where it stopped and a run
whose code changed since is run again (`--force` reruns everything). At
the end it writes:

* `OUT/results.json`: per example, the three contenders' final training loss
  and validation metric, every grid point, the winning rate and VeLO's
  ratios;
* `OUT/table.md` (also printed): one row per example;
* `OUT/loss_curves.png`: training loss per step (moving average), one panel
  per example, VeLO against Adam(1e-3) and tuned Adam.

Ratios are VeLO / Adam: below 1 means VeLO reached a lower loss (or MAE,
MSE); for accuracy, above 1 means VeLO is more accurate.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import time

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parent
REPOSITORY_ROOT = EXAMPLES_DIR.parent
EXAMPLES = (
    "image_convnet",
    "text_transformer",
    "timeseries_forecasting",
    "autoencoder",
    "residual_batchnorm",
)
DEFAULT_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
KERAS_DEFAULT_ADAM_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: an example with VeLO (`learning_rate=None`) or Adam at a rate."""

    example: str
    optimizer: str  # "velo" or "adam"
    learning_rate: float | None = None

    @property
    def name(self):
        """`"velo"` or `"adam_lr0.001"`: the run's file name, without extension."""
        return "velo" if self.optimizer == "velo" else f"adam_lr{self.learning_rate:g}"

    def json_path(self, out):
        return out / "runs" / self.example / f"{self.name}.json"

    def log_path(self, out):
        return out / "logs" / f"{self.example}_{self.name}.log"

    def arguments(self, out, seed, quick, velo_weights):
        """The example's command-line arguments (without `python <script>`)."""
        arguments = ["--optimizer", self.optimizer, "--seed", str(seed)]
        if self.optimizer == "velo":
            arguments += ["--weights", velo_weights]
        else:
            arguments += ["--learning-rate", f"{self.learning_rate:g}"]
        arguments += ["--json", str(self.json_path(out)), "--verbose", "2"]
        return arguments + (["--quick"] if quick else [])


def plan_runs(examples, grid):
    """Per example: VeLO, then Adam at every rate of `grid` and at Keras' default 1e-3."""
    rates = sorted(set(grid) | {KERAS_DEFAULT_ADAM_RATE})
    return [
        run
        for example in examples
        for run in [Run(example, "velo")] + [Run(example, "adam", rate) for rate in rates]
    ]


def source_digest(run):
    """SHA-256 of the code behind `run`: its script, `_common.py` and, for VeLO, keras_velo."""
    import hashlib

    import keras_velo

    paths = [EXAMPLES_DIR / f"{run.example}.py", EXAMPLES_DIR / "_common.py"]
    if run.optimizer == "velo":
        package = pathlib.Path(keras_velo.__file__).resolve().parent
        paths += sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    digest = hashlib.sha256()
    for path in paths:
        digest.update(str(path.relative_to(REPOSITORY_ROOT) if path.is_relative_to(REPOSITORY_ROOT)
                          else path.name).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def recorded_run(path, script, arguments, backend, digest):
    """The run's JSON record if it came from the same command, backend and code (`digest`), else None."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("command") != [script, *arguments] or record.get("backend") != backend:
        return None
    if record.get("source_sha256") != digest:
        return None
    return record


def execute(runs, out, args, backend):
    """Runs (or finds) every run; returns `{run: record or None if it failed}`."""
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")])
        ),
    }
    records, start = {}, time.perf_counter()
    for index, run in enumerate(runs, 1):
        script = f"{run.example}.py"
        arguments = run.arguments(out, args.seed, args.quick, args.velo_weights)
        header = f"[{index}/{len(runs)}] {run.example} {run.name}"
        digest = source_digest(run)
        record = None if args.force else recorded_run(run.json_path(out), script, arguments, backend, digest)
        if record is not None:
            print(f"{header}: done before, skipped ({run.json_path(out)})", flush=True)
            records[run] = record
            continue
        print(f"{header} ...", end=" ", flush=True)
        run_start = time.perf_counter()
        run.log_path(out).parent.mkdir(parents=True, exist_ok=True)
        with open(run.log_path(out), "w") as log:
            result = subprocess.run(
                [sys.executable, str(EXAMPLES_DIR / script), *arguments],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY_ROOT,
            )
        elapsed = _minutes_seconds(time.perf_counter() - start)
        if result.returncode != 0:
            print(f"FAILED (exit {result.returncode}; elapsed {elapsed}); last lines of "
                  f"{run.log_path(out)}:", flush=True)
            print("    " + "\n    ".join(run.log_path(out).read_text().splitlines()[-15:]))
            records[run] = None
            continue
        records[run] = json.loads(run.json_path(out).read_text())
        records[run]["source_sha256"] = digest  # what resuming checks
        run.json_path(out).write_text(json.dumps(records[run], indent=1) + "\n")
        print(f"{time.perf_counter() - run_start:.0f} s (elapsed {elapsed})  "
              f"train loss {records[run]['final_train_loss']:.4g}, "
              f"validation {records[run]['metric']['name']} {records[run]['metric']['value']:.4g}",
              flush=True)
    return records


def _minutes_seconds(seconds):
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _summary(record):
    return {
        "label": record["label"],
        "learning_rate": record["learning_rate"],
        "final_train_loss": record["final_train_loss"],
        "metric": record["metric"]["value"],
        "seconds": record["seconds"],
        "run": str(pathlib.Path("runs") / record["example"] / _file_name(record)),
    }


def _file_name(record):
    return "velo.json" if record["optimizer"] == "velo" else f"adam_lr{record['learning_rate']:g}.json"


def best_rate(grid_records, higher_is_better):
    """The grid rate with the best final validation metric (NaN loses; ties: lower train loss)."""

    def badness(rate):
        record = grid_records[rate]
        value = record["metric"]["value"]
        if not math.isfinite(value):
            return (math.inf, math.inf)
        loss = record["final_train_loss"]
        return (-value if higher_is_better else value, loss if math.isfinite(loss) else math.inf)

    return min(grid_records, key=badness)


def _ratio(numerator, denominator):
    if not (math.isfinite(numerator) and math.isfinite(denominator)) or denominator == 0:
        return math.nan
    return numerator / denominator


def summarise(examples, grid, records):
    """`{example: comparison}` from the run records; examples missing a run are left out."""
    by_key = {(run.example, run.name): record for run, record in records.items()}
    results = {}
    for example in examples:
        velo = by_key.get((example, "velo"))
        default = by_key.get((example, Run(example, "adam", KERAS_DEFAULT_ADAM_RATE).name))
        grid_records = {
            rate: by_key.get((example, Run(example, "adam", rate).name)) for rate in grid
        }
        if velo is None or default is None or any(r is None for r in grid_records.values()):
            continue
        metric = velo["metric"]
        tuned_rate = best_rate(grid_records, metric["higher_is_better"])
        tuned = grid_records[tuned_rate]
        results[example] = {
            "metric": {"name": metric["name"], "higher_is_better": metric["higher_is_better"]},
            "data": velo["data"],
            "steps": velo["steps"],
            "velo": _summary(velo),
            "adam_default": _summary(default),
            "adam_tuned": _summary(tuned),
            "tuned_learning_rate": tuned_rate,
            "grid": {f"{rate:g}": _summary(record) for rate, record in grid_records.items()},
            "ratios": {
                "train_loss_velo_over_adam_default": _ratio(
                    velo["final_train_loss"], default["final_train_loss"]),
                "train_loss_velo_over_adam_tuned": _ratio(
                    velo["final_train_loss"], tuned["final_train_loss"]),
                "metric_velo_over_adam_default": _ratio(
                    velo["metric"]["value"], default["metric"]["value"]),
                "metric_velo_over_adam_tuned": _ratio(
                    velo["metric"]["value"], tuned["metric"]["value"]),
            },
        }
    return results


def markdown_table(results, header):
    """One row per example: train loss and validation metric of the three, and VeLO's ratios."""
    lines = [
        header,
        "",
        "| example | validation metric | VeLO train loss | Adam(1e-3) train loss | tuned Adam train loss "
        "| tuned Adam rate | VeLO metric | Adam(1e-3) metric | tuned Adam metric "
        "| loss VeLO/Adam(1e-3) | loss VeLO/tuned | metric VeLO/Adam(1e-3) | metric VeLO/tuned |",
        "|---|---|" + "---:|" * 11,
    ]
    for example, result in results.items():
        ratios = result["ratios"]
        metric = result["metric"]["name"] + (" (higher is better)" if result["metric"]["higher_is_better"]
                                             else " (lower is better)")
        cells = [
            example, metric,
            *(f"{result[who]['final_train_loss']:.4g}" for who in ("velo", "adam_default", "adam_tuned")),
            f"{result['tuned_learning_rate']:g}",
            *(f"{result[who]['metric']:.4g}" for who in ("velo", "adam_default", "adam_tuned")),
            *(f"{ratios[key]:.3g}" for key in (
                "train_loss_velo_over_adam_default", "train_loss_velo_over_adam_tuned",
                "metric_velo_over_adam_default", "metric_velo_over_adam_tuned")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Train loss: on training examples after training, inference mode. Ratios are VeLO / Adam: "
        "below 1, VeLO's loss (or MAE, MSE) is lower; for accuracy, above 1 means VeLO is more accurate.",
    ]
    return "\n".join(lines) + "\n"


def moving_average(values, window):
    """`(positions, means)`: the mean of each `window` consecutive values, at its last step (1-based)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    means = np.convolve(values, np.ones(window) / window, mode="valid")
    return np.arange(window, len(values) + 1), means


def plot_curves(results, out, path, title):
    """One panel per example: training loss per step of VeLO, Adam(1e-3) and tuned Adam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter

    columns = min(3, len(results))
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (example, result) in zip(axes.flat, results.items()):
        for who, colour, style in (("velo", "C3", "-"), ("adam_default", "C0", "-"),
                                   ("adam_tuned", "C2", "--")):
            summary = result[who]
            record = json.loads((out / summary["run"]).read_text())
            steps, losses = moving_average(record["step_losses"], len(record["step_losses"]) // 30)
            label = summary["label"] if who != "adam_tuned" else f"tuned {summary['label']}"
            ax.plot(steps, losses, color=colour, linestyle=style, label=f"{label}: {result['metric']['name']} "
                                                       f"{summary['metric']:.3g}")
        ax.set_title(example, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (moving average)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.1, not 10^-1
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(results):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--examples", default=",".join(EXAMPLES),
                        help=f"comma-separated subset of {','.join(EXAMPLES)}")
    parser.add_argument("--grid", default=",".join(f"{rate:g}" for rate in DEFAULT_GRID),
                        help="Adam learning rates to tune over (comma-separated)")
    parser.add_argument("--out", type=pathlib.Path, default=EXAMPLES_DIR / "comparison",
                        help="output folder (default: examples/comparison)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--velo-weights", default="bundled",
                        help='VeLO\'s weights: "bundled" (default, offline), "velo" or a path')
    parser.add_argument("--quick", action="store_true", help="a few steps per run (for tests)")
    parser.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    args = parser.parse_args(argv)
    args.examples = [name.strip() for name in args.examples.split(",") if name.strip()]
    unknown = sorted(set(args.examples) - set(EXAMPLES))
    if unknown or not args.examples:
        parser.error(f"unknown examples {unknown}; choose from {', '.join(EXAMPLES)}")
    try:
        args.grid = sorted({float(rate) for rate in args.grid.split(",") if rate.strip()})
    except ValueError:
        parser.error(f"--grid must be comma-separated numbers, got {args.grid!r}")
    if not args.grid or min(args.grid) <= 0:
        parser.error(f"--grid needs positive learning rates, got {args.grid}")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    backend = os.environ.get("KERAS_BACKEND", "jax")
    out = args.out.resolve()  # the runs start in the repository root
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(args.examples, args.grid)
    print(f"{len(runs)} runs on {backend}: {', '.join(args.examples)}; VeLO ({args.velo_weights}), "
          f"Adam at {', '.join(f'{rate:g}' for rate in sorted(set(args.grid) | {KERAS_DEFAULT_ADAM_RATE}))}"
          f"{' (quick)' if args.quick else ''} -> {out}", flush=True)
    records = execute(runs, out, args, backend)
    results = summarise(args.examples, args.grid, records)
    header = (f"VeLO ({args.velo_weights}) vs Adam(1e-3) vs Adam tuned over "
              f"{{{', '.join(f'{rate:g}' for rate in args.grid)}}}; backend {backend}, seed {args.seed}"
              f"{', quick' if args.quick else ''}")
    table = markdown_table(results, header)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(
        {"backend": backend, "seed": args.seed, "quick": args.quick, "grid": args.grid,
         "velo_weights": args.velo_weights, "examples": results}, indent=1) + "\n")
    if results:
        plot_curves(results, out, out / "loss_curves.png", header)
    print("\n" + table)
    print(f"wrote {out / 'results.json'}, {out / 'table.md'}"
          f"{', ' + str(out / 'loss_curves.png') if results else ''}")
    failed = [f"{run.example} {run.name}" for run, record in records.items() if record is None]
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)} (logs in {out / 'logs'})")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
