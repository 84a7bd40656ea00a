"""Time per optimizer update of `keras_velo.VeLO` against `keras.optimizers.Adam`.

What is measured
----------------
For the Keras backend chosen by `KERAS_BACKEND` (jax, tensorflow or torch),
the wall time of one optimizer update -- the update only, never the gradient
computation -- of `keras_velo.VeLO(total_steps=1000, weights=None)` and of
`keras.optimizers.Adam(1e-3)`, on the same variables and the same fixed
gradients, in the same process. Cases:

* `golden`: the 10-tensor golden tree, shapes `() (1,) (7,) (4,) (5,3)
  (3,8) (1,10) (64,32) (3,3,2,4) (4,4)` (random float32 values);
* `tensor1024`: one 1024x1024 float32 tensor;
* `mlp`: the kernels and biases of a built ~1M-parameter Keras MLP,
  `Dense 784 -> 1024 -> 256 -> 10` (1,068,810 parameters);
* `mobilenetv2`: the 158 trainable tensors of `keras.applications.MobileNetV2`
  (`weights=None`, 32x32x3 input, 10 classes; 2,236,682 parameters), many
  distinct shapes.

For each case the script also reports optimizer-state bytes per model
parameter (sizes of `optimizer.variables` after `build`): for VeLO split into
the per-parameter state (momenta, rms, factored/diagonal second moments, LSTM
rows, counters, loss buffer) and theta, VeLO's learned weights (2,320,385
float32 = 9.28 MB, the same for any model); for Adam, everything it holds.

VeLO runs with a random theta (`weights=None`): the time of an update does
not depend on theta's values. It is given a fixed float32 scalar loss.

How
---
The machines these run on are noisy, so the figures to trust are the
VeLO/Adam ratios measured in the same process:

* JAX: `jax.jit(velo.stateless_apply)` called as `f(opt_vars, grads,
  train_vars, loss=loss)`, and `jax.jit(adam.stateless_apply)`; outputs are
  fed back in as the next inputs, and `jax.block_until_ready` ends each
  timed batch.
* TensorFlow: `tf.function(jit_compile=True)` around `velo.apply(grads,
  variables, loss=loss)` / `adam.apply(grads, variables)`; each timed batch
  ends by reading `optimizer.iterations.numpy()` to synchronise.
* PyTorch: `apply`, CPU, synchronous; Adam eager (Keras on torch runs
  eagerly), VeLO's update compiled (`compile_update=True`,
  `keras_velo.packed.torch_compile`).

The first call (trace + XLA compile + one run on JAX/TensorFlow; on torch
VeLO's trace and inductor compile, Adam's first eager call) is timed
separately and reported as "compile".
Then the number of calls N per repeat is chosen so that a repeat takes about
`--target-seconds` (default 0.75 s), and `--repeats` (default 5) repeats are
timed for each optimizer, interleaved VeLO, Adam, VeLO, Adam, ... so that
drift hits both alike. Reported: the median ms/update of each and their
ratio, plus the spread (min-max over repeats) in the JSON.

Reference figures, for scale: the reference JAX implementation
(learned_optimization) takes about 220 ms per update on one 1024x1024 tensor
on these CPUs and 4-5 ms on the 10-tensor tree; a per-parameter MLP written
elementwise under XLA costs about 8 ms per 1M parameters.

Usage
-----
    KERAS_BACKEND=jax python benchmarks/velo_update.py
    python benchmarks/velo_update.py --all-backends --json results.json
    python benchmarks/velo_update.py --cases golden,tensor1024 --repeats 7

Progress goes to stderr, the tables to stdout.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

CASES = ("golden", "tensor1024", "mlp", "mobilenetv2")
CASE_LABELS = {
    "golden": "golden 10-tensor tree",
    "tensor1024": "one 1024x1024 tensor",
    "mlp": "MLP 784-1024-256-10",
    "mobilenetv2": "MobileNetV2 32x32, 158 tensors",
}
GOLDEN_SHAPES = [
    (),
    (1,),
    (7,),
    (4,),
    (5, 3),
    (3, 8),
    (1, 10),
    (64, 32),
    (3, 3, 2, 4),
    (4, 4),
]
BACKENDS = ("jax", "tensorflow", "torch")
THETA_NUM_PARAMETERS = 2_320_385


def log(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------- setup


def make_variables(case, seed=0):
    """The case's list of `keras.Variable`s (float32)."""
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    if case == "golden":
        return [
            keras.Variable(
                rng.normal(size=shape).astype(np.float32), name=f"golden_{i}"
            )
            for i, shape in enumerate(GOLDEN_SHAPES)
        ]
    if case == "tensor1024":
        value = (rng.normal(size=(1024, 1024)) * 0.03).astype(np.float32)
        return [keras.Variable(value, name="w1024")]
    if case == "mlp":
        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((784,)),
                keras.layers.Dense(1024, activation="relu"),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dense(10),
            ]
        )
        return list(model.trainable_variables)
    if case == "mobilenetv2":
        keras.utils.set_random_seed(seed)
        model = keras.applications.MobileNetV2(
            weights=None, input_shape=(32, 32, 3), classes=10
        )
        return list(model.trainable_variables)
    raise ValueError(f"unknown case {case!r}; choose from {CASES}")


