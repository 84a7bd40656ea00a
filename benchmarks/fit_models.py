"""Fit compile time, fit step time and peak memory of VeLO against Adam on real Keras models.

What is measured
----------------
For each Keras backend, in one process per backend, each model is built
twice (same seed) and trained with `model.fit` on random data, once with
`keras.optimizers.Adam(1e-3)` and once with `keras_velo.VeLO(total_steps=1000,
weights="bundled")` (+ `keras_velo.attach`), the two runs back to back:

* compile: wall time of the first `fit` call on one batch (tracing and XLA
  compilation on JAX and TensorFlow, `jit_compile=True`; on PyTorch, where
  Keras runs the model eagerly, the first step, which for VeLO includes
  building its update's `torch.compile` program, `compile_update=True`),
  minus one measured step;
* step: wall time per step of a second `fit` call over `--steps` batches;
* with `--memory`, peak RSS (the process's high-water mark) of a separate
  child process per (model, optimizer) that does the same fit: a high-water
  mark cannot be measured twice in one process.

Models (`weights=None`, 10 classes): `mlp2`, `mlp32`, `mlp64` (784 inputs,
2 / 32 / 64 hidden `Dense(64, relu)` layers: 6 / 66 / 130 tensors),
`mobilenetv2` and `resnet50` (`keras.applications`, 32x32x3 inputs: 158 and
214 tensors), `transformer12` (12 encoder blocks of Keras'
`MultiHeadAttention` + LayerNorm + a 512-wide FFN, model width 128, 4 heads,
sequence 32, vocabulary 1000, mean-pooled classifier: 198 tensors), and the
two KerasHub models of `examples/` built from scratch exactly as there
(KerasHub installed): `gpt2_hub` (`GPT2Backbone`, 2 layers of width 64, a
byte-level LM over windows of 64) and `vit_hub` (`ViTBackbone`, 3 layers of
width 64, 28x28x1 images in 7x7 patches).

`--baseline adamw` compares with `keras.optimizers.AdamW` at Keras'
defaults (what the KerasHub examples compare with) instead of Adam(1e-3).
Besides compile and step, each row gives the time of a whole `fit` of the
model's typical length (compile + steps x step: 200 steps for `gpt2_hub`,
380 for `vit_hub` as the examples train, 1,000 for the rest), at the
examples' batch sizes for the KerasHub models (64 and 128).

The ratios VeLO/Adam are the figures to trust: both optimizers run in the
same process under the same load. Tables go to stdout, progress to stderr;
`--json` keeps the raw figures and `--plot` draws compile time against the
number of tensors, VeLO and Adam, one panel per backend.

Usage
-----
    python benchmarks/fit_models.py --all-backends --memory --json out.json --plot out.png
    KERAS_BACKEND=jax python benchmarks/fit_models.py --models resnet50 --batch-size 64
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("quickstart", "mlp2", "mlp32", "mlp64", "mobilenetv2", "resnet50", "transformer12", "gpt2_hub", "vit_hub")
WHOLE_FIT_STEPS = {"gpt2_hub": 200, "vit_hub": 380}  # as the examples train; others: 1,000
BATCH_SIZES = {"vit_hub": 128, "quickstart": 128}  # as the examples train; others: --batch-size (64)
BASELINES = ("adam", "adamw")
BACKENDS = ("jax", "tensorflow", "torch")
OPTIMIZERS = ("adam", "velo")


def log(message):
    print(message, file=sys.stderr, flush=True)


def build_model(name, seed=0):
    """The named model (uncompiled) and a function making `(x, y)` for `n` examples."""
    import keras
    import numpy as np

    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    labels = lambda n: rng.integers(0, 10, n)  # noqa: E731
    if name == "quickstart":  # examples/quickstart.py's MLP
        model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(128, activation="relu"),
                                  keras.layers.Dense(10)])
        return model, lambda n: (rng.random((n, 784), np.float32), labels(n))
    if name.startswith("mlp"):
        depth = int(name[3:])
        model = keras.Sequential(
            [keras.Input((784,))]
            + [keras.layers.Dense(64, activation="relu") for _ in range(depth)]
            + [keras.layers.Dense(10)]
        )
        return model, lambda n: (rng.random((n, 784), np.float32), labels(n))
    if name in ("mobilenetv2", "resnet50"):
        application = {"mobilenetv2": keras.applications.MobileNetV2,
                       "resnet50": keras.applications.ResNet50}[name]
        model = application(weights=None, input_shape=(32, 32, 3), classes=10,
                            classifier_activation=None)
        return model, lambda n: (rng.random((n, 32, 32, 3), np.float32), labels(n))
    if name == "transformer12":
        return _transformer(blocks=12), lambda n: (rng.integers(0, 1000, (n, 32)), labels(n))
    if name == "gpt2_hub":
        example = _example("keras_hub_gpt2")
        length = example.SEQUENCE_LENGTH
        tokens = lambda n: rng.integers(0, 256, (n, length))  # noqa: E731
        return example.build_model(seed), lambda n: (tokens(n), tokens(n))
    if name == "vit_hub":
        model = _example("keras_hub_vit").build_model((28, 28, 1), 10, seed)
        return model, lambda n: (rng.random((n, 28, 28, 1), np.float32), labels(n))
    raise ValueError(f"Unknown model {name!r}; known: {', '.join(MODELS)}.")


def _transformer(blocks, width=128, heads=4, ffn=512, length=32, vocabulary=1000):
    import keras

    tokens = keras.Input((length,), dtype="int32")
    x = keras.layers.Embedding(vocabulary, width)(tokens)
    for _ in range(blocks):
        attended = keras.layers.MultiHeadAttention(heads, width // heads)(x, x)
        x = keras.layers.LayerNormalization()(x + attended)
        hidden = keras.layers.Dense(ffn, activation="gelu")(x)
        x = keras.layers.LayerNormalization()(x + keras.layers.Dense(width)(hidden))
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(tokens, keras.layers.Dense(10)(x))


def _example(module_name):
    """A module of `examples/` (the KerasHub models are built exactly as there)."""
    import importlib

    examples = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
    if examples not in sys.path:
        sys.path.insert(0, examples)
    return importlib.import_module(module_name)


def _compiled(name, optimizer_name, baseline="adam"):
    import keras

    import keras_velo

    model, data = build_model(name)
    if optimizer_name == "velo":
        # On PyTorch the update is one torch.compile program (built in the
        # first fit call, so it counts as compile time).
        optimizer = keras_velo.VeLO(total_steps=1000, weights="bundled", compile_update=True)
    elif baseline == "adamw":
        optimizer = keras.optimizers.AdamW()  # Keras' defaults: 1e-3, weight decay 0.004
    else:
        optimizer = keras.optimizers.Adam(1e-3)
    jit = keras.backend.backend() != "torch"  # Keras on PyTorch: the model runs eagerly
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    if optimizer_name == "velo":
        keras_velo.attach(model)
    return model, data


def measure(name, optimizer_name, batch_size, steps, baseline="adam"):
    """`{"compile_s", "step_ms", "tensors", "params"}` of one fit run."""
    model, data = _compiled(name, optimizer_name, baseline)
    batch_size = BATCH_SIZES.get(name, batch_size)
    x, y = data(batch_size * (steps + 1))
    start = time.perf_counter()
    model.fit(x[:batch_size], y[:batch_size], batch_size=batch_size, epochs=1, verbose=0)
    first = time.perf_counter() - start
    times = []
    for _ in range(2):  # the faster of two passes: less exposed to load spikes
        start = time.perf_counter()
        model.fit(x[batch_size:], y[batch_size:], batch_size=batch_size, epochs=1, verbose=0)
        times.append((time.perf_counter() - start) / steps)
    step = min(times)
    return {
        "compile_s": max(0.0, first - step),
        "step_ms": 1e3 * step,
        "tensors": len(model.trainable_variables),
        "params": int(sum(int(v.numpy().size) if hasattr(v, "numpy") else 0
                          for v in model.trainable_variables)),
    }


def own_peak_rss_gb():
    """This process's peak RSS in GB.

    `VmHWM` from /proc: `getrusage`'s `ru_maxrss` is carried over `fork` and
    `exec` on Linux, so a child would report at least its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1e6  # kB -> GB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def peak_rss_child(backend, name, optimizer_name, batch_size, steps, baseline="adam"):
    """Peak RSS (GB) of a fresh process running `measure` (its own high-water mark)."""
    command = [sys.executable, __file__, "--child-memory", name, optimizer_name,
               "--batch-size", str(batch_size), "--steps", str(steps), "--baseline", baseline]
    env = dict(os.environ, KERAS_BACKEND=backend)
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_gb"]


