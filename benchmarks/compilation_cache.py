"""What `keras_velo.enable_compilation_cache()` saves: a model's first `fit` call, cold and warm.

What is measured
----------------
For the backend in `KERAS_BACKEND` (JAX or PyTorch; TensorFlow has no
cache to turn on), a fresh child process builds a small model
(`--model`, default the 2-layer MLP of `fit_models.py`), calls
`enable_compilation_cache()` with an empty cache folder, and times its first
`fit` call on one batch (minus one measured step): the compile time. A
second fresh child does the same with the folder the first one filled.
Both for `Adam(1e-3)` and `VeLO(weights="bundled")` (on PyTorch with
`compile_update=True`: VeLO's update is compiled there, the model is not).

On JAX the first call traces, lowers and compiles with XLA; from the cache
it still traces and lowers (Python), but XLA's compile is read from disk.
On PyTorch, inductor still traces VeLO's update and lowers it, but reads
the generated kernels from its cache.

Usage
-----
    KERAS_BACKEND=jax python benchmarks/compilation_cache.py
    python benchmarks/compilation_cache.py --all-backends --json out.json
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

BACKENDS = ("jax", "torch")
OPTIMIZERS = ("adam", "velo")


def log(message):
    print(message, file=sys.stderr, flush=True)


def child(model_name, optimizer_name):
    """One cold or warm run in this process: prints `{"compile_s", "step_ms"}`."""
    import keras

    import keras_velo

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fit_models import build_model

    keras_velo.enable_compilation_cache()
    model, data = build_model(model_name)
    if optimizer_name == "velo":
        optimizer = keras_velo.VeLO(total_steps=1000, weights="bundled", compile_update=True)
    else:
        optimizer = keras.optimizers.Adam(1e-3)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=keras.backend.backend() != "torch",
    )
    if optimizer_name == "velo":
        keras_velo.attach(model)
    batch_size, steps = 64, 5
    x, y = data(batch_size * (steps + 1))
    start = time.perf_counter()
    model.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, epochs=1, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit(x[batch_size:], y[batch_size:], batch_size=batch_size, epochs=1, verbose=0)
    step = (time.perf_counter() - start) / steps
    print(json.dumps({"compile_s": max(0.0, first - step), "step_ms": 1e3 * step}))


def run_child(backend, model_name, optimizer_name, cache):
    env = dict(os.environ, KERAS_BACKEND=backend, KERAS_VELO_CACHE_DIR=cache,
               TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    command = [sys.executable, os.path.abspath(__file__), "--child", model_name, optimizer_name]
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"child failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_backend(backend, model_name):
    rows = []
    for optimizer_name in OPTIMIZERS:
        with tempfile.TemporaryDirectory() as cache:
            log(f"[{backend}] {model_name} {optimizer_name}: cold cache ...")
            cold = run_child(backend, model_name, optimizer_name, cache)
            log(f"[{backend}] {model_name} {optimizer_name}: warm cache ...")
            warm = run_child(backend, model_name, optimizer_name, cache)
        rows.append({"backend": backend, "model": model_name, "optimizer": optimizer_name,
                     "cold_s": cold["compile_s"], "warm_s": warm["compile_s"]})
        log(f"[{backend}] {optimizer_name}: {cold['compile_s']:.1f} s cold, "
            f"{warm['compile_s']:.1f} s warm")
    return rows


def table(rows):
    lines = [f"{'backend':8} {'model':12} {'optimizer':9} {'cold s':>8} {'warm s':>8} {'warm/cold':>9}"]
    for r in rows:
        lines.append(f"{r['backend']:8} {r['model']:12} {r['optimizer']:9} {r['cold_s']:8.1f} "
                     f"{r['warm_s']:8.1f} {r['warm_s'] / max(r['cold_s'], 1e-9):9.2f}")
    by = {(r["backend"], r["optimizer"]): r for r in rows}
    for backend in sorted({r["backend"] for r in rows}):
        velo, adam = by.get((backend, "velo")), by.get((backend, "adam"))
        if velo and adam:
            lines.append(f"{backend}: VeLO/Adam compile, cold {velo['cold_s'] / adam['cold_s']:.2f}x, "
                         f"warm {velo['warm_s'] / max(adam['warm_s'], 1e-9):.2f}x")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mlp2")
    parser.add_argument("--all-backends", action="store_true")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "OPTIMIZER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(*args.child)
    if args.all_backends:
        backends = BACKENDS
    else:
        backends = [os.environ.get("KERAS_BACKEND", "jax")]
        if backends[0] not in BACKENDS:
            parser.error("TensorFlow has no compilation cache to turn on; use jax or torch")
    rows = [row for backend in backends for row in run_backend(backend, args.model)]
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