def make_gradients(variables, seed=1):
    """Fixed random float32 gradients as backend tensors, one per variable."""
    import numpy as np
    from keras import ops

    rng = np.random.default_rng(seed)
    return [
        ops.convert_to_tensor(
            (rng.normal(size=tuple(v.shape)) * 1e-2).astype(np.float32)
        )
        for v in variables
    ]


def num_parameters(variables):
    import numpy as np

    return int(sum(int(np.prod(v.shape, dtype=np.int64)) for v in variables))


def variable_bytes(variable):
    import numpy as np

    size = int(np.prod(variable.shape, dtype=np.int64))
    return size * np.dtype(variable.dtype).itemsize


def state_bytes(velo, adam, variables):
    """Optimizer-state sizes after build (bytes), VeLO split into state/theta."""
    theta_ids = {id(v) for v in velo._velo.theta.values()}
    velo_theta = sum(variable_bytes(v) for v in velo.variables if id(v) in theta_ids)
    velo_state = sum(
        variable_bytes(v) for v in velo.variables if id(v) not in theta_ids
    )
    adam_state = sum(variable_bytes(v) for v in adam.variables)
    params = num_parameters(variables)
    return {
        "velo_state_bytes": velo_state,
        "velo_theta_bytes": velo_theta,
        "adam_state_bytes": adam_state,
        "velo_state_bytes_per_param": velo_state / params,
        "velo_theta_bytes_per_param": velo_theta / params,
        "adam_state_bytes_per_param": adam_state / params,
    }


# ------------------------------------------------------------------- runners
#
# Each runner turns (optimizer, variables, grads) into `run(n)`: n updates
# followed by a synchronisation, so `time(run(n))` is n finished updates.


def jax_runner(optimizer, variables, grads, loss):
    import jax
    import jax.numpy as jnp

    if loss is None:
        step = jax.jit(optimizer.stateless_apply)
        loss_kwargs = {}
    else:
        step = jax.jit(optimizer.stateless_apply)
        loss_kwargs = {"loss": jnp.asarray(loss, jnp.float32)}
    state = {
        "opt": [v.value for v in optimizer.variables],
        "train": [v.value for v in variables],
    }

    def run(n):
        train, opt = state["train"], state["opt"]
        for _ in range(n):
            train, opt = step(opt, grads, train, **loss_kwargs)
        jax.block_until_ready((train, opt))
        state["train"], state["opt"] = train, opt

    return run, lambda: all_finite(state["train"])


def tensorflow_runner(optimizer, variables, grads, loss):
    import tensorflow as tf

    if loss is None:

        @tf.function(jit_compile=True)
        def step(grads):
            optimizer.apply(grads, variables)

        args = (list(grads),)
    else:

        @tf.function(jit_compile=True)
        def step(grads, loss):
            optimizer.apply(grads, variables, loss=loss)

        args = (list(grads), tf.constant(loss, tf.float32))

    def run(n):
        for _ in range(n):
            step(*args)
        optimizer.iterations.numpy()

    return run, lambda: all_finite([v.value for v in variables])


def torch_runner(optimizer, variables, grads, loss):
    from keras import ops

    grads = list(grads)
    if loss is None:
        step = lambda: optimizer.apply(grads, variables)  # noqa: E731
    else:
        loss_tensor = ops.convert_to_tensor(loss, "float32")
        step = lambda: optimizer.apply(grads, variables, loss=loss_tensor)  # noqa: E731

    def run(n):
        for _ in range(n):
            step()

    return run, lambda: all_finite([v.value for v in variables])


