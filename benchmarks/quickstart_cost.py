"""What a new user waits for: the quickstart's VeLO run against Adam's, fresh and second time.

What is measured
----------------
`examples/quickstart.py` trains its MLP (784-128-10) for `--steps` batches
of 128 with VeLO (`weights="bundled"`) and with Adam(1e-3), and reports
each `fit`'s wall time, compilation included. Here each of the two runs
happens in a fresh child process (so neither pays for the other's
process-wide first-use costs, nor profits from them), twice:

* **first run** ("a fresh machine"): `keras_velo.enable_compilation_cache()`
  points at an empty folder, so XLA compiles everything;
* **second run**: the same folder, now filled by the first run.

Each child reports the `fit` wall time (what the quickstart prints), and
on JAX how it splits: seconds in XLA's compiler, seconds tracing and
lowering (Python), and the rest (the training steps and Keras' own
overhead). The figures to trust are the ratios VeLO/Adam: both run on the
same machine state, one after the other (`--repeats` alternates them).

Usage
-----
    KERAS_BACKEND=jax python benchmarks/quickstart_cost.py
    python benchmarks/quickstart_cost.py --all-backends --json out.json
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

BACKENDS = ("jax", "tensorflow", "torch")
OPTIMIZERS = ("velo", "adam")
EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def log(message):
    print(message, file=sys.stderr, flush=True)


def child(optimizer_name, steps):
    """One quickstart run in this process: prints its figures as JSON."""
    sys.path.insert(0, str(EXAMPLES))
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    import keras_velo
    import quickstart

    compile_seconds, trace_seconds = [], []
    if keras.backend.backend() == "jax":
        import jax
        from jax._src import dispatch

        def listener(event, duration, **kwargs):
            if event == dispatch.BACKEND_COMPILE_EVENT:
                compile_seconds.append(duration)
            elif event in (dispatch.JAXPR_TRACE_EVENT, dispatch.JAXPR_TO_MLIR_MODULE_EVENT):
                trace_seconds.append(duration)

        jax.monitoring.register_event_duration_secs_listener(listener)
    keras_velo.enable_compilation_cache()
    data = quickstart.load_data()
    if optimizer_name == "velo":
        optimizer = keras_velo.VeLO(total_steps=steps, weights="bundled")
    else:
        optimizer = keras.optimizers.Adam(1e-3)
    before = (len(compile_seconds), len(trace_seconds))
    result = quickstart.train(optimizer_name, optimizer, data, steps, 128, 0, 0)
    # XLA programs of the fit (train step, eager helpers); not the evaluation after it.
    compiled = sum(compile_seconds[before[0]:])
    traced = sum(trace_seconds[before[1]:])
    print(json.dumps({"fit_s": result["seconds"], "xla_compile_s": compiled, "trace_s": traced,
                      "train_loss": result["train_loss"]}))


def run_child(backend, optimizer_name, cache, steps):
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_VELO_CACHE_DIR=cache, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = [sys.executable, os.path.abspath(__file__), "--child", optimizer_name, str(steps)]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_backend(backend, steps, repeats):
    """`{(optimizer, "first" | "second"): [figures per repeat]}`."""
    runs = {}
    for repeat in range(repeats):
        order = OPTIMIZERS if repeat % 2 == 0 else OPTIMIZERS[::-1]
        for optimizer_name in order:
            with tempfile.TemporaryDirectory() as cache:
                for when in ("first", "second"):
                    figures = run_child(backend, optimizer_name, cache, steps)
                    runs.setdefault((optimizer_name, when), []).append(figures)
                    log(f"[{backend}] repeat {repeat} {optimizer_name} {when} run: fit {figures['fit_s']:.2f} s "
                        f"(XLA compile {figures['xla_compile_s']:.2f} s, trace {figures['trace_s']:.2f} s)")
    return runs


def summary(backend, runs):
    """Rows of medians and the ratios VeLO/Adam."""
    rows = []
    for when in ("first", "second"):
        medians = {name: {key: statistics.median(r[key] for r in runs[(name, when)])
                          for key in ("fit_s", "xla_compile_s", "trace_s")} for name in OPTIMIZERS}
        velo, adam = medians["velo"], medians["adam"]
        rows.append({"backend": backend, "run": when, "velo": velo, "adam": adam,
                     "ratio": velo["fit_s"] / adam["fit_s"]})
    return rows


def table(rows):
    lines = [f"{'backend':10} {'run':7} {'VeLO fit s':>10} {'(compile':>9} {'trace)':>7} "
             f"{'Adam fit s':>10} {'(compile':>9} {'trace)':>7} {'VeLO/Adam':>9}"]
    for r in rows:
        v, a = r["velo"], r["adam"]
        lines.append(f"{r['backend']:10} {r['run']:7} {v['fit_s']:10.2f} {v['xla_compile_s']:9.2f} "
                     f"{v['trace_s']:7.2f} {a['fit_s']:10.2f} {a['xla_compile_s']:9.2f} {a['trace_s']:7.2f} "
                     f"{r['ratio']:8.2f}x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="the quickstart's default: 1000")
    parser.add_argument("--repeats", type=int, default=3, help="medians over this many (alternating order)")
    parser.add_argument("--all-backends", action="store_true")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--child", nargs=2, metavar=("OPTIMIZER", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child[0], int(args.child[1]))
    backends = BACKENDS if args.all_backends else [os.environ.get("KERAS_BACKEND", "jax")]
    rows, raw = [], {}
    for backend in backends:
        runs = run_backend(backend, args.steps, args.repeats)
        raw[backend] = {f"{name}/{when}": figures for (name, when), figures in runs.items()}
        rows += summary(backend, runs)
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "runs": raw}, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
