"""Train a small Keras model with VeLO and with Adam(1e-3), side by side.

    python examples/quickstart.py                      # KERAS_BACKEND=jax by default
    KERAS_BACKEND=torch python examples/quickstart.py --steps 600

Data: Fashion-MNIST from the Debian package `dataset-fashion-mnist` when it
is installed (`apt-get install dataset-fashion-mnist`), otherwise
scikit-learn's bundled 8x8 digits. Both optimizers train the same MLP from
the same initial weights on the same batches for the same number of steps.
VeLO uses Google's published weights when they are cached or downloadable,
and otherwise the bootstrap weights keras-velo ships (`weights="bundled"`);
the script says which. Training is exactly `--steps` full batches (a fresh
shuffle on every pass over the data, the remainder dropped, so XLA compiles
the train step once), shown as epochs of 100 steps. Prints a table and
saves the loss curves as a PNG, by default `examples/quickstart_loss.png`
beside this script (the one the README shows).
"""

import argparse
import os
import pathlib

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import _common  # noqa: E402
import keras_velo  # noqa: E402
from keras_velo.weights.pretrained import WeightsUnavailableError, load_published_weights  # noqa: E402

STEPS_PER_EPOCH = 100
DEFAULT_PLOT = pathlib.Path(__file__).resolve().parent / "quickstart_loss.png"


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
    """`(description, x, y, x_test, y_test)`: Fashion-MNIST if installed, else digits."""
    description, (x, y), (x_test, y_test) = _common.load_image_data("offline")
    return description, x, y, x_test, y_test


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


def train(name, optimizer, data, steps, batch_size, seed, verbose):
    """Trains the MLP for exactly `steps` batches; returns its metrics and every step's loss."""
    _, x, y, x_test, y_test = data
    model = build_model(x.shape[1:], seed)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=_common.jit_compile(),
    )
    recorder = _common.LossRecorder()
    print(f"\n== {name} ==")
    model.fit(
        _common.BatchStream(x, y, batch_size, steps, seed + 1),  # same batches for every optimizer
        epochs=steps // STEPS_PER_EPOCH,
        steps_per_epoch=STEPS_PER_EPOCH,
        shuffle=False,
        callbacks=[recorder, *_common.velo_callbacks(model)],
        verbose=verbose,
    )
    if len(recorder.step_losses) != steps:
        raise RuntimeError(f"{name} trained {len(recorder.step_losses)} steps, not {steps}.")
    subset = slice(0, 10_000)
    train_loss, _ = model.evaluate(
        x[subset], y[subset], batch_size=min(1000, len(x[subset])), verbose=0
    )
    _, test_accuracy = model.evaluate(x_test, y_test, batch_size=min(1000, len(x_test)), verbose=0)
    return {
        "name": name,
        "train_loss": train_loss,
        "test_accuracy": test_accuracy,
        "seconds": recorder.seconds,
        "step_losses": recorder.step_losses,
    }


def plot(results, path, title):
    """Loss of every step (faint) and its mean over each 100 steps, at the real step counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for colour, result in zip(("C3", "C0"), results):
        losses = result["step_losses"]
        ax.plot(range(1, len(losses) + 1), losses, color=colour, alpha=0.2, linewidth=0.7)
        means = [
            sum(losses[start : start + STEPS_PER_EPOCH]) / STEPS_PER_EPOCH
            for start in range(0, len(losses), STEPS_PER_EPOCH)
        ]
        ax.plot(
            [STEPS_PER_EPOCH * (i + 1) for i in range(len(means))], means, color=colour,
            marker="o", markersize=3,
            label=f"{result['name']} (test acc {result['test_accuracy']:.3f})",
        )
    ax.set_xlabel("training step")
    ax.set_ylabel(f"training loss (each step; mean of each {STEPS_PER_EPOCH})")
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
    parser.add_argument(
        "--out", type=pathlib.Path, default=DEFAULT_PLOT,
        help="where to save the plot (PNG; default: examples/quickstart_loss.png)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (1: progress bar)")
    args = parser.parse_args(argv)
    if args.steps < STEPS_PER_EPOCH or args.steps % STEPS_PER_EPOCH:
        parser.error(f"--steps must be a positive multiple of {STEPS_PER_EPOCH}")

    keras_velo.enable_compilation_cache()  # a second run skips XLA's compile
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
    print(f"\n{args.steps} steps of batch {args.batch_size} each, {data[0]}")
    print(f"{'optimizer':<12} {'train loss':>11} {'test acc':>9} {'seconds':>8}")
    for r in results:
        print(f"{r['name']:<12} {r['train_loss']:>11.4f} {r['test_accuracy']:>9.4f} {r['seconds']:>8.1f}")
    dataset = data[0].split(" (")[0]
    plot(results, args.out, f"{dataset}, MLP 128, {keras.backend.backend()}, VeLO weights={weights}")
    print(f"loss curves saved to {args.out}")
    return results


if __name__ == "__main__":
    main()