RUNNERS = {"jax": jax_runner, "tensorflow": tensorflow_runner, "torch": torch_runner}


def timed(fn, *args):
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def calls_per_repeat(run, target_seconds, max_calls):
    """Doubles a calibration batch until it takes >= 0.1 s; scales to the target."""
    n = 1
    while True:
        elapsed = timed(run, n)
        if elapsed >= 0.1 or n >= max_calls:
            break
        n *= 2
    per_call = elapsed / n
    return max(1, min(max_calls, round(target_seconds / per_call))), per_call


def all_finite(values):
    import numpy as np
    from keras import ops

    return all(bool(np.all(np.isfinite(ops.convert_to_numpy(x)))) for x in values)


# ---------------------------------------------------------------- benchmark


def benchmark_case(case, args):
    import keras
    import numpy as np

    import keras_velo

    backend = keras.backend.backend()
    variables = make_variables(case)
    grads = make_gradients(variables)
    loss = np.float32(1.5)
    params = num_parameters(variables)

    # Both optimizers update the same variables (on JAX each keeps its own
    # chain of values, fed back in; elsewhere they take turns on the variables).
    velo_vars = adam_vars = variables
    # On PyTorch the update runs as one torch.compile program (built in
    # the first call, reported as its compile time).
    velo = keras_velo.VeLO(total_steps=1000, weights=None, compile_update=True)
    adam = keras.optimizers.Adam(1e-3)
    velo.build(velo_vars)
    adam.build(adam_vars)
    result = {
        "backend": backend,
        "case": case,
        "label": CASE_LABELS[case],
        "params": params,
        "num_tensors": len(variables),
    }
    result.update(state_bytes(velo, adam, velo_vars))

    runner = RUNNERS[backend]
    velo_run, velo_finite = runner(velo, velo_vars, grads, loss)
    adam_run, adam_finite = runner(adam, adam_vars, grads, None)

    log(f"  [{backend}] {case}: first VeLO call (compile) ...")
    result["velo_compile_s"] = timed(velo_run, 1)
    log(f"  [{backend}] {case}: VeLO compile {result['velo_compile_s']:.2f} s; first Adam call ...")
    result["adam_compile_s"] = timed(adam_run, 1)
    # A second warm-up call each (some backends finish lazy work on call 2).
    velo_run(1)
    adam_run(1)

    velo_n, velo_estimate = calls_per_repeat(velo_run, args.target_seconds, args.max_calls)
    adam_n, adam_estimate = calls_per_repeat(adam_run, args.target_seconds, args.max_calls)
    log(
        f"  [{backend}] {case}: calibration VeLO ~{velo_estimate * 1e3:.2f} ms "
        f"(N={velo_n}), Adam ~{adam_estimate * 1e3:.3f} ms (N={adam_n}); "
        f"timing {args.repeats} interleaved repeats ..."
    )
    velo_times, adam_times = [], []
    for _ in range(args.repeats):
        velo_times.append(timed(velo_run, velo_n) / velo_n)
        adam_times.append(timed(adam_run, adam_n) / adam_n)
    finite = {"velo": velo_finite(), "adam": adam_finite()}

    result.update(
        {
            "repeats": args.repeats,
            "velo_calls_per_repeat": velo_n,
            "adam_calls_per_repeat": adam_n,
            "velo_ms": statistics.median(velo_times) * 1e3,
            "adam_ms": statistics.median(adam_times) * 1e3,
            "velo_ms_all": [t * 1e3 for t in velo_times],
            "adam_ms_all": [t * 1e3 for t in adam_times],
            "velo_params_finite": finite["velo"],
            "adam_params_finite": finite["adam"],
        }
    )
    result["ratio"] = result["velo_ms"] / result["adam_ms"]
    return result


def header_line():
    import keras

    backend = keras.backend.backend()
    versions = [f"backend={backend}", f"keras={keras.__version__}"]
    if backend == "jax":
        import jax

        versions.append(f"jax={jax.__version__}")
    elif backend == "tensorflow":
        import tensorflow as tf

        versions.append(f"tensorflow={tf.__version__}")
    else:
        import torch

        versions.append(f"torch={torch.__version__} threads={torch.get_num_threads()}")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    return "  ".join(versions) + f"   ({cores} CPU cores, load avg {load})"


