"""Size and write time of a backup (`model.save_weights`, what `BackupAndRestore` writes) and of a `.keras` file.

VeLO against Adam in the same process, on the same model, after a few
training steps: Adam(1e-3); VeLO with `weights="bundled"` (saved by name,
a fingerprint); VeLO with a theta from a local path (saved by value,
+9.3 MB). Prints sizes, median write times over `--repeats` writes, and the
ratios to Adam.

    KERAS_BACKEND=jax python benchmarks/backup_size.py [--repeats 20]
"""

import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
import keras_velo  # noqa: E402
from meta.bootstrap_theta import write_bootstrap_checkpoint  # noqa: E402


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(32, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(64, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])


def _measure(name, optimizer, directory, repeats):
    model = _model()
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=(128,))
    model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    backup = directory / f"{name}.weights.h5"
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.save_weights(backup)
        times.append(time.perf_counter() - start)
    full = directory / f"{name}.keras"
    model.save(full)
    return backup.stat().st_size, statistics.median(times), full.stat().st_size


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        directory = pathlib.Path(tmp)
        theta_dir = directory / "local_theta"
        write_bootstrap_checkpoint(theta_dir)
        runs = {
            "Adam(1e-3)": keras.optimizers.Adam(1e-3),
            'VeLO weights="bundled" (by name)': keras_velo.VeLO(weights="bundled"),
            "VeLO weights=<path> (by value)": keras_velo.VeLO(weights=str(theta_dir)),
        }
        results = {}
        for name, optimizer in runs.items():
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            results[name] = _measure(name.split()[0] + str(len(results)), optimizer, directory, args.repeats)
    adam = results["Adam(1e-3)"]
    print(f"backend {keras.backend.backend()}, {args.repeats} writes each, median")
    print(f"{'optimizer':36s} {'backup KB':>10s} {'x Adam':>7s} {'write ms':>9s} {'x Adam':>7s} {'.keras KB':>10s} {'x Adam':>7s}")
    for name, (size, seconds, full) in results.items():
        print(f"{name:36s} {size / 1e3:10.0f} {size / adam[0]:7.2f} {seconds * 1e3:9.1f} "
              f"{seconds / adam[1]:7.2f} {full / 1e3:10.0f} {full / adam[2]:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