def run_backend(models, batch_size, steps, memory, baseline="adam"):
    import keras

    backend = keras.backend.backend()
    rows = []
    for name in models:
        row = {"model": name, "backend": backend, "baseline": baseline}
        for optimizer_name in OPTIMIZERS:
            log(f"[{backend}] {name}: {optimizer_name} ...")
            figures = measure(name, optimizer_name, batch_size, steps, baseline)
            row.update(tensors=figures["tensors"], params=figures["params"])
            row[f"{optimizer_name}_compile_s"] = figures["compile_s"]
            row[f"{optimizer_name}_step_ms"] = figures["step_ms"]
            log(f"[{backend}] {name}: {optimizer_name} compile {figures['compile_s']:.1f} s, "
                f"step {figures['step_ms']:.1f} ms")
            if memory:
                row[f"{optimizer_name}_peak_rss_gb"] = peak_rss_child(
                    backend, name, optimizer_name, batch_size, steps, baseline
                )
                log(f"[{backend}] {name}: {optimizer_name} peak RSS "
                    f"{row[f'{optimizer_name}_peak_rss_gb']:.2f} GB")
        rows.append(row)
        keras.backend.clear_session()
    return rows


def whole_fit_s(row, optimizer_name):
    """Seconds of a whole fit of the model's typical length: compile + steps x step."""
    steps = WHOLE_FIT_STEPS.get(row["model"], 1000)
    return row[f"{optimizer_name}_compile_s"] + steps * row[f"{optimizer_name}_step_ms"] / 1e3


