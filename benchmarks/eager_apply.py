"""A custom training loop's eager `optimizer.apply`: seconds per call, VeLO against Adam.

What is measured
----------------
For the backend in `KERAS_BACKEND` (or each with `--all-backends`, one
child process per backend), the 4 tensors of a 2-layer MLP (784-128-10)
get `--calls` plain `optimizer.apply(grads, variables, loss=...)` calls
outside any `jit` / `tf.function`, as a custom training loop makes them:

* `Adam(1e-3)`;
* `VeLO(weights="bundled")` as shipped (`compile_update="auto"`: one
  `jax.jit` / `tf.function` program on JAX / TensorFlow, compiled at the
  first call; on PyTorch `torch.compile` only when the run is long enough
  to win its compile time back, so eager here);
* `VeLO(compile_update=False)`: the update op by op (on JAX, what every
  eager apply did before: ~18 small XLA programs built and compiled per
  call).

Reported: the first call (compilation included) and the median of the
later ones, with VeLO/Adam ratios from the same process.

Usage
-----
    KERAS_BACKEND=jax python benchmarks/eager_apply.py
    python benchmarks/eager_apply.py --all-backends --calls 20
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BACKENDS = ("jax", "tensorflow", "torch")
SHAPES = ((784, 128), (128,), (128, 10), (10,))


def log(message):
    print(message, file=sys.stderr, flush=True)


def time_calls(optimizer, calls):
    """`(first call s, median later call s)` of eager applies of random gradients."""
    import keras
    import numpy as np

    import keras_velo

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32") * 0.1) for s in SHAPES]
    grads = [[keras.ops.convert_to_tensor(rng.normal(size=s).astype("float32")) for s in SHAPES]
             for _ in range(calls)]
    velo = isinstance(optimizer, keras_velo.VeLO)
    seconds = []
    for step in range(calls):
        start = time.perf_counter()
        if velo:
            optimizer.apply(grads[step], variables, loss=1.0)
        else:
            optimizer.apply(grads[step], variables)
        keras.ops.convert_to_numpy(variables[0].value)  # wait for the update
        seconds.append(time.perf_counter() - start)
    return seconds[0], statistics.median(seconds[1:])


def run_backend(calls):
    import keras

    import keras_velo

    runs = {
        "adam": lambda: keras.optimizers.Adam(1e-3),
        "velo": lambda: keras_velo.VeLO(total_steps=1000, weights="bundled"),
        "velo_op_by_op": lambda: keras_velo.VeLO(total_steps=1000, weights="bundled",
                                                 compile_update=False),
    }
    row = {"backend": keras.backend.backend()}
    for name, make in runs.items():
        first, later = time_calls(make(), calls)
        row[name] = {"first_s": first, "later_s": later}
        log(f"[{row['backend']}] {name}: first call {first:.3f} s, later calls {1e3 * later:.2f} ms")
    return row


def table(rows):
    lines = [f"{'backend':10} {'optimizer':22} {'first call s':>12} {'later calls ms':>15} {'/ Adam':>8}"]
    labels = {"adam": "Adam(1e-3)", "velo": "VeLO (one program)", "velo_op_by_op": "VeLO (op by op)"}
    for r in rows:
        for name, label in labels.items():
            ratio = r[name]["later_s"] / r["adam"]["later_s"]
            lines.append(f"{r['backend']:10} {label:22} {r[name]['first_s']:12.2f} "
                         f"{1e3 * r[name]['later_s']:15.2f} {ratio:7.1f}x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--all-backends", action="store_true")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.all_backends:
        rows = []
        for backend in BACKENDS:
            command = [sys.executable, os.path.abspath(__file__), "--child", "--calls", str(args.calls)]
            result = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND=backend),
                                    stdout=subprocess.PIPE, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    else:
        rows = [run_backend(args.calls)]
        if args.child:
            print(json.dumps(rows[0]))
            return 0
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
