"""Update sizes by kind of tensor: VeLO against AdamW, ScheduleFreeAdamW and Muon on the KerasHub examples.

    python -m meta.experiments.update_sizes.run                      # both examples, the five optimizers
    python -m meta.experiments.update_sizes.run --velo bootstrap,cpu-v3=/work/thetas/cpu-v3
    python -m meta.experiments.update_sizes.run --quick --out /tmp/sizes   # a few steps per run

Each run is `examples/<example>.py --update-sizes` (same initial weights
and batches for every optimizer), which records, per tensor, the RMS of
its updates averaged over the first and the last 20% of the steps and
the tensor's RMS at the start and the end. This script groups the tensors
by kind (`tensor_kind`: token and position embeddings, class token, patch
embedding, LayerNorm scales and offsets, attention and MLP kernels,
biases, the output head), and writes `OUT/summary.json` (per example,
kind and optimizer: the mean update RMS early and late, the mean tensor
RMS at the end), `OUT/table.md` and `OUT/update_sizes.png`. Runs already
done (their JSON in `OUT/runs/`) are skipped.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import numpy as np

REPOSITORY_ROOT = pathlib.Path(__file__).resolve().parents[3]
EXAMPLES = ("keras_hub_vit", "keras_hub_gpt2")
ALTERNATIVES = ("adamw", "schedule_free_adamw", "muon")
KINDS = (  # (kind, test on the tensor's path), first match wins
    ("token embedding", lambda p: "token_embedding" in p),
    ("position embedding", lambda p: "position_embedding" in p),
    ("class token", lambda p: "class_token" in p),
    ("patch embedding", lambda p: "patch_embedding" in p),
    ("LayerNorm scale", lambda p: p.endswith("/gamma")),
    ("LayerNorm offset", lambda p: p.endswith("/beta")),
    ("attention kernel", lambda p: p.endswith("/kernel") and any(
        f"/{name}/" in p for name in ("query", "key", "value", "attention_output"))),
    ("output head", lambda p: p.startswith(("class_logits/", "byte_logits/"))),
    ("MLP kernel", lambda p: p.endswith("/kernel")),
    ("bias", lambda p: p.endswith("/bias")),
)


def tensor_kind(path):
    """The kind of a KerasHub ViT or GPT-2 tensor from its variable path.

    >>> tensor_kind("vit_encoder/transformer_block_1/ln_1/gamma")
    'LayerNorm scale'
    """
    for kind, matches in KINDS:
        if matches(path):
            return kind
    return "other"


def parse_optimizers(velo, alternatives):
    """`[(name, arguments)]`: each VeLO (`name=weights` or a shipped name) and each alternative."""
    runs = []
    for item in filter(None, (part.strip() for part in velo.split(","))):
        name, _, weights = item.partition("=")
        runs.append((f"velo_{name}", ["--optimizer", "velo", "--weights", weights or name]))
    runs += [(name, ["--optimizer", name]) for name in alternatives]
    return runs


def run_all(examples, optimizers, out, quick):
    """Runs (or finds) every (example, optimizer); returns `{example: {name: record}}`."""
    env = {**os.environ, "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPOSITORY_ROOT), os.environ.get("PYTHONPATH")]))}
    records = {}
    for example in examples:
        for name, arguments in optimizers:
            path = out / "runs" / example / f"{name}.json"
            if not path.exists():
                print(f"{example} {name} ...", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                command = [sys.executable, str(REPOSITORY_ROOT / "examples" / f"{example}.py"), *arguments,
                           "--update-sizes", "--verbose", "0", "--json", str(path)] + (["--quick"] if quick else [])
                subprocess.run(command, check=True, env=env, cwd=REPOSITORY_ROOT)
            records.setdefault(example, {})[name] = json.loads(path.read_text())
    return records


def summarise(records):
    """`{example: {kind: {optimizer: {"early", "late", "rms_end", "tensors"}}}}`: means over the kind's tensors."""
    summary = {}
    for example, by_optimizer in records.items():
        for name, record in by_optimizer.items():
            groups = {}
            for path, sizes in record["update_sizes"].items():
                groups.setdefault(tensor_kind(path), []).append(sizes)
            for kind, members in groups.items():
                summary.setdefault(example, {}).setdefault(kind, {})[name] = {
                    "early": float(np.mean([m["early"] for m in members])),
                    "late": float(np.mean([m["late"] for m in members])),
                    "rms_end": float(np.mean([m["rms_end"] for m in members])),
                    "tensors": len(members),
                    "final_train_loss": record["final_train_loss"],
                }
    return summary


def markdown(summary):
    lines = []
    for example, kinds in summary.items():
        names = list(next(iter(kinds.values())))
        losses = ", ".join(f"{n} {kinds[next(iter(kinds))][n]['final_train_loss']:.3f}" for n in names)
        lines += [f"### {example} (final training loss: {losses})", "",
                  "Mean RMS of one update over the first / the last 20% of the steps, and the tensors' "
                  "RMS at the end:", "",
                  "| kind | tensors | " + " | ".join(f"{n} early / late | {n} RMS at end" for n in names) + " |",
                  "|---|---:|" + "---:|---:|" * len(names)]
        for kind, by_name in kinds.items():
            cells = [f"{by_name[n]['early']:.2g} / {by_name[n]['late']:.2g} | {by_name[n]['rms_end']:.3g}"
                     if n in by_name else "— | —" for n in names]
            lines.append(f"| {kind} | {next(iter(by_name.values()))['tensors']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(summary, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(summary), 2, figsize=(13, 3.8 * len(summary)), squeeze=False)
    for row, (example, kinds) in zip(axes, summary.items()):
        names = list(next(iter(kinds.values())))
        positions = np.arange(len(kinds))
        width = 0.8 / len(names)
        for ax, phase in zip(row, ("early", "late")):
            for i, name in enumerate(names):
                values = [kinds[k].get(name, {}).get(phase, np.nan) for k in kinds]
                ax.bar(positions + i * width, values, width, label=name)
            ax.set_xticks(positions + 0.4 - width / 2, list(kinds), rotation=30, ha="right", fontsize=7)
            ax.set_yscale("log")
            ax.set_ylabel("RMS of one update")
            ax.set_title(f"{example}: {'first' if phase == 'early' else 'last'} 20% of training", fontsize=9)
            ax.grid(True, axis="y", alpha=0.3)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m meta.experiments.update_sizes.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--examples", default=",".join(EXAMPLES))
    parser.add_argument("--velo", default="bootstrap",
                        help="comma-separated VeLO weights: shipped names or name=checkpoint path")
    parser.add_argument("--alternatives", default=",".join(ALTERNATIVES))
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path(__file__).resolve().parent / "results")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    examples = [e for e in args.examples.split(",") if e]
    optimizers = parse_optimizers(args.velo, [a for a in args.alternatives.split(",") if a])
    records = run_all(examples, optimizers, args.out, args.quick)
    summary = summarise(records)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    text = markdown(summary)
    (args.out / "table.md").write_text(text)
    plot(summary, args.out / "update_sizes.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
