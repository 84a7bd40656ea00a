"""Run every example with VeLO, Adam(1e-3), AdamW and learning-rate-tuned Adam, and compare them.

    python examples/compare.py                             # all seven examples, ~50 runs
    python examples/compare.py --examples image_convnet,autoencoder --grid 1e-3,3e-3
    python examples/compare.py --velo-weights bundled,candidate=/work/thetas/repaired
    python examples/compare.py --quick --out /tmp/comparison   # a few steps per run
    KERAS_BACKEND=torch python examples/compare.py --out examples/comparison_torch

For each example (`image_convnet`, `text_transformer`,
`timeseries_forecasting`, `autoencoder`, `residual_batchnorm`,
`keras_hub_gpt2`, `keras_hub_vit`) it runs, each in its own Python process
(so backends and XLA compiles cannot interfere) and all with the same
`--seed` (same initial weights, same batches):

* VeLO with each of `--velo-weights` (comma-separated `name=spec` or plain
  specs, a spec being "bundled", "velo" or a checkpoint path; default: the
  bundled weights, offline). The first is "VeLO"; each later one is "VeLO
  <name>" (a plain spec is named by its last path component);
* Adam at Keras' default learning rate, 1e-3;
* AdamW at Keras' defaults (`keras.optimizers.AdamW()`: learning rate 1e-3,
  weight decay 0.004);
* Adam at every learning rate of `--grid`; "tuned Adam" is the grid point
  with the best final validation metric (accuracy, or the lowest loss,
  MAE or MSE).

Each run writes `OUT/runs/<example>/<name>.json`, `<name>` being `velo`
(the first VeLO), `velo_<name>` (the others), `adamw_lr0.001` or
`adam_lr<rate>`, and its console output to `OUT/logs/`. A run whose JSON is
already there, from the same command, backend and code (a SHA-256 of the
example's script, `_common.py` and, for VeLO, the keras_velo package with
its weights and the files of a checkpoint path), is skipped, so an
interrupted comparison resumes where it stopped and a run whose code
changed since is run again (`--force` reruns everything). At the end it
writes:

* `OUT/results.json`: per example, each contender's final training loss
  and validation metric, every grid point, the winning rate, the first
  VeLO's ratios against Adam(1e-3), AdamW and tuned Adam (`ratios`), and
  for each later VeLO (`other_velos`) the same ratios and its ratios
  against the first VeLO;
* `OUT/table.md` (also printed): one row per example, the first VeLO
  against the three Adams; then, for each later VeLO, one row per example
  with its ratios and whether its validation metric is better or worse
  than the first VeLO's;
* `OUT/loss_curves.png`: training loss per step (moving average), one panel
  per example, every VeLO against Adam(1e-3), AdamW and tuned Adam.

Ratios are VeLO / the other: below 1 means VeLO reached a lower loss (or
MAE, MSE); for accuracy, above 1 means VeLO is more accurate.
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import re
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
    "keras_hub_gpt2",
    "keras_hub_vit",
)
DEFAULT_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
KERAS_DEFAULT_ADAM_RATE = 1e-3
KERAS_DEFAULT_ADAMW_RATE = 1e-3  # keras.optimizers.AdamW(): also weight_decay=0.004
BASELINES = ("adam_default", "adamw", "adam_tuned")  # results' keys of the three Adams
VELO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclasses.dataclass(frozen=True)
class VeLOWeights:
    """One VeLO contender: `spec` is VeLO's `weights=` ("bundled", "velo" or a checkpoint path).

    `key` names its run file and its entries in results.json: `"velo"` for
    the first VeLO, `"velo_<name>"` for the others; `title` names it in the
    table and the plot ("VeLO", "VeLO <name>").
    """

    key: str
    title: str
    spec: str


def parse_velo_weights(text):
    """`[VeLOWeights]` from `--velo-weights`: comma-separated `name=spec` or plain specs.

    The first is "VeLO" (run file `velo.json`; a name given to it only
    changes its title). A later plain spec is named by its last path
    component.

    >>> [(w.key, w.title) for w in parse_velo_weights("bundled,candidate=/tmp/theta,/x/repaired/")]
    [('velo', 'VeLO'), ('velo_candidate', 'VeLO candidate'), ('velo_repaired', 'VeLO repaired')]
    """
    contenders = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, equals, spec = item.partition("=")
        if not (equals and VELO_NAME.fullmatch(name)):
            name, spec = None, item
        if not spec:
            raise ValueError(f"--velo-weights: {item!r} names no weights")
        if not contenders:
            contenders.append(VeLOWeights("velo", "VeLO" if name is None else f"VeLO {name}", spec))
            continue
        if name is None:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", pathlib.PurePath(spec).name) or "weights"
        contenders.append(VeLOWeights(f"velo_{name}", f"VeLO {name}", spec))
    keys = [contender.key for contender in contenders]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if not contenders or duplicates:
        raise ValueError(f"--velo-weights {text!r}: needs at least one spec and distinct names; "
                         f"repeated: {', '.join(duplicates) or 'none'}")
    return contenders


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run: an example with VeLO (weights `velo`), Adam or AdamW at a rate."""

    example: str
    optimizer: str  # "velo", "adam" or "adamw"
    learning_rate: float | None = None
    velo: VeLOWeights | None = None

    def __post_init__(self):
        if (self.optimizer == "velo") != (self.velo is not None):
            raise ValueError(f"Run {self.example} {self.optimizer}: VeLO runs, and only they, need `velo`")

    @property
    def name(self):
        """`"velo"`, `"velo_<name>"`, `"adamw_lr0.001"` or `"adam_lr0.001"`: the file name, without extension."""
        if self.optimizer == "velo":
            return self.velo.key
        return f"{self.optimizer}_lr{self.learning_rate:g}"

    def json_path(self, out):
        return out / "runs" / self.example / f"{self.name}.json"

    def log_path(self, out):
        return out / "logs" / f"{self.example}_{self.name}.log"

    def arguments(self, out, seed, quick):
        """The example's command-line arguments (without `python <script>`)."""
        arguments = ["--optimizer", self.optimizer, "--seed", str(seed)]
        if self.optimizer == "velo":
            arguments += ["--weights", self.velo.spec]
        else:
            arguments += ["--learning-rate", f"{self.learning_rate:g}"]
        arguments += ["--json", str(self.json_path(out)), "--verbose", "2"]
        return arguments + (["--quick"] if quick else [])


