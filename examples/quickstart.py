"""Train a small Keras model with VeLO and with Adam(1e-3), side by side.

    python examples/quickstart.py                      # KERAS_BACKEND=jax by default
    KERAS_BACKEND=torch python examples/quickstart.py --steps 600

Data: Fashion-MNIST from the Debian package `dataset-fashion-mnist` when it
is installed (`apt-get install dataset-fashion-mnist`), otherwise
scikit-learn's bundled 8x8 digits. Both optimizers train the same MLP from
the same initial weights on the same batches for the same number of steps.
VeLO uses Google's published weights when they are cached or downloadable,
and otherwise the bootstrap weights keras-velo ships (`weights="bundled"`);
the script says which. Prints a table and saves the loss curves as a PNG.
"""

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_velo  # noqa: E402
from keras_velo.pretrained import WeightsUnavailableError, load_published_weights  # noqa: E402
from task_families.datasets import has_fashion_mnist, load_digits, load_fashion_mnist  # noqa: E402

STEPS_PER_EPOCH = 100


def choose_weights(timeout=10.0):
    """`("velo", why)` if Google's checkpoint is cached or downloadable, else bundled."""
    try:
        load_published_weights("velo", timeout=timeout)
        return "velo", "Google's published VeLO checkpoint"
    except WeightsUnavailableError:
        return "bundled", (
            "keras-velo's bundled bootstrap weights (Google's checkpoint is not "
            "cached and could not be downloaded)"
        )


def load_data():
    if has_fashion_mnist():
        (x, y), (x_test, y_test) = load_fashion_mnist("train"), load_fashion_mnist("test")
        return "Fashion-MNIST (Debian dataset-fashion-mnist)", x, y, x_test, y_test
    (x, y), (x_test, y_test) = load_digits("train"), load_digits("test")
    return "scikit-learn digits 8x8", x, y, x_test, y_test


def build_model(input_shape, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10),
        ]
    )


class EpochLoss(keras.callbacks.Callback):
    """Mean training loss of every `STEPS_PER_EPOCH` steps, with the step count."""

    def __init__(self):
        super().__init__()
        self.steps, self.losses = [], []

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append((epoch + 1) * STEPS_PER_EPOCH)
        self.losses.append(float(logs["loss"]))


def train(name, optimizer, data, steps, batch_size, seed, verbose):
    _, x, y, x_test, y_test = data
    model = build_model(x.shape[1:], seed)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=keras.backend.backend() != "torch",
    )
    if isinstance(optimizer, keras_velo.VeLO):
        keras_velo.attach(model)
    curve = EpochLoss()
    keras.utils.set_random_seed(seed + 1)  # same batch order for both optimizers
    print(f"\n== {name} ==")
    start = time.perf_counter()
    model.fit(
        x,
        y,
        batch_size=batch_size,
        epochs=steps // STEPS_PER_EPOCH,
        steps_per_epoch=STEPS_PER_EPOCH,
        callbacks=[curve],
        verbose=verbose,
    )
    seconds = time.perf_counter() - start
    subset = slice(0, 10_000)
    train_loss, _ = model.evaluate(x[subset], y[subset], batch_size=1000, verbose=0)
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    return {
        "name": name,
        "train_loss": train_loss,
        "test_accuracy": test_accuracy,
        "seconds": seconds,
        "curve": (curve.steps, curve.losses),
    }


def plot(results, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for result in results:
        steps, losses = result["curve"]
        ax.plot(steps, losses, marker="o", markersize=3, label=(
            f"{result['name']} (test acc {result['test_accuracy']:.3f})"
        ))
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (mean of each {STEPS_PER_EPOCH} steps)")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000, help="training steps (multiple of 100)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--weights", default="auto", help='"auto", "velo", "bundled" or a path')
    parser.add_argument("--out", default="quickstart_loss.png", help="where to save the plot (PNG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    args = parser.parse_args(argv)
    if args.steps < STEPS_PER_EPOCH or args.steps % STEPS_PER_EPOCH:
        parser.error(f"--steps must be a positive multiple of {STEPS_PER_EPOCH}")

    weights, why = choose_weights() if args.weights == "auto" else (args.weights, "as requested")
    data = load_data()
    print(f"backend: {keras.backend.backend()}   data: {data[0]}   train {len(data[1])}, test {len(data[3])}")
    print(f"VeLO weights: {weights!r}: {why}")

    results = [
        train("VeLO", keras_velo.VeLO(total_steps=args.steps, weights=weights), data,
              args.steps, args.batch_size, args.seed, args.verbose),
        train("Adam(1e-3)", keras.optimizers.Adam(1e-3), data,
              args.steps, args.batch_size, args.seed, args.verbose),
    ]
    print(f"\n{args.steps} steps, batch {args.batch_size}, {data[0]}")
    print(f"{'optimizer':<12} {'train loss':>11} {'test acc':>9} {'seconds':>8}")
    for r in results:
        print(f"{r['name']:<12} {r['train_loss']:>11.4f} {r['test_accuracy']:>9.4f} {r['seconds']:>8.1f}")
    dataset = data[0].split(" (")[0]
    plot(results, args.out, f"{dataset}, MLP 128, {keras.backend.backend()}, VeLO weights={weights}")
    print(f"loss curves saved to {args.out}")
    return results


if __name__ == "__main__":
    main()
