"""Where one VeLO update's time goes on JAX: every XLA kernel it runs, timed by JAX's profiler.

What is measured
----------------
The update of a model's tensors (`--model`: the quickstart's MLP
784-128-10 by default, or a model of `fit_models.py`) as one jitted
`stateless_apply` with donated buffers, as `fit` runs it, traced by
`jax.profiler` over `--updates` updates after a warm-up. XLA on CPU
reports each kernel (a fusion, a matmul, a copy, a conditional's branch)
when `--xla_cpu_enable_xprof_traceme` is on, which this script sets
before JAX starts. The table lists the kernels by time per update, with
the shape each one writes and the operation it comes from, then groups
them: the LSTM and the heads (matmuls over theta), the passes over the
parameters (kernels of the packed buffers' size), and everything else
(small per-tensor work, each kernel a few microseconds). Also printed:
Adam(1e-3)'s update on the same tensors, and the XLA compile time of
VeLO's update on its own.

Usage
-----
    python benchmarks/update_profile.py
    python benchmarks/update_profile.py --model gpt2_hub --top 25
"""

import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile
import time

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Events of the runtime around the kernels, not kernels.
RUNTIME_EVENTS = ("Thunk", "Pjit", "api.py", "profiler", "PjRt", "Await", "ParseArguments",
                  "Handle inputs", "CreateOutputs", "DevicePut", "AllocateOutputBuffers", "end: ")


def quickstart_mlp():
    import keras

    return keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(10)])


def jitted_update(optimizer, shapes, with_loss):
    """`(step, optimizer values, trainable values, grads)`: one donated jitted update."""
    import jax
    import keras
    import numpy as np

    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=s).astype("float32") * 0.1) for s in shapes]
    optimizer.build(variables)
    grads = [jax.numpy.asarray(rng.normal(size=s).astype("float32")) for s in shapes]
    if with_loss:
        def update(optimizer_values, trainable_values, grads):
            return optimizer.stateless_apply(optimizer_values, grads, trainable_values, loss=1.0)
    else:
        def update(optimizer_values, trainable_values, grads):
            return optimizer.stateless_apply(optimizer_values, grads, trainable_values)
    step = jax.jit(update, donate_argnums=(0, 1))
    return step, [jax.numpy.array(v.value) for v in optimizer.variables], \
        [jax.numpy.array(v.value) for v in variables], grads


def time_updates(step, optimizer_values, trainable_values, grads, updates):
    """Seconds per update, and the buffers after them."""
    import jax

    for _ in range(2):  # the second call may compile again: its inputs are the first's outputs
        trainable_values, optimizer_values = step(optimizer_values, trainable_values, grads)
    jax.block_until_ready(trainable_values)
    start = time.perf_counter()
    for _ in range(updates):
        trainable_values, optimizer_values = step(optimizer_values, trainable_values, grads)
    jax.block_until_ready(trainable_values)
    return (time.perf_counter() - start) / updates, optimizer_values, trainable_values


def kernel_times(step, optimizer_values, trainable_values, grads, updates):
    """`{kernel name: (microseconds per update, calls per update)}` from a profiler trace."""
    import jax

    with tempfile.TemporaryDirectory() as directory:
        jax.profiler.start_trace(directory, create_perfetto_trace=True)
        for _ in range(updates):
            trainable_values, optimizer_values = step(optimizer_values, trainable_values, grads)
        jax.block_until_ready(trainable_values)
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
        events = json.load(gzip.open(path))["traceEvents"]
    total, calls = collections.Counter(), collections.Counter()
    for event in events:
        if event.get("ph") != "X" or any(s in event["name"] for s in RUNTIME_EVENTS):
            continue
        total[event["name"]] += event["dur"]
        calls[event["name"]] += 1
    return {name: (total[name] / updates, calls[name] / updates) for name in total}


def describe(hlo_text, name):
    """`(output shape, operation)` of kernel `name` in the compiled HLO text."""
    match = re.search(r"%" + re.escape(name) + r" = (\S+) .*?op_name=\"([^\"]*)\"", hlo_text)
    if not match:
        return "", ""
    return match.group(1)[:40], match.group(2).split("/")[-1][:40]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="quickstart", help="quickstart, or a model of fit_models.py")
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--top", type=int, default=15, help="kernels listed one by one")
    args = parser.parse_args(argv)
    import jax
    import keras

    import keras_velo

    if args.model == "quickstart":
        model = quickstart_mlp()
    else:
        from fit_models import build_model

        model = build_model(args.model)[0]
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    parameters = sum(int(jax.numpy.size(jax.numpy.zeros(s))) for s in shapes)

    velo = keras_velo.VeLO(total_steps=1000, weights="bundled")
    step, optimizer_values, trainable_values, grads = jitted_update(velo, shapes, True)
    start = time.perf_counter()
    compiled = step.lower(optimizer_values, trainable_values, grads).compile()
    compile_seconds = time.perf_counter() - start
    hlo_text = compiled.as_text()
    seconds, optimizer_values, trainable_values = time_updates(
        step, optimizer_values, trainable_values, grads, args.updates)
    kernels = kernel_times(step, optimizer_values, trainable_values, grads, args.updates)
    adam_step, adam_values, adam_trainable, adam_grads = jitted_update(
        keras.optimizers.Adam(1e-3), shapes, False)
    adam_seconds, _, _ = time_updates(adam_step, adam_values, adam_trainable, adam_grads, args.updates)

    print(f"{args.model}: {len(shapes)} tensors, {parameters:,} parameters")
    print(f"VeLO update {1e3 * seconds:.3f} ms ({1e9 * seconds / parameters:.1f} ns per parameter), "
          f"Adam {1e3 * adam_seconds:.3f} ms ({seconds / adam_seconds:.1f}x); "
          f"VeLO's update alone compiles in {compile_seconds:.2f} s "
          f"({hlo_text.count(' fusion(')} fusions in its HLO)")
    ranked = sorted(kernels.items(), key=lambda item: -item[1][0])
    print(f"\n{'us/update':>9} {'calls':>5}  {'kernel':32} {'writes':40} operation")
    for name, (micros, count) in ranked[:args.top]:
        shape, operation = describe(hlo_text, name)
        print(f"{micros:9.1f} {count:5.1f}  {name[:32]:32} {shape:40} {operation}")
    groups = collections.Counter()
    for name, (micros, count) in kernels.items():
        shape, operation = describe(hlo_text, name)
        if name.startswith("ynn_fusion") or "dot" in operation:
            groups["matmuls (LSTM, heads, mixing: theta read every update)"] += micros
        elif micros >= 10 and shape:
            groups["passes over the parameters and their packing (>= 10 us each)"] += micros
        else:
            groups[f"small kernels (< 10 us each; {sum(1 for _, (m, _) in kernels.items() if m < 10)} of them)"] += micros
    print("\ngrouped:")
    for group, micros in groups.most_common():
        print(f"{micros:9.1f} us  {group}")
    print(f"{sum(groups.values()):9.1f} us  all kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