def plan_runs(examples, grid, velo_weights):
    """Per example: each VeLO of `velo_weights`, AdamW(1e-3), then Adam at every rate of `grid` and at 1e-3."""
    rates = sorted(set(grid) | {KERAS_DEFAULT_ADAM_RATE})
    return [
        run
        for example in examples
        for run in [Run(example, "velo", velo=weights) for weights in velo_weights]
        + [Run(example, "adamw", KERAS_DEFAULT_ADAMW_RATE)]
        + [Run(example, "adam", rate) for rate in rates]
    ]


def checkpoint_files(spec):
    """The files VeLO reads for `weights=spec` when it is a checkpoint path, else `[]` (a weights name).

    Relative paths start from the repository root, where the runs start.
    """
    from keras_velo.weights import checkpoint, pretrained

    names = {*pretrained.PUBLISHED_WEIGHTS, *pretrained.BUNDLED_WEIGHTS, pretrained.BUNDLED_NAME}
    path = REPOSITORY_ROOT / pathlib.Path(spec).expanduser()
    if spec in names or not path.exists():
        return []
    if path.is_file():
        return [path]
    candidates = (checkpoint.PARAMS_FILENAME, checkpoint.COMPRESSED_PARAMS_FILENAME)
    return [path / name for name in candidates if (path / name).is_file()]


