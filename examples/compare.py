"""Run every example with VeLO and with what a Keras user would pick instead, and compare them.

    python examples/compare.py                             # all seven examples, ~120 runs
    python examples/compare.py --examples image_convnet,autoencoder --alternatives adam,muon
    python examples/compare.py --velo-weights bundled,bootstrap,candidate=/work/thetas/x
    python examples/compare.py --quick --untuned --out /tmp/comparison   # a few steps per run
    KERAS_BACKEND=torch python examples/compare.py --out examples/comparison_torch

For each example (`image_convnet`, `text_transformer`,
`timeseries_forecasting`, `autoencoder`, `residual_batchnorm`,
`keras_hub_gpt2`, `keras_hub_vit`) it runs, each in its own Python process
(so backends and XLA compiles cannot interfere) and all with the same
`--seed` (same initial weights, same batches):

* VeLO with each of `--velo-weights` (comma-separated `name=spec` or plain
  specs, a spec being "bundled", "bootstrap", "velo" or a checkpoint path;
  default: the bundled weights, offline). The first is "VeLO"; each later
  one is "VeLO <name>" (a plain spec is named by its last path component);
* every optimizer of `--alternatives` (`evaluation.alternatives`: Adam,
  AdamW, AdamW with warm-up and cosine decay, ScheduleFreeAdamW, Muon) at
  every learning rate of its grid, Keras' default among them. `--grid`
  replaces Adam's grid; `--untuned` runs each at its default only (Adam at
  `--grid` still). An optimizer's "tuned" run is its grid point with the
  best final validation metric (accuracy, or the lowest loss, MAE or MSE);
  tuned Adam is the VeLO paper's reference.

Every final training loss is the loss the optimizer minimised: measured in
inference mode after BatchNorm's moving statistics are re-estimated on the
training examples (`evaluation.batch_norm`; a model without BatchNorm needs
nothing), so a network whose moving statistics lag is not scored on the
lag. Validation metrics are inference-mode numbers with the same
re-estimated statistics.

Each run writes `OUT/runs/<example>/<name>.json`, `<name>` being `velo`
(the first VeLO), `velo_<name>` (the others) or `<optimizer>_lr<rate>`
(`adam_lr0.001`, `muon_lr0.003`, ...), and its console output to
`OUT/logs/`. A run whose JSON is already there, from the same command,
backend and code (a SHA-256 of the example's script, `_common.py`,
`evaluation/alternatives.py`, `evaluation/batch_norm.py` and, for VeLO, the
keras_velo package with its weights and the files of a checkpoint path),
is skipped, so an interrupted comparison resumes where it stopped and a run
whose code changed since is run again (`--force` reruns everything). At the
end it writes:

* `OUT/results.json`: per example, each VeLO's final training loss and
  validation metric; per alternative its default run, its tuned run and
  rate, and every grid point; the first VeLO's ratios against each
  alternative at its default and tuned (`ratios`); for each later VeLO
  (`other_velos`) the same ratios, its ratios against the first VeLO and
  whether its metric is better; and per VeLO the summary a user reads
  first (`summary`: examples at or below tuned Adam and Adam(1e-3), at or
  below the best alternative, median loss ratio to tuned Adam);
* `OUT/table.md` (also printed): the final training losses and validation
  metrics side by side, each VeLO's loss ratios, and the summary;
* `OUT/loss_curves.png`: training loss per step (moving average), one panel
  per example, every VeLO against Adam(1e-3), tuned Adam and the user's
  alternatives at their defaults.

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
sys.path.insert(0, str(REPOSITORY_ROOT))  # evaluation.alternatives, run as `python examples/compare.py`
from evaluation.alternatives import ALTERNATIVES, USER_CHOICES  # noqa: E402

EXAMPLES = (
    "image_convnet",
    "text_transformer",
    "timeseries_forecasting",
    "autoencoder",
    "residual_batchnorm",
    "keras_hub_gpt2",
    "keras_hub_vit",
)
VELO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
SHARED_CODE = ("examples/_common.py", "evaluation/alternatives.py", "evaluation/batch_norm.py")
REFERENCE = "adam_tuned"  # the VeLO paper's reference: Adam, learning rate tuned over its grid
ADAM_DEFAULT = "adam_default"


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
    """One training run: an example with VeLO (weights `velo`) or an alternative at a rate."""

    example: str
    optimizer: str  # "velo" or a key of evaluation.alternatives.ALTERNATIVES
    learning_rate: float | None = None
    velo: VeLOWeights | None = None

    def __post_init__(self):
        if (self.optimizer == "velo") != (self.velo is not None):
            raise ValueError(f"Run {self.example} {self.optimizer}: VeLO runs, and only they, need `velo`")
        if self.optimizer != "velo" and self.optimizer not in ALTERNATIVES:
            raise ValueError(f"Run {self.example}: unknown optimizer {self.optimizer!r}")

    @property
    def name(self):
        """`"velo"`, `"velo_<name>"` or `"<optimizer>_lr<rate>"`: the file name, without extension."""
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


def default_grids(alternatives=tuple(ALTERNATIVES), adam_grid=None, untuned=False):
    """`{alternative: (learning rates)}`: each one's grid, or only its default with `untuned`.

    `adam_grid` replaces Adam's grid (Adam's default, 1e-3, is always added).
    """
    grids = {}
    for name in alternatives:
        alternative = ALTERNATIVES[name]
        rates = alternative.grid
        if name == "adam" and adam_grid is not None:
            rates = adam_grid
        elif untuned:
            rates = ()
        grids[name] = tuple(sorted({float(rate) for rate in rates} | {alternative.default_learning_rate}))
    return grids


def plan_runs(examples, grids, velo_weights):
    """Per example: each VeLO of `velo_weights`, then every alternative at every rate of its grid."""
    return [
        run
        for example in examples
        for run in [Run(example, "velo", velo=weights) for weights in velo_weights]
        + [Run(example, name, rate) for name, rates in grids.items() for rate in rates]
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
    """SHA-256 of the code behind `run`: its script, `SHARED_CODE` and, for VeLO, keras_velo and its weights.

    keras_velo holds the bundled weights; for a checkpoint path, the
    checkpoint's file counts too (`checkpoint_files`).
    """
    import hashlib

    import keras_velo

    paths = [EXAMPLES_DIR / f"{run.example}.py", *(REPOSITORY_ROOT / path for path in SHARED_CODE)]
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
        "train_loss_mode": record.get("train_loss_mode"),
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


def _ratios(key, summary, others):
    """`{"train_loss_<key>_over_<other>": ..., "metric_<key>_over_<other>": ...}` for each of `others`."""
    return {
        f"{quantity}_{key}_over_{other}": _ratio(summary[field], other_summary[field])
        for quantity, field in (("train_loss", "final_train_loss"), ("metric", "metric"))
        for other, other_summary in others.items()
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


def contender_keys(grids):
    """The keys of the alternatives' runs in a result, in table order: `<name>_default`, and
    `<name>_tuned` for every alternative with more than one rate."""
    keys = []
    for name, rates in grids.items():
        keys.append(f"{name}_default")
        if len(rates) > 1:
            keys.append(f"{name}_tuned")
    return keys


def contender_title(key, result=None):
    """`"Adam(1e-3)"`-style titles: `"Muon"`, `"tuned Muon (0.003)"`."""
    name, _, which = key.rpartition("_")
    title = ALTERNATIVES[name].title
    if which == "default":
        return f"{title}({ALTERNATIVES[name].default_learning_rate:g})"
    rate = f" ({result['alternatives'][name]['tuned_learning_rate']:g})" if result else ""
    return f"tuned {title}{rate}"


def summarise(examples, grids, records, velo_weights):
    """`{example: comparison}` from the run records; examples missing a run are left out.

    `grids`: `{alternative: rates}` (`default_grids`); `velo_weights`: the
    `VeLOWeights` compared, the first being "VeLO".
    """
    by_key = {(run.example, run.name): record for run, record in records.items()}
    results = {}
    for example in examples:
        velos = [by_key.get((example, weights.key)) for weights in velo_weights]
        grid_records = {name: {rate: by_key.get((example, Run(example, name, rate).name)) for rate in rates}
                        for name, rates in grids.items()}
        if any(r is None for r in velos) or any(
                r is None for rates in grid_records.values() for r in rates.values()):
            continue
        metric = velos[0]["metric"]
        alternatives, contenders = {}, {}
        for name, rate_records in grid_records.items():
            default_rate = ALTERNATIVES[name].default_learning_rate
            tuned_rate = best_rate(rate_records, metric["higher_is_better"])
            summaries = {rate: _summary(record, Run(example, name, rate).name)
                         for rate, record in rate_records.items()}
            alternatives[name] = {"default": summaries[default_rate], "tuned": summaries[tuned_rate],
                                  "tuned_learning_rate": tuned_rate,
                                  "grid": {f"{rate:g}": summary for rate, summary in summaries.items()}}
            contenders[f"{name}_default"] = summaries[default_rate]
            if len(rate_records) > 1:
                contenders[f"{name}_tuned"] = summaries[tuned_rate]
        velo = _velo_summary(velo_weights[0], velos[0])
        results[example] = {
            "metric": {"name": metric["name"], "higher_is_better": metric["higher_is_better"]},
            "data": velos[0]["data"],
            "steps": velos[0]["steps"],
            "train_loss_mode": velos[0].get("train_loss_mode"),
            "velo": velo,
            "alternatives": alternatives,
            "ratios": _ratios("velo", velo, contenders),
            "other_velos": {},
        }
        for weights, record in zip(velo_weights[1:], velos[1:]):
            other = _velo_summary(weights, record)
            results[example]["other_velos"][weights.key] = {
                **other,
                "ratios": _ratios(weights.key, other, {**contenders, "velo": velo}),
                "against_velo": _verdict(other["metric"], velo["metric"], metric["higher_is_better"]),
            }
    return results


def contenders_of(result):
    """`{key: summary}` of the alternatives' default and tuned runs in one example's result."""
    found = {}
    for name, alternative in result["alternatives"].items():
        found[f"{name}_default"] = alternative["default"]
        if len(alternative["grid"]) > 1:
            found[f"{name}_tuned"] = alternative["tuned"]
    return found


def velo_summaries(results):
    """Per VeLO (`"velo"` and each key of `other_velos`): how it fares over all examples.

    `{"title", "weights", "examples", "at_or_below_adam_default", "at_or_below_tuned_adam",
    "at_or_below_best_alternative", "median_loss_ratio_to_tuned_adam", "worst_loss_ratio_to_tuned_adam"}`,
    counting final training losses (lower is better) over the examples that have tuned Adam.
    """
    keys = {}
    for result in results.values():
        keys.setdefault("velo", (result["velo"]["title"], result["velo"]["weights"]))
        for key, other in result["other_velos"].items():
            keys.setdefault(key, (other["title"], other["weights"]))
    summaries = {}
    for key, (title, weights) in keys.items():
        ratios, below_default, below_best = {}, 0, 0
        for example, result in results.items():
            mine = result["velo"] if key == "velo" else result["other_velos"].get(key)
            contenders = contenders_of(result)
            if mine is None or REFERENCE not in contenders:
                continue
            loss = mine["final_train_loss"]
            ratios[example] = _ratio(loss, contenders[REFERENCE]["final_train_loss"])
            below_default += bool(loss <= contenders[ADAM_DEFAULT]["final_train_loss"])
            below_best += bool(loss <= min(c["final_train_loss"] for c in contenders.values()))
        finite = sorted(r for r in ratios.values() if math.isfinite(r))
        summaries[key] = {
            "title": title, "weights": weights, "examples": len(ratios),
            "at_or_below_adam_default": below_default,
            "at_or_below_tuned_adam": sum(r <= 1 for r in finite),
            "at_or_below_best_alternative": below_best,
            "median_loss_ratio_to_tuned_adam": _median(finite),
            "worst_loss_ratio_to_tuned_adam": max(ratios.values(), default=math.nan,
                                                  key=lambda r: r if math.isfinite(r) else math.inf),
            "loss_ratio_to_tuned_adam": ratios,
        }
    return summaries


def _median(values):
    if not values:
        return math.nan
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else 0.5 * (values[middle - 1] + values[middle])


def _metric_title(result):
    return result["metric"]["name"] + (" (higher is better)" if result["metric"]["higher_is_better"]
                                       else " (lower is better)")


def _cells(values, lower_is_better=True):
    """Numbers formatted for a row, the best one (lowest, or highest) in bold."""
    finite = [v for v in values if math.isfinite(v)]
    best = (min if lower_is_better else max)(finite) if finite else None
    return [f"**{v:.4g}**" if v == best else f"{v:.4g}" for v in values]


def markdown_table(results, header):
    """The losses and metrics side by side, each VeLO's ratios, and the per-VeLO summary."""
    if not results:
        return header + "\n\nNo example has every run.\n"
    first = next(iter(results.values()))
    velo_columns = [("velo", first["velo"]["title"])] + [
        (key, other["title"]) for key, other in first["other_velos"].items()]
    keys = list(contenders_of(first))
    titles = [title for _, title in velo_columns] + [contender_title(k) for k in keys]

    def row_values(result, field):
        velos = [result["velo"] if key == "velo" else result["other_velos"][key] for key, _ in velo_columns]
        contenders = contenders_of(result)
        return [v[field] for v in velos] + [contenders[k][field] for k in keys]

    lines = [header, "", "**Final training loss** (the loss the optimizer minimised: inference mode on "
             "training examples, after re-estimating BatchNorm's statistics on them where the model has "
             "BatchNorm; lowest in bold)", "",
             "| example | " + " | ".join(titles) + " |", "|---|" + "---:|" * len(titles)]
    for example, result in results.items():
        lines.append(f"| {example} | " + " | ".join(_cells(row_values(result, "final_train_loss"))) + " |")
    lines += ["", "**Validation metric** (inference mode, the same BatchNorm statistics; best in bold)", "",
              "| example | metric | " + " | ".join(titles) + " |", "|---|---|" + "---:|" * len(titles)]
    for example, result in results.items():
        cells = _cells(row_values(result, "metric"), not result["metric"]["higher_is_better"])
        lines.append(f"| {example} | {_metric_title(result)} | " + " | ".join(cells) + " |")
    tuned = "; ".join(f"{example}: " + ", ".join(
        f"{ALTERNATIVES[name].title} {alternative['tuned_learning_rate']:g}"
        for name, alternative in result["alternatives"].items() if len(alternative["grid"]) > 1)
        for example, result in results.items())
    lines += ["", f"Tuned rates (best validation metric over each grid): {tuned}."]
    for key, title in velo_columns:
        lines += ["", f"**{title}'s final training loss / each alternative's** (below 1: {title} lower)", "",
                  "| example | " + " | ".join(contender_title(k) for k in keys) + " |",
                  "|---|" + "---:|" * len(keys)]
        for example, result in results.items():
            ratios = result["ratios"] if key == "velo" else result["other_velos"][key]["ratios"]
            lines.append(f"| {example} | " + " | ".join(
                f"{ratios[f'train_loss_{key}_over_{k}']:.3g}" for k in keys) + " |")
    lines += ["", "**Summary** (final training loss, over the examples)", "",
              "| VeLO | weights | at or below Adam(1e-3) | at or below tuned Adam | at or below every "
              "alternative | median ratio to tuned Adam | worst ratio to tuned Adam |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for summary in velo_summaries(results).values():
        n = summary["examples"]
        lines.append(f"| {summary['title']} | {summary['weights']} | {summary['at_or_below_adam_default']}/{n} "
                     f"| {summary['at_or_below_tuned_adam']}/{n} | {summary['at_or_below_best_alternative']}/{n} "
                     f"| {summary['median_loss_ratio_to_tuned_adam']:.3g} "
                     f"| {summary['worst_loss_ratio_to_tuned_adam']:.3g} |")
    others = [key for key, _ in velo_columns[1:]]
    for key in others:
        rows = [(example, result["other_velos"][key]) for example, result in results.items()]
        worse = [example for example, other in rows if other["against_velo"] == "worse"]
        lines += ["", f"{rows[0][1]['title']} ({rows[0][1]['weights']}) against VeLO ({first['velo']['weights']}), "
                  "validation metric: " + (f"worse on {len(worse)} of {len(rows)} examples ({', '.join(worse)})"
                                           if worse else f"no example worse ({len(rows)} examples)")
                  + "; final training loss / VeLO's: "
                  + ", ".join(f"{example} {other['ratios'][f'train_loss_{key}_over_velo']:.3g}"
                              for example, other in rows) + "."]
    return "\n".join(lines) + "\n"


def moving_average(values, window):
    """`(positions, means)`: the mean of each `window` consecutive values, at its last step (1-based)."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    window = max(1, min(window, len(values)))
    means = np.convolve(values, np.ones(window) / window, mode="valid")
    return np.arange(window, len(values) + 1), means


VELO_COLOURS = ["C3", "C1", "C4", "C5", "C6", "C8", "C9"]
CURVES = (  # what the plot shows beside the VeLOs: (contender key, colour, line style)
    ("adam_default", "C0", ":"),
    ("adam_tuned", "C2", "--"),
    ("adamw_cosine_default", "C7", "-"),
    ("schedule_free_adamw_default", "C9", "-"),
    ("muon_default", "C8", "-"),
)


def plot_curves(results, out, path, title):
    """One panel per example: training loss per step of every VeLO, Adam(1e-3), tuned Adam and
    the user's alternatives (AdamW cosine, ScheduleFreeAdamW, Muon) at their defaults."""
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
        contenders = contenders_of(result)
        curves += [(contenders[key], contender_title(key, result), colour, style)
                   for key, colour, style in CURVES if key in contenders]
        for summary, label, colour, style in curves:
            record = json.loads((out / summary["run"]).read_text())
            steps, losses = moving_average(record["step_losses"], len(record["step_losses"]) // 30)
            ax.plot(steps, losses, color=colour, linestyle=style,
                    label=f"{label}: {result['metric']['name']} {summary['metric']:.3g}")
        ax.set_title(example, fontsize=10)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (moving average)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 0.1, not 10^-1
        ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
        ax.tick_params(axis="y", which="both", labelsize=7)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=6)
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
    parser.add_argument("--alternatives", default=",".join(ALTERNATIVES),
                        help=f"comma-separated subset of {','.join(ALTERNATIVES)} (adam is always run: "
                        "tuned Adam is the reference)")
    parser.add_argument("--grid", default=None,
                        help="Adam's learning rates to tune over (comma-separated; default "
                        f"{','.join(f'{r:g}' for r in ALTERNATIVES['adam'].grid)})")
    parser.add_argument("--untuned", action="store_true",
                        help="every alternative but Adam at its default rate only")
    parser.add_argument("--out", type=pathlib.Path, default=EXAMPLES_DIR / "comparison",
                        help="output folder (default: examples/comparison)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--velo-weights", default="bundled",
                        help='VeLO\'s weights, comma-separated name=spec or plain specs, a spec being '
                        '"bundled" (default, offline), "bootstrap", "velo" or a checkpoint path; the first '
                        'is "VeLO", the others "VeLO <name>" (e.g. bundled,candidate=/work/thetas/x)')
    parser.add_argument("--quick", action="store_true", help="a few steps per run (for tests)")
    parser.add_argument("--force", action="store_true", help="rerun runs whose JSON exists")
    args = parser.parse_args(argv)
    args.examples = [name.strip() for name in args.examples.split(",") if name.strip()]
    unknown = sorted(set(args.examples) - set(EXAMPLES))
    if unknown or not args.examples:
        parser.error(f"unknown examples {unknown}; choose from {', '.join(EXAMPLES)}")
    alternatives = {name.strip() for name in args.alternatives.split(",") if name.strip()} | {"adam"}
    unknown = sorted(alternatives - set(ALTERNATIVES))
    if unknown:
        parser.error(f"unknown alternatives {unknown}; choose from {', '.join(ALTERNATIVES)}")
    adam_grid = None
    if args.grid is not None:
        try:
            adam_grid = sorted({float(rate) for rate in args.grid.split(",") if rate.strip()})
        except ValueError:
            parser.error(f"--grid must be comma-separated numbers, got {args.grid!r}")
        if not adam_grid or min(adam_grid) <= 0:
            parser.error(f"--grid needs positive learning rates, got {adam_grid}")
    args.grids = default_grids([name for name in ALTERNATIVES if name in alternatives], adam_grid,
                               args.untuned)
    try:
        args.velo_weights = parse_velo_weights(args.velo_weights)
    except ValueError as error:
        parser.error(str(error))
    return args


def _describe_grids(grids):
    return "; ".join(f"{ALTERNATIVES[name].title} at {', '.join(f'{rate:g}' for rate in rates)}"
                     for name, rates in grids.items())


def main(argv=None):
    args = parse_arguments(argv)
    backend = os.environ.get("KERAS_BACKEND", "jax")
    out = args.out.resolve()  # the runs start in the repository root
    out.mkdir(parents=True, exist_ok=True)
    runs = plan_runs(args.examples, args.grids, args.velo_weights)
    velos = ", ".join(f"{weights.title} ({weights.spec})" for weights in args.velo_weights)
    print(f"{len(runs)} runs on {backend}: {', '.join(args.examples)}; {velos}; {_describe_grids(args.grids)}"
          f"{' (quick)' if args.quick else ''} -> {out}", flush=True)
    records = execute(runs, out, args, backend)
    results = summarise(args.examples, args.grids, records, args.velo_weights)
    header = (f"{velos} against {_describe_grids(args.grids)}; backend {backend}, seed {args.seed}"
              f"{', quick' if args.quick else ''}")
    table = markdown_table(results, header)
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps(
        {"backend": backend, "seed": args.seed, "quick": args.quick,
         "grids": {name: list(rates) for name, rates in args.grids.items()},
         "velo_weights": [dataclasses.asdict(weights) for weights in args.velo_weights],
         "summary": velo_summaries(results),
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
