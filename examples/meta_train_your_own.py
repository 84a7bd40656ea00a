"""Meta-train VeLO on your own task family: fine-tune the bundled weights for your models.

A *task family* is a function of a seed that returns a compiled Keras model
and its training data. Here: small MLPs regressing a noisy nonlinear
function of 8 features, whose depth, width, activation and data differ
from seed to seed. `meta.train.meta_train` fine-tunes VeLO's bundled
weights on tasks drawn from the family and scores every few iterations on
held-out seeds of it (meta-validation: the mean over those tasks of the
final training loss over the first); the curve lands in
`--out/meta_valid.png`, and the tuned weights in `--out/theta`, ready for
`keras_velo.VeLO(weights=".../theta")` on any backend.

    python examples/meta_train_your_own.py                 # ~6 minutes on a 2-core CPU
    python examples/meta_train_your_own.py --minutes 2 --out /tmp/mine

From the command line, the same run is

    python -m meta.train --config cpu-v2 --family my_module:regression_family \
        --members 4 --workers 0 --minutes 4 --out runs/mine

What moves: the `cpu-v2` preset's three blocks of VeLO's network (the
step-size head, the per-parameter MLP bank and the mix layers; 72,961
weights), by Persistent ES and truncated backprop combined by inverse
variance; `meta/README.md` says how the estimators and parts of theta
compare. Measured (2-core CPU, 4 training minutes): final 0.487 -> 0.481,
mean 0.581 -> 0.552 on 8 held-out seeds, noisy between checkpoints; run
it longer for a reliable gain (truncated backprop alone on the step-size
head made these tasks 6% worse in 4 minutes: 20-step truncations reward
greedy steps).
Meta-training runs on JAX; the weights it writes work on every backend.
"""

import argparse
import os
import pathlib
import sys

os.environ["KERAS_BACKEND"] = "jax"  # meta-training runs on JAX
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402


def regression_family(seed):
    """One task per seed: `(compiled model, (x, y), batch size)`.

    The seed decides everything, the initialisation included (seeded
    initializers), so that every process sees the same task for a seed.
    """
    rng = np.random.default_rng(seed)
    depth = int(rng.integers(1, 3))
    width = int(rng.choice([16, 32, 64]))
    activation = str(rng.choice(["relu", "tanh", "gelu"]))
    x = rng.normal(size=(1024, 8)).astype(np.float32)
    projection = rng.normal(size=(8, 4)) / np.sqrt(8)
    y = np.sin(3 * x @ projection).sum(axis=1, keepdims=True)
    y = (y + 0.1 * rng.normal(size=y.shape)).astype(np.float32)
    init = keras.initializers.GlorotUniform(seed=seed)
    layers = [keras.Input((8,))]
    layers += [keras.layers.Dense(width, activation=activation, kernel_initializer=init)
               for _ in range(depth)]
    layers += [keras.layers.Dense(1, kernel_initializer=init)]
    model = keras.Sequential(layers)
    model.compile(loss="mse")
    return model, (x, y), 32


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="examples/runs/your_own", help="run directory")
    parser.add_argument("--minutes", type=float, default=4.0, help="training minutes")
    parser.add_argument("--init", default="bundled", help="the theta to start from")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--validation-tasks", type=int, default=8,
                        help="held-out seeds of the family to score on")
    parser.add_argument("--validations", type=int, default=4,
                        help="meta-validation scores after the start's")
    args = parser.parse_args(argv)

    from meta.plots import validation_records
    from meta.train import meta_train, read_metrics

    meta_train(
        args.out, family=regression_family, config="cpu-v2", init=args.init, resume=args.resume,
        members=4, workers=0, minutes=args.minutes, iterations=100_000,
        validate_every_minutes=args.minutes / args.validations,
        validation_tasks=args.validation_tasks,
    )
    valid = validation_records(read_metrics(args.out))
    start, end = valid[0]["meta_valid"], valid[-1]["meta_valid"]
    print(f"\nmeta-validation on {args.validation_tasks} held-out seeds of the family (final training loss / initial):")
    for name, (final, _) in end["tasks"].items():
        print(f"  {name:40s} {start['tasks'][name][0]:.4f} -> {final:.4f}")
    print(f"  {'mean':40s} {start['final']:.4f} -> {end['final']:.4f} "
          f"({end['final'] / start['final'] - 1:+.1%})")
    print(f"curve: {pathlib.Path(args.out) / 'meta_valid.png'}; weights: "
          f"keras_velo.VeLO(weights='{pathlib.Path(args.out) / 'theta'}')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