def format_table(results, header, total_seconds):
    lines = [header]
    compile_label = "VeLO compile s"
    lines.append(
        f"{'case':<24}{'params':>11}{'VeLO ms/update':>17}{'Adam ms/update':>17}"
        f"{'VeLO/Adam':>11}{compile_label:>17}"
    )
    for r in results:
        spread = f"{min(r['velo_ms_all']):.3g}-{max(r['velo_ms_all']):.3g}"
        lines.append(
            f"{r['label']:<24}{r['params']:>11,}{r['velo_ms']:>17.3f}{r['adam_ms']:>17.3f}"
            f"{r['ratio']:>11.1f}{r['velo_compile_s']:>17.2f}"
            f"   (VeLO range {spread} ms, N={r['velo_calls_per_repeat']}x{r['repeats']})"
        )
    lines.append("optimizer state bytes/param (after build):")
    for r in results:
        ratio = r["velo_state_bytes_per_param"] / r["adam_state_bytes_per_param"]
        lines.append(
            f"  {r['label']:<22} VeLO per-param state {r['velo_state_bytes_per_param']:8.2f}"
            f" (+ theta {r['velo_theta_bytes_per_param']:10.2f} fixed, "
            f"{r['velo_theta_bytes'] / 1e6:.2f} MB)  vs Adam {r['adam_state_bytes_per_param']:6.2f}"
            f"  -> ratio {ratio:.2f} (state only), "
            f"{(r['velo_state_bytes_per_param'] + r['velo_theta_bytes_per_param']) / r['adam_state_bytes_per_param']:.2f} (with theta)"
        )
    bad = [r["label"] for r in results if not (r["velo_params_finite"] and r["adam_params_finite"])]
    if bad:
        lines.append(f"WARNING: non-finite parameters after timing in: {', '.join(bad)}")
    lines.append(f"total run time: {total_seconds:.1f} s")
    return "\n".join(lines)


def run_single_backend(args):
    start = time.perf_counter()
    import keras

    backend = keras.backend.backend()
    log(f"[{backend}] benchmarking cases: {', '.join(args.cases)}")
    results = []
    for case in args.cases:
        log(f"[{backend}] case {case} ({CASE_LABELS[case]}) starting")
        case_start = time.perf_counter()
        results.append(benchmark_case(case, args))
        log(f"[{backend}] case {case} done in {time.perf_counter() - case_start:.1f} s")
    total = time.perf_counter() - start
    for r in results:
        r["backend_total_run_s"] = total
    print(format_table(results, header_line(), total), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def run_all_backends(args, argv):
    """Runs this script once per backend in a subprocess; merges the JSON."""
    passthrough = []
    skip_next = False
    for item in argv:
        if skip_next:
            skip_next = False
            continue
        if item == "--all-backends":
            continue
        if item == "--json":
            skip_next = True
            continue
        if item.startswith("--json="):
            continue
        passthrough.append(item)
    merged = []
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in BACKENDS:
            env = dict(os.environ, KERAS_BACKEND=backend)
            path = os.path.join(tmp, f"{backend}.json")
            log(f"=== {backend} ===")
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *passthrough, "--json", path],
                env=env,
            )
            elapsed = time.perf_counter() - start
            print(f"(backend={backend}: subprocess wall time {elapsed:.1f} s)\n", flush=True)
            if proc.returncode != 0:
                failures.append(backend)
                print(f"backend={backend} FAILED with exit code {proc.returncode}\n", flush=True)
                continue
            with open(path) as f:
                merged.extend(json.load(f))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(merged, f, indent=2)
    return 1 if failures else 0


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description="Time per update of keras_velo.VeLO vs keras Adam (see module docstring)."
    )
    parser.add_argument(
        "--cases",
        default=",".join(CASES),
        help=f"comma-separated subset of {','.join(CASES)} (default: all)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per optimizer (default 5)")
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=0.75,
        help="wall time one repeat should take; sets N calls per repeat (default 0.75)",
    )
    parser.add_argument("--max-calls", type=int, default=5000, help="cap on N calls per repeat")
    parser.add_argument("--json", metavar="PATH", help="write results as a JSON list of dicts")
    parser.add_argument(
        "--all-backends",
        action="store_true",
        help="run once per backend (jax, tensorflow, torch) in subprocesses",
    )
    args = parser.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.all_backends:
        return run_all_backends(args, argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    run_single_backend(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
