"""VeLO against the alternatives' defaults on the Transformer tasks of `ood-valid-v1`.

    python -m meta.experiments.transformer_tasks.run            # bundled VeLO, AdamW, ScheduleFreeAdamW, Muon
    python -m meta.experiments.transformer_tasks.run --velo bundled,candidate=meta/runs/cpu-transformers/theta
    python -m meta.experiments.transformer_tasks.run --quick --out /tmp/tt     # a few steps per run

Issue 33's goal for Transformers includes the GPT-2- and ViT-like tasks of
`ood-valid-v1` (`vit-user`, `vit-post-deep`, `gpt-user`, `gpt-post-deep`),
where meta-validation only has Adam(1e-3) references. Each run trains one
task with one optimizer exactly as meta-validation and the Adam references
do (`meta.adam_reference.compute_reference`): from the task's initial
weights, on the batches of its data seed, for its horizon, one
`stateless_apply` of the Keras optimizer per step under `jax.jit` (VeLO is
given each step's loss). The curve is scored as meta-validation scores it:
the training loss over the first step's, clipped to [0, 1.5]; `final` is the
mean over the last 10% of the steps, `mean` over all.

Writes `OUT/runs/<task>/<optimizer>.json` (skipped when present: the study
resumes), `OUT/results.json`, `OUT/table.md` and `OUT/curves.png`. JAX only.
"""

import argparse
import json
import os
import pathlib
import sys
import time

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")

TASKS = ("vit-user", "vit-post-deep", "gpt-user", "gpt-post-deep")
ALTERNATIVES = ("adamw", "schedule_free_adamw", "muon")
MAX_LOSS_RATIO = 1.5  # meta-validation's clip (meta.estimators.normalised_loss)
QUICK_STEPS = 5
DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "results"


def make_optimizer(name, velo_weights, total_steps):
    """A Keras optimizer at its defaults: an alternative by name, or VeLO with `velo_weights`."""
    if velo_weights is not None:
        import keras_velo

        return keras_velo.VeLO(total_steps=total_steps, weights=velo_weights)
    from evaluation.alternatives import ALTERNATIVES as BY_NAME

    return BY_NAME[name].make(total_steps=total_steps)


def train(task, optimizer, steps):
    """Per-step training losses of `task` (`ValidationTask`) trained with `optimizer` for `steps`."""
    import jax

    from meta.functional_task import FunctionalTask

    functional = FunctionalTask(task.config)
    model_variables = functional._model.trainable_variables
    optimizer.build(model_variables)
    optimizer_variables = [v.value for v in optimizer.variables]
    takes_loss = hasattr(optimizer, "total_steps")  # VeLO reads the loss of every step

    @jax.jit
    def step(trainable, non_trainable, optimizer_variables, x, y):
        loss, grads, non_trainable = functional.loss_and_grads(trainable, non_trainable, x, y)
        extra = {"loss": loss} if takes_loss else {}
        trainable, optimizer_variables = optimizer.stateless_apply(
            optimizer_variables, grads, trainable, **extra)
        return loss, trainable, non_trainable, optimizer_variables

    trainable, non_trainable = functional.initial_state(1.0)
    batches = functional.train_batches(task.data_seed)
    losses = []
    for _ in range(steps):
        x, y = next(batches)
        loss, trainable, non_trainable, optimizer_variables = step(
            trainable, non_trainable, optimizer_variables, x, y)
        losses.append(loss)
    return np.asarray([float(v) for v in losses], np.float64)


def summarise(losses):
    """meta-validation's `final` and `mean` of a loss curve, and the curve in 50 windows."""
    normalised = np.clip(losses / losses[0], 0.0, MAX_LOSS_RATIO)
    last = max(1, int(round(0.1 * normalised.size)))
    windows = np.array_split(normalised, min(50, normalised.size))
    return {"final": float(normalised[-last:].mean()), "mean": float(normalised.mean()),
            "final_loss": float(losses[-last:].mean()), "first_loss": float(losses[0]),
            "curve": [round(float(w.mean()), 5) for w in windows]}


def contenders(velo_spec, alternatives=ALTERNATIVES):
    """`[(label, velo_weights or None)]`: each VeLO of `velo_spec` ("name=spec" or a spec), then the alternatives."""
    out = []
    for item in [s.strip() for s in velo_spec.split(",") if s.strip()]:
        label, _, spec = item.rpartition("=")
        out.append((f"velo_{label or pathlib.Path(spec).name}", spec))
    return out + [(name, None) for name in alternatives]


def run_all(out, velo_spec, quick=False, tasks=TASKS, alternatives=ALTERNATIVES, log=print):
    """Every (task, contender) not yet recorded under `out/runs`; returns `{task: {label: summary}}`."""
    from meta.ood_validation import OOD_TASKS

    results = {}
    for task in [t for t in OOD_TASKS if t.name in tasks]:
        steps = QUICK_STEPS if quick else task.horizon
        for label, velo_weights in contenders(velo_spec, alternatives):
            path = pathlib.Path(out, "runs", task.name, f"{label}.json")
            if path.exists():
                record = json.loads(path.read_text())
            else:
                started = time.perf_counter()
                optimizer = make_optimizer(label, velo_weights, steps)
                losses = train(task, optimizer, steps)
                record = dict(summarise(losses), steps=steps, task=task.name, optimizer=label,
                              velo_weights=velo_weights, seconds=round(time.perf_counter() - started, 1))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(record) + "\n")
                log(f"{task.name} / {label}: final {record['final']:.4f} (loss {record['final_loss']:.4f}), "
                    f"{record['seconds']:.0f} s")
            results.setdefault(task.name, {})[label] = record
    return results


def table(results):
    labels = list(next(iter(results.values())))
    lines = ["`final` (mean training loss over the last 10% of the steps / the first step's loss; "
             "lowest in bold) and the final training loss:", "",
             "| task | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for task, by_label in results.items():
        best = min(r["final"] for r in by_label.values())
        cells = [(f"**{r['final']:.4f}**" if r["final"] == best else f"{r['final']:.4f}")
                 + f" ({r['final_loss']:.3f})" for r in by_label.values()]
        lines.append(f"| {task} ({next(iter(by_label.values()))['steps']} steps) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(results), figsize=(4 * len(results), 3.2), squeeze=False)
    for axis, (task, by_label) in zip(axes[0], results.items()):
        for label, record in by_label.items():
            axis.plot(np.linspace(0, 1, len(record["curve"])), record["curve"], label=label)
        axis.set_title(task)
        axis.set_xlabel("fraction of training")
        axis.set_ylabel("loss / first loss")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m meta.experiments.transformer_tasks.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--velo", default="bundled",
                        help="VeLO weights, comma-separated, each name=spec or a spec (default: %(default)s)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results directory (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps per run: does it run?")
    args = parser.parse_args(argv)
    import keras

    if keras.backend.backend() != "jax":
        parser.error("runs on the JAX backend only (KERAS_BACKEND=jax)")
    results = run_all(args.out, args.velo, args.quick)
    out = pathlib.Path(args.out)
    compact = {task: {label: {k: v for k, v in r.items() if k != "curve"} for label, r in by_label.items()}
               for task, by_label in results.items()}
    (out / "results.json").write_text(json.dumps(compact, indent=1) + "\n")
    text = table(results)
    (out / "table.md").write_text(text)
    plot(results, out / "curves.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
