"""Time-series forecasting: predict the next 12 values of a noisy seasonal series.

Task: from the last 48 values of a series, forecast the next 12 (all at
once), minimising the mean squared error.

Data: generated, offline and deterministic (a fixed data seed, independent
of `--seed`). Each example is its own series of 60 values,

    x(t) = level + slope * t + sum over 3 waves of a_k * sin(2 pi t / period_k + phase_k) + noise,

with periods drawn from [6, 40] steps, amplitudes from [0.2, 1], slopes
from N(0, 0.02), levels from N(0, 0.5) and Gaussian noise of standard
deviation 0.1, so the model has to read the waves off each window rather
than memorise one series. 8,192 training and 2,048 validation series.
Repeating the last observed value scores a validation MSE of about 1.25
(printed at the start for scale); the noise floor is 0.01.

Model: a causal 1-D convolution (32 filters, width 5) feeding a GRU with 32
units, and a linear layer to the 12 future values (~7k parameters).
Reported metric: validation mean absolute error.

    python examples/timeseries_forecasting.py             # VeLO, bundled weights
    python examples/timeseries_forecasting.py --optimizer adam --learning-rate 1e-2
    KERAS_BACKEND=torch python examples/timeseries_forecasting.py --steps 300
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "timeseries_forecasting"
HISTORY_LENGTH = 48
HORIZON = 12
NUM_WAVES = 3
NOISE_STD = 0.1
TRAIN_SERIES = 8192
VALIDATION_SERIES = 2048
DATA_SEED = 2026


def generate_series(count, rng):
    """`count` independent series `[count, HISTORY_LENGTH + HORIZON]` float32 (see the module docstring)."""
    t = np.arange(HISTORY_LENGTH + HORIZON, dtype=np.float64)
    periods = rng.uniform(6.0, 40.0, (count, NUM_WAVES, 1))
    amplitudes = rng.uniform(0.2, 1.0, (count, NUM_WAVES, 1))
    phases = rng.uniform(0.0, 2 * np.pi, (count, NUM_WAVES, 1))
    waves = (amplitudes * np.sin(2 * np.pi * t / periods + phases)).sum(axis=1)
    trend = rng.normal(0.0, 0.5, (count, 1)) + rng.normal(0.0, 0.02, (count, 1)) * t
    noise = rng.normal(0.0, NOISE_STD, (count, len(t)))
    return (waves + trend + noise).astype(np.float32)


def make_windows(series):
    """`(history [n, HISTORY_LENGTH, 1], future [n, HORIZON])` from series `[n, HISTORY_LENGTH + HORIZON]`."""
    return series[:, :HISTORY_LENGTH, None], series[:, HISTORY_LENGTH:]


def load_data():
    """`((x_train, y_train), (x_val, y_val))`, the same on every call."""
    rng = np.random.default_rng(DATA_SEED)
    return make_windows(generate_series(TRAIN_SERIES, rng)), make_windows(
        generate_series(VALIDATION_SERIES, rng)
    )


def build_model(seed):
    """History `[batch, HISTORY_LENGTH, 1]` -> forecast `[batch, HORIZON]`."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((HISTORY_LENGTH, 1)),
            keras.layers.Conv1D(32, 5, padding="causal", activation="relu"),
            keras.layers.GRU(32),
            keras.layers.Dense(HORIZON),
        ],
        name="conv_gru",
    )


def main(argv=None):
    args = _common.parse_arguments(__doc__, steps=600, epochs=3, batch_size=64, argv=argv)
    (x_train, y_train), (x_val, y_val) = load_data()
    naive_mse = float(np.mean((y_val - x_val[:, -1:, 0]) ** 2))
    data = f"generated sums of {NUM_WAVES} sines + trend + noise, {HISTORY_LENGTH} -> {HORIZON} steps"
    print(f"{EXAMPLE}: {data}, train {len(x_train)}, validation {len(x_val)}, "
          f"last-value baseline MSE {naive_mse:.3f}, backend {keras.backend.backend()}, "
          f"{_common.optimizer_label(args)}")

    model = build_model(args.seed)
    model.compile(
        optimizer=_common.make_optimizer(args),
        loss="mse",
        metrics=["mae"],
        jit_compile=_common.jit_compile(),
    )
    x_val, y_val, val_batch = _common.evaluation_split(x_val, y_val, args)
    recorder = _common.loss_recorder(args)
    history = model.fit(
        _common.BatchStream(x_train, y_train, args.batch_size, args.steps, args.seed),
        epochs=args.epochs,
        steps_per_epoch=args.steps // args.epochs,
        shuffle=False,
        validation_data=(x_val, y_val),
        validation_batch_size=val_batch,
        callbacks=[recorder, *_common.velo_callbacks(model)],
        verbose=args.verbose,
    )
    return _common.finish(
        EXAMPLE, args, model, recorder, history,
        data=data,
        train_evaluation=_common.evaluation_split(x_train, y_train, args, limit=4096),
        validation_data=(x_val, y_val, val_batch),
        metric="mae",
        higher_is_better=False,
        extra={"last_value_baseline_mse": naive_mse},
    )


if __name__ == "__main__":
    main()