def source_digest(run):
    """SHA-256 of the code behind `run`: its script, `_common.py` and, for VeLO, keras_velo and its weights.

    keras_velo holds the bundled weights; for a checkpoint path, the
    checkpoint's file counts too (`checkpoint_files`).
    """
    import hashlib

    import keras_velo

    paths = [EXAMPLES_DIR / f"{run.example}.py", EXAMPLES_DIR / "_common.py"]
    if run.optimizer == "velo":
        package = pathlib.Path(keras_velo.__file__).resolve().parent
        paths += sorted(p for p in package.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
        paths += checkpoint_files(run.velo.spec)
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
        arguments = run.arguments(out, args.seed, args.quick)
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


def _summary(record, name):
    return {
        "label": record["label"],
        "learning_rate": record["learning_rate"],
        "final_train_loss": record["final_train_loss"],
        "metric": record["metric"]["value"],
        "seconds": record["seconds"],
        "run": str(pathlib.Path("runs") / record["example"] / f"{name}.json"),
    }


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


def _ratios(key, record, others):
    """`{"train_loss_<key>_over_<other>": ..., "metric_<key>_over_<other>": ...}` for each of `others`."""
    quantities = {"train_loss": lambda r: r["final_train_loss"], "metric": lambda r: r["metric"]["value"]}
    return {
        f"{quantity}_{key}_over_{other}": _ratio(value(record), value(other_record))
        for quantity, value in quantities.items()
        for other, other_record in others.items()
    }


def _verdict(value, reference, higher_is_better):
    """`"better"`, `"same"` or `"worse"`: a validation metric against the first VeLO's (NaN is worst)."""
    finite, reference_finite = math.isfinite(value), math.isfinite(reference)
    if not (finite and reference_finite):
        return "same" if finite == reference_finite else "better" if finite else "worse"
    if value == reference:
        return "same"
    return "better" if (value > reference) == higher_is_better else "worse"


def _velo_summary(weights, record):
    return {"title": weights.title, "weights": weights.spec, **_summary(record, weights.key)}


def summarise(examples, grid, records, velo_weights):
    """`{example: comparison}` from the run records; examples missing a run are left out.

    `velo_weights`: the `VeLOWeights` compared, the first being "VeLO".
    """
    by_key = {(run.example, run.name): record for run, record in records.items()}
    results = {}
    for example in examples:
        velos = [by_key.get((example, weights.key)) for weights in velo_weights]
        default = by_key.get((example, Run(example, "adam", KERAS_DEFAULT_ADAM_RATE).name))
        adamw = by_key.get((example, Run(example, "adamw", KERAS_DEFAULT_ADAMW_RATE).name))
        grid_records = {
            rate: by_key.get((example, Run(example, "adam", rate).name)) for rate in grid
        }
        if any(r is None for r in [*velos, default, adamw, *grid_records.values()]):
            continue
        velo = velos[0]
        metric = velo["metric"]
        tuned_rate = best_rate(grid_records, metric["higher_is_better"])
        tuned = grid_records[tuned_rate]
        baselines = dict(zip(BASELINES, (default, adamw, tuned)))
        results[example] = {
            "metric": {"name": metric["name"], "higher_is_better": metric["higher_is_better"]},
            "data": velo["data"],
            "steps": velo["steps"],
            "velo": _velo_summary(velo_weights[0], velo),
            "adam_default": _summary(default, Run(example, "adam", KERAS_DEFAULT_ADAM_RATE).name),
            "adamw": _summary(adamw, Run(example, "adamw", KERAS_DEFAULT_ADAMW_RATE).name),
            "adam_tuned": _summary(tuned, Run(example, "adam", tuned_rate).name),
            "tuned_learning_rate": tuned_rate,
            "grid": {f"{rate:g}": _summary(record, Run(example, "adam", rate).name)
                     for rate, record in grid_records.items()},
            "ratios": _ratios("velo", velo, baselines),
            "other_velos": {
                weights.key: {
                    **_velo_summary(weights, record),
                    "ratios": _ratios(weights.key, record, {**baselines, "velo": velo}),
                    "against_velo": _verdict(record["metric"]["value"], velo["metric"]["value"],
                                             metric["higher_is_better"]),
                }
                for weights, record in zip(velo_weights[1:], velos[1:])
            },
        }
    return results


def _metric_title(result):
    return result["metric"]["name"] + (" (higher is better)" if result["metric"]["higher_is_better"]
                                       else " (lower is better)")


def markdown_table(results, header):
    """One row per example: the first VeLO against the three Adams; then a table per later VeLO."""
    lines = [
        header,
        "",
        "| example | validation metric | VeLO train loss | Adam(1e-3) train loss | AdamW train loss "
        "| tuned Adam train loss | tuned Adam rate | VeLO metric | Adam(1e-3) metric | AdamW metric "
        "| tuned Adam metric | loss VeLO/Adam(1e-3) | loss VeLO/AdamW | loss VeLO/tuned "
        "| metric VeLO/Adam(1e-3) | metric VeLO/AdamW | metric VeLO/tuned |",
        "|---|---|" + "---:|" * 15,
    ]
    for example, result in results.items():
        ratios = result["ratios"]
        cells = [
            example, _metric_title(result),
            *(f"{result[who]['final_train_loss']:.4g}" for who in ("velo", *BASELINES)),
            f"{result['tuned_learning_rate']:g}",
            *(f"{result[who]['metric']:.4g}" for who in ("velo", *BASELINES)),
            *(f"{ratios[f'{quantity}_velo_over_{who}']:.3g}"
              for quantity in ("train_loss", "metric") for who in BASELINES),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Train loss: on training examples after training, inference mode. Ratios are VeLO / Adam: "
        "below 1, VeLO's loss (or MAE, MSE) is lower; for accuracy, above 1 means VeLO is more accurate. "
        "AdamW: Keras' defaults (learning rate 1e-3, weight decay 0.004).",
    ]
    others = {}
    for example, result in results.items():
        for key, other in result["other_velos"].items():
            others.setdefault(key, []).append((example, result, other))
    for key, rows in others.items():
        title = rows[0][2]["title"]
        worse = [example for example, _, other in rows if other["against_velo"] == "worse"]
        lines += [
            "",
            f"{title} ({rows[0][2]['weights']}) against VeLO ({rows[0][1]['velo']['weights']}): "
            + (f"worse on {len(worse)} of {len(rows)} examples ({', '.join(worse)})" if worse
               else f"no example worse than VeLO ({len(rows)} examples)"),
            "",
            f"| example | validation metric | {title} train loss | {title} metric | vs VeLO "
            "| loss /VeLO | loss /Adam(1e-3) | loss /AdamW | loss /tuned "
            "| metric /VeLO | metric /Adam(1e-3) | metric /AdamW | metric /tuned |",
            "|---|---|---:|---:|---|" + "---:|" * 8,
        ]
        for example, result, other in rows:
            cells = [
                example, _metric_title(result),
                f"{other['final_train_loss']:.4g}", f"{other['metric']:.4g}", other["against_velo"],
                *(f"{other['ratios'][f'{quantity}_{key}_over_{who}']:.3g}"
                  for quantity in ("train_loss", "metric") for who in ("velo", *BASELINES)),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    if others:
        lines += ["", "vs VeLO: the validation metric against the first VeLO's (NaN is worst)."]
    return "\n".join(lines) + "\n"


def moving_average(values, window):
    """`(positions, means)`: the mean of each `window` consecutive values, at its last step (1-based)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    means = np.convolve(values, np.ones(window) / window, mode="valid")
    return np.arange(window, len(values) + 1), means


VELO_COLOURS = ["C3", "C1", "C4", "C5", "C6", "C8", "C9"]


def plot_curves(results, out, path, title):
    """One panel per example: training loss per step of every VeLO, Adam(1e-3), AdamW and tuned Adam."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogFormatter

    columns = min(3, len(results))
    rows = -(-len(results) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, (example, result) in zip(axes.flat, results.items()):
        velos = [result["velo"], *result["other_velos"].values()]
        curves = [(summary, f"{summary['title']} ({summary['weights']})", colour, "-")
                  for summary, colour in zip(velos, VELO_COLOURS * len(velos))]
        curves += [(result["adam_default"], result["adam_default"]["label"], "C0", "-"),
                   (result["adamw"], result["adamw"]["label"], "C7", "-"),
                   (result["adam_tuned"], f"tuned {result['adam_tuned']['label']}", "C2", "--")]
        for summary, label, colour, style in curves:
            record = json.loads((out / summary["run"]).read_text())
            steps, losses = moving_average(record["step_losses"], len(record["step_losses"]) // 30)
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
                        help='VeLO\'s weights, comma-separated name=spec or plain specs, a spec being '
                        '"bundled" (default, offline), "velo" or a checkpoint path; the first is "VeLO", '
                        'the others "VeLO <name>" (e.g. bundled,candidate=/work/thetas/repaired)')
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
    try:
        args.velo_weights = parse_velo_weights(args.velo_weights)
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv=None):
    args = parse_arguments(argv)
    backend = os.environ.get("KERAS_BACKEND", "jax")
    out = args.out.resolve()  # the runs start in the repository root
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(args.examples, args.grid, args.velo_weights)
    velos = ", ".join(f"{weights.title} ({weights.spec})" for weights in args.velo_weights)
    print(f"{len(runs)} runs on {backend}: {', '.join(args.examples)}; {velos}, AdamW(1e-3), "
          f"Adam at {', '.join(f'{rate:g}' for rate in sorted(set(args.grid) | {KERAS_DEFAULT_ADAM_RATE}))}"
          f"{' (quick)' if args.quick else ''} -> {out}", flush=True)
    records = execute(runs, out, args, backend)
    results = summarise(args.examples, args.grid, records, args.velo_weights)
    header = (f"{velos} vs Adam(1e-3) vs AdamW(1e-3, weight decay 0.004) vs Adam tuned over "
              f"{{{', '.join(f'{rate:g}' for rate in args.grid)}}}; backend {backend}, seed {args.seed}"
              f"{', quick' if args.quick else ''}")
    table = markdown_table(results, header)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(
        {"backend": backend, "seed": args.seed, "quick": args.quick, "grid": args.grid,
         "velo_weights": [dataclasses.asdict(weights) for weights in args.velo_weights],
         "examples": results}, indent=1) + "\n")
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
