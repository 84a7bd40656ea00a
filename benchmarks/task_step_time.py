"""Measured training-step time of every task of a suite, with Adam and with VeLO.

What is measured
----------------
For each task of `--suite` (default `canonical-cpu-v1`) on the backend named
by `KERAS_BACKEND`: the median wall time of one `model.train_on_batch` step
(forward, backward, optimizer update; Keras' default compilation for the
backend: XLA on JAX and TensorFlow, eager on PyTorch) over `--steps` steps
after 3 warm-up steps, for `keras.optimizers.Adam(1e-3)` and for
`keras_velo.VeLO(weights="bundled")`, in the same process. Also the first
step's time (tracing + compilation), the analytic FLOPs per step, the
estimate `task_families.cost.estimate_step_seconds`, and the Spearman rank
correlation between estimate and measured Adam step time.

Trust the ratios (VeLO / Adam, measured / estimated) more than the absolute
milliseconds: these machines are noisy.

    python benchmarks/task_step_time.py                    # current backend
    python benchmarks/task_step_time.py --all-backends     # one subprocess per backend
    python benchmarks/task_step_time.py --json out.json
"""

import argparse
import json
import os
import subprocess
import sys

BACKENDS = ("jax", "tensorflow", "torch")


def spearman(a, b):
    import numpy as np

    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def measure_suite(suite_name, steps):
    import keras

    import keras_velo
    from task_families import build_task
    from task_families.cost import estimate_step_seconds, measure_step_seconds
    from task_families.suites import get_suite

    rows = []
    for suite_task in get_suite(suite_name).tasks:
        row = {"task": suite_task.name, "num_steps": suite_task.num_steps}
        for label, make in (
            ("adam", lambda: keras.optimizers.Adam(1e-3)),
            ("velo", lambda: keras_velo.VeLO(total_steps=suite_task.num_steps, weights="bundled")),
        ):
            task = build_task(suite_task.config)
            median, first = measure_step_seconds(task, make(), steps=steps)
            row[f"{label}_step_ms"] = 1e3 * median
            row[f"{label}_first_step_s"] = first
        row.update(
            params=task.num_params,
            tensors=len(task.model.trainable_weights),
            flops_per_step=suite_task.config.flops_per_step(),
            estimate_ms=1e3 * estimate_step_seconds(suite_task.config),
        )
        rows.append(row)
        print(f"  measured {row['task']}", file=sys.stderr, flush=True)
    return rows


def print_table(backend, rows):
    print(f"\n### {backend}\n")
    print("| task | params | tensors | GFLOP/step | estimate ms | Adam ms/step | VeLO ms/step | VeLO/Adam | "
          "Adam s for budget | compile s (Adam / VeLO) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['task']} | {r['params']:,} | {r['tensors']} | {r['flops_per_step'] / 1e9:.3f} | "
            f"{r['estimate_ms']:.1f} | {r['adam_step_ms']:.2f} | {r['velo_step_ms']:.2f} | "
            f"{r['velo_step_ms'] / r['adam_step_ms']:.1f}x | {r['adam_step_ms'] * r['num_steps'] / 1e3:.1f} | "
            f"{r['adam_first_step_s']:.1f} / {r['velo_first_step_s']:.1f} |"
        )
    rho = spearman([r["estimate_ms"] for r in rows], [r["adam_step_ms"] for r in rows])
    print(f"\nSpearman(estimate, measured Adam step) = {rho:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="canonical-cpu-v1")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--all-backends", action="store_true")
    parser.add_argument("--json", help="write the rows here (per backend with --all-backends)")
    args = parser.parse_args()
    if args.all_backends:
        results = {}
        for backend in BACKENDS:
            out = subprocess.run(
                [sys.executable, __file__, "--suite", args.suite, "--steps", str(args.steps), "--json", "-"],
                env={**os.environ, "KERAS_BACKEND": backend}, capture_output=True, text=True, check=True,
            )
            results[backend] = json.loads(out.stdout.strip().splitlines()[-1])
            print_table(backend, results[backend])
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return
    import keras

    rows = measure_suite(args.suite, args.steps)
    if args.json == "-":
        print(json.dumps(rows))
        return
    print_table(keras.backend.backend(), rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({keras.backend.backend(): rows}, f, indent=1)


if __name__ == "__main__":
    main()