def table(rows, batch_size):
    base = "AdamW" if rows and rows[0].get("baseline") == "adamw" else "Adam"
    header = (f"{'backend':10} {'model':14} {'tensors':>7} {'params':>11}  "
              f"{f'compile s {base}/VeLO (ratio)':>30}  {f'step ms {base}/VeLO (ratio)':>30}"
              f"  {f'whole fit s {base}/VeLO (ratio)':>32}"
              f"  {f'peak RSS GB {base}/VeLO (ratio)':>31}")
    lines = [f"batch size {batch_size} (vit_hub 128); whole fit: compile + 1,000 steps "
             "(gpt2_hub 200, vit_hub 380)",
             header]
    for r in rows:
        compile_ratio = r["velo_compile_s"] / max(r["adam_compile_s"], 1e-9)
        step_ratio = r["velo_step_ms"] / r["adam_step_ms"]
        whole = {name: whole_fit_s(r, name) for name in OPTIMIZERS}
        memory = ""
        if "velo_peak_rss_gb" in r:
            memory = (f"{r['adam_peak_rss_gb']:7.2f} / {r['velo_peak_rss_gb']:5.2f} "
                      f"({r['velo_peak_rss_gb'] / r['adam_peak_rss_gb']:4.2f}x)")
        lines.append(
            f"{r['backend']:10} {r['model']:14} {r['tensors']:7d} {r['params']:11,d}  "
            f"{r['adam_compile_s']:11.1f} / {r['velo_compile_s']:6.1f} ({compile_ratio:5.2f}x)  "
            f"{r['adam_step_ms']:11.1f} / {r['velo_step_ms']:7.1f} ({step_ratio:5.2f}x)  "
            f"{whole['adam']:13.1f} / {whole['velo']:7.1f} ({whole['velo'] / whole['adam']:5.2f}x)  "
            f"{memory:>31}"
        )
    return "\n".join(lines)


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = [b for b in BACKENDS if any(r["backend"] == b for r in rows)]
    figure, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 4), squeeze=False)
    for axis, backend in zip(axes[0], backends):
        chosen = sorted((r for r in rows if r["backend"] == backend), key=lambda r: r["tensors"])
        for optimizer_name, marker in (("adam", "o"), ("velo", "s")):
            axis.plot([r["tensors"] for r in chosen],
                      [r[f"{optimizer_name}_compile_s"] for r in chosen],
                      marker=marker, label="VeLO" if optimizer_name == "velo" else "Adam")
        for r in chosen:
            axis.annotate(r["model"], (r["tensors"], r["velo_compile_s"]), fontsize=7,
                          xytext=(3, 3), textcoords="offset points")
        axis.set_title(f"{backend}: fit compile time")
        axis.set_xlabel("trainable tensors")
        axis.set_ylabel("seconds (first fit call)")
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    log(f"plot written to {path}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--memory", action="store_true",
                        help="also measure peak RSS, one child process per run")
    parser.add_argument("--baseline", choices=BASELINES, default="adam",
                        help="Adam(1e-3) (default) or AdamW at Keras' defaults")
    parser.add_argument("--all-backends", action="store_true")
    parser.add_argument("--json", help="write the raw figures here")
    parser.add_argument("--plot", help="write the compile-time plot (PNG) here")
    parser.add_argument("--child-memory", nargs=2, metavar=("MODEL", "OPTIMIZER"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--child-rows", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    for name in models:
        if name not in MODELS:
            parser.error(f"unknown model {name!r}; known: {', '.join(MODELS)}")

    if args.child_memory:
        measure(*args.child_memory, args.batch_size, args.steps, args.baseline)
        print(json.dumps({"peak_rss_gb": own_peak_rss_gb()}))
        return
    if args.all_backends:
        rows = []
        for backend in BACKENDS:
            log(f"=== backend {backend}")
            command = [sys.executable, __file__, "--child-rows", "--models", args.models,
                       "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                       "--baseline", args.baseline]
            if args.memory:
                command.append("--memory")
            result = subprocess.run(command, env=dict(os.environ, KERAS_BACKEND=backend),
                                    stdout=subprocess.PIPE, text=True, check=True)
            rows += json.loads(result.stdout.strip().splitlines()[-1])
    else:
        rows = run_backend(models, args.batch_size, args.steps, args.memory, args.baseline)
        if args.child_rows:
            print(json.dumps(rows))
            return
    print(table(rows, args.batch_size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch_size": args.batch_size, "steps": args.steps, "rows": rows,
                       "load_average": os.getloadavg()}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    summary = [r for r in rows if "velo_step_ms" in r]
    if summary:
        log("median VeLO/Adam step ratio: "
            f"{statistics.median(r['velo_step_ms'] / r['adam_step_ms'] for r in summary):.2f}")


if __name__ == "__main__":
    main()
