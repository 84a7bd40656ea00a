"""What compiling VeLO's update costs on JAX: its XLA kernels and compile seconds, against Adam's.

What is measured
----------------
For each model (`fit_models.py`'s names), in a fresh process per model
(JAX keeps compiled programs in memory): the update of the model's
tensors as one jitted `stateless_apply`, as `fit` inlines it, traced and
lowered (seconds of Python tracing), then compiled by XLA without the
persistent cache (seconds, the fastest of `--repeats` compiles, the
program lowered anew after `jax.clear_caches()` each time), and the kernels XLA
compiled for it (fusions, products, scatters, gathers; those of a
conditional's branches included, copies not). The same for
`keras.optimizers.Adam(1e-3)`. On CPU XLA's compile time grows with the
number of kernels (~10 ms each here, whatever their size), which is why
VeLO's update counts them (`tests/test_update_structure.py` bounds them).

Usage
-----
    python benchmarks/update_compile.py
    python benchmarks/update_compile.py --models quickstart,gpt2_hub --repeats 3
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

KERNEL = re.compile(r"\n\s*(?:ROOT )?%\S+ = \S+ (?:fusion|dot|scatter|gather|custom-call|sort)\(")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure(optimizer, shapes, with_loss, repeats):
    """`{"trace_s", "compile_s", "kernels"}` of one optimizer's jitted update."""
    import jax

    from update_profile import jitted_update

    step, optimizer_values, trainable_values, grads = jitted_update(optimizer, shapes, with_loss)
    start = time.perf_counter()
    lowered = step.lower(optimizer_values, trainable_values, grads)
    trace = time.perf_counter() - start
    times = []
    for repeat in range(repeats):
        if repeat:  # a lowered program keeps what it compiled: lower it again
            jax.clear_caches()
            lowered = step.lower(optimizer_values, trainable_values, grads)
        start = time.perf_counter()
        compiled = lowered.compile()
        times.append(time.perf_counter() - start)
    return {"trace_s": trace, "compile_s": min(times),
            "kernels": len(KERNEL.findall(compiled.as_text()))}


def child(name, repeats):
    import keras

    import keras_velo
    from fit_models import build_model

    model = build_model(name)[0]
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    velo = measure(keras_velo.VeLO(total_steps=1000, weights="bundled"), shapes, True, repeats)
    adam = measure(keras.optimizers.Adam(1e-3), shapes, False, repeats)
    print(json.dumps({"model": name, "tensors": len(shapes), "velo": velo, "adam": adam}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="quickstart,mlp2,gpt2_hub,vit_hub")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.repeats)
        return
    rows = []
    for name in args.models.split(","):
        log(f"{name}: compiling VeLO's and Adam's updates in a fresh process")
        result = subprocess.run([sys.executable, __file__, "--child", name, "--repeats",
                                 str(args.repeats)], capture_output=True, text=True, check=True)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
    print(f"{'model':12} {'tensors':>7} | {'VeLO kernels':>12} {'trace s':>7} {'compile s':>9} | "
          f"{'Adam kernels':>12} {'trace s':>7} {'compile s':>9} | {'compile VeLO/Adam':>17}")
    for r in rows:
        v, a = r["velo"], r["adam"]
        print(f"{r['model']:12} {r['tensors']:>7} | {v['kernels']:>12} {v['trace_s']:>7.2f} "
              f"{v['compile_s']:>9.2f} | {a['kernels']:>12} {a['trace_s']:>7.2f} "
              f"{a['compile_s']:>9.2f} | {v['compile_s'] / a['compile_s']:>16.1f}x")


if __name__ == "__main__":
    main()
