"""Plumbing shared by the example scripts: flags, optimizer, batches, loss curve, JSON.

Every example (`image_convnet.py`, `text_transformer.py`,
`timeseries_forecasting.py`, `autoencoder.py`, `residual_batchnorm.py`,
`keras_hub_gpt2.py`, `keras_hub_vit.py`)
builds its own data and model and calls `compile` and `fit` itself; this
module holds only what they all repeat:

* `argument_parser` / `parse_arguments`: the common flags (`--optimizer
  velo|adam|adamw|adamw_cosine|schedule_free_adamw|muon`, `--learning-rate`,
  `--weights`, `--steps`, `--epochs`, `--batch-size`, `--seed`, `--json`,
  `--verbose`, `--quick`, `--update-sizes`, and `--data` for the image
  examples).
* `make_optimizer`, `velo_callbacks`, `jit_compile`: VeLO or one of the
  optimizers a user would pick instead (`evaluation.alternatives`: Adam,
  AdamW, AdamW with warm-up and cosine decay, ScheduleFreeAdamW, Muon),
  and what `fit` needs to feed VeLO the loss of every batch.
* `import_keras_hub`: KerasHub for the `keras_hub_*` examples, or an exit
  that says how to install it.
* `BatchStream`: exactly `--steps` full batches, reshuffled on every pass
  over the data and identical for every optimizer with the same `--seed`.
  A fixed batch shape means XLA compiles the train step once.
* `LossRecorder` (`loss_recorder(args)`): the training loss of every
  batch and, with `--update-sizes`, the RMS of each tensor's updates early
  and late in training.
* `finish`: re-estimates BatchNorm's statistics on training examples
  (`evaluation.batch_norm`), evaluates, prints a summary and writes the
  `--json` record.

It is imported as `_common` because `python examples/<name>.py` puts
`examples/` on `sys.path`:

```python
import _common
args = _common.parse_arguments(__doc__, steps=300, epochs=3, batch_size=64)
optimizer = _common.make_optimizer(args)   # VeLO(total_steps=300, weights="bundled"), Adam, Muon, ...
```
"""

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_velo  # noqa: E402
from evaluation.alternatives import ALTERNATIVES  # noqa: E402
from evaluation.batch_norm import batch_norm_layers, batches_of, reestimate_batch_norm  # noqa: E402

QUICK_STEPS = 6
QUICK_EVALUATION_EXAMPLES = 512
EVALUATION_BATCH_SIZE = 500
IMAGE_SOURCES = ("offline", "keras")
OPTIMIZERS = ("velo", *ALTERNATIVES)
UPDATE_SIZE_WINDOW = 0.2  # --update-sizes: the first and the last 20% of the steps


# --- flags ------------------------------------------------------------------


def argument_parser(description, *, steps, epochs, batch_size, image_data=False):
    """The flags every example takes, with that example's defaults."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--optimizer", choices=OPTIMIZERS, default="velo",
        help="velo, or what a Keras user would pick instead at Keras' defaults: adam, adamw "
        "(weight decay 0.004), adamw_cosine (AdamW, 5%% linear warm-up, cosine decay to 0), "
        "schedule_free_adamw, muon (evaluation/alternatives.py)",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None,
        help="the learning rate of any optimizer but VeLO (default: Keras' default, 1e-3, or "
        "2.5e-3 for schedule_free_adamw)",
    )
    parser.add_argument(
        "--weights", default="bundled",
        help='VeLO\'s weights: "bundled" (ship with keras-velo, offline; default), '
        '"velo" (Google\'s checkpoint, downloaded once) or a checkpoint path',
    )
    parser.add_argument("--steps", type=int, default=steps, help="training steps (batches) in all")
    parser.add_argument(
        "--epochs", type=int, default=epochs,
        help="the steps are split into this many equal epochs, with validation after each",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--seed", type=int, default=0, help="initial weights and batch order")
    parser.add_argument("--json", help="write the loss curve and final metrics to this JSON file")
    parser.add_argument("--verbose", type=int, default=1, help="Keras fit verbosity (0, 1 or 2)")
    parser.add_argument(
        "--update-sizes", action="store_true",
        help="record the RMS of every tensor's updates over the first and last 20%% of the steps "
        "into the --json record (slower: reads the weights around each of those steps)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help=f"smoke test: {QUICK_STEPS} steps in 1 epoch, "
        f"{QUICK_EVALUATION_EXAMPLES} examples per evaluation",
    )
    if image_data:
        parser.add_argument(
            "--data", choices=IMAGE_SOURCES, default="offline",
            help='"offline": Fashion-MNIST from the Debian package dataset-fashion-mnist, '
            'else scikit-learn digits; "keras": keras.datasets.fashion_mnist (downloads)',
        )
    return parser


def parse_arguments(description, *, steps, epochs, batch_size, image_data=False, argv=None):
    """Parsed common flags (`argv`: default `sys.argv[1:]`, kept as `args.argv`).

    `--quick` overrides `--steps` and `--epochs`.
    """
    parser = argument_parser(
        description, steps=steps, epochs=epochs, batch_size=batch_size, image_data=image_data
    )
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    keras_velo.enable_compilation_cache()  # a second run skips XLA's compile
    if args.quick:
        args.steps, args.epochs = QUICK_STEPS, 1
    if args.steps < 1 or args.epochs < 1 or args.steps % args.epochs:
        parser.error(
            f"--steps ({args.steps}) must be a positive multiple of --epochs ({args.epochs})"
        )
    if args.optimizer == "velo":
        if args.learning_rate is not None:
            parser.error("VeLO has no learning rate: it learned its step sizes; drop --learning-rate")
    else:
        if args.learning_rate is None:
            args.learning_rate = ALTERNATIVES[args.optimizer].default_learning_rate
        if args.learning_rate <= 0:
            parser.error(f"--learning-rate must be positive, got {args.learning_rate}")
    return args


# --- optimizer --------------------------------------------------------------


def make_optimizer(args):
    """`VeLO(total_steps=args.steps, weights=args.weights)`, or the alternative `args.optimizer`
    at `args.learning_rate` with Keras' other defaults (`evaluation.alternatives`)."""
    if args.optimizer == "velo":
        return keras_velo.VeLO(total_steps=args.steps, weights=args.weights)
    return ALTERNATIVES[args.optimizer].make(args.learning_rate, total_steps=args.steps)


def optimizer_label(args):
    """`"VeLO (bundled)"`, `"Adam(0.001)"`, `"Muon(0.001)"`, ...: how summaries name the run."""
    if args.optimizer == "velo":
        return f"VeLO ({args.weights})"
    return ALTERNATIVES[args.optimizer].label(args.learning_rate)


def velo_callbacks(model):
    """What `fit` needs so that VeLO gets the loss of every batch; `[]` for other optimizers.

    Call it after `compile`. With `keras_velo.VeLOCallback` this is that
    callback; older keras-velo versions patch the model instead
    (`keras_velo.attach`), with the same effect.
    """
    if keras_velo.find_velo(getattr(model, "optimizer", None)) is None:
        return []
    if hasattr(keras_velo, "VeLOCallback"):
        return [keras_velo.VeLOCallback()]
    keras_velo.attach(model)
    return []


def import_keras_hub():
    """The `keras_hub` module; without it, exits saying how to install it.

    keras-hub is installed without its dependencies (see
    `examples/requirements-keras-hub.txt`): its `tensorflow-text` requirement
    would replace `tensorflow-cpu` with the full `tensorflow` wheel.
    """
    try:
        import keras_hub
    except ImportError as error:
        raise SystemExit(
            f"This example needs keras-hub ({error}): "
            "pip install --no-deps -r examples/requirements-keras-hub.txt"
        ) from error
    return keras_hub


def jit_compile():
    """`True` (XLA) on JAX and TensorFlow; Keras' default elsewhere."""
    return True if keras.backend.backend() in ("jax", "tensorflow") else "auto"


# --- data -------------------------------------------------------------------


class BatchStream(keras.utils.PyDataset):
    """Exactly `steps` full batches of `(x, y)`, drawn pass after pass over the data.

    Each pass is a fresh permutation from `np.random.default_rng(seed)`; the
    last `len(x) % batch_size` examples of a pass are dropped, so every batch
    has the same shape. Give `fit` `epochs=E, steps_per_epoch=steps // E`
    and `shuffle=False`: Keras then reads the stream once, in order, across
    all epochs.

    >>> x = np.arange(10.0)[:, None]
    >>> stream = BatchStream(x, x, batch_size=4, steps=5, seed=0)
    >>> len(stream), stream[4][0].shape     # 2 batches per pass, 3 passes started
    (5, (4, 1))
    """

    def __init__(self, x, y, batch_size, steps, seed):
        super().__init__()
        if len(x) < batch_size:
            raise ValueError(f"{len(x)} examples cannot fill one batch of {batch_size}.")
        self.x, self.y, self.batch_size = x, y, batch_size
        rng = np.random.default_rng(seed)
        batches_per_pass = len(x) // batch_size
        passes = -(-steps // batches_per_pass)
        order = np.concatenate(
            [rng.permutation(len(x))[: batches_per_pass * batch_size] for _ in range(passes)]
        )
        self.batch_indices = order.reshape(-1, batch_size)[:steps]

    def __len__(self):
        return len(self.batch_indices)

    def __getitem__(self, index):
        chosen = self.batch_indices[index]
        return self.x[chosen], self.y[chosen]


def trim_to_batches(x, y, batch_size):
    """`(x, y, batch)` with the examples cut to a multiple of `batch = min(batch_size, len(x))`."""
    batch = min(batch_size, len(x))
    keep = len(x) - len(x) % batch
    return x[:keep], y[:keep], batch


def evaluation_split(x, y, args, limit=None):
    """`(x, y, batch size)` for evaluation: at most `limit` examples (512 with --quick), full batches."""
    if args.quick:
        limit = QUICK_EVALUATION_EXAMPLES if limit is None else min(limit, QUICK_EVALUATION_EXAMPLES)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return trim_to_batches(x, y, EVALUATION_BATCH_SIZE)


def load_image_data(source):
    """`(description, (x_train, y_train), (x_test, y_test))`: images `[n, h, w, 1]` in [0, 1].

    `source="offline"`: Fashion-MNIST from the Debian package
    `dataset-fashion-mnist` when it is installed, otherwise scikit-learn's
    8x8 digits. `source="keras"`: `keras.datasets.fashion_mnist` (downloads
    once into `~/.keras/datasets`). Labels are int32 in [0, 10).
    """
    if source == "keras":
        (x, y), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
        description = "Fashion-MNIST (keras.datasets)"
        x, x_test = x.astype("float32") / 255.0, x_test.astype("float32") / 255.0
    else:
        from task_families.datasets import has_fashion_mnist, load_digits, load_fashion_mnist

        if has_fashion_mnist():
            description = "Fashion-MNIST (Debian dataset-fashion-mnist)"
            (x, y), (x_test, y_test) = load_fashion_mnist("train"), load_fashion_mnist("test")
        else:
            description = "scikit-learn digits 8x8 (Fashion-MNIST not installed)"
            (x, y), (x_test, y_test) = load_digits("train"), load_digits("test")
    return (
        description,
        (x[..., None], y.astype("int32")),
        (x_test[..., None], y_test.astype("int32")),
    )


# --- recording --------------------------------------------------------------


class LossRecorder(keras.callbacks.Callback):
    """The training loss of every batch, the wall time of `fit` and, optionally, update sizes.

    Keras logs the running mean of the loss over the current epoch; with
    equal batches, batch k's own loss is `(k + 1) * mean_k - k * mean_(k-1)`.
    `step_losses[i]` is the loss of step i + 1 (float32 round-off, ~1e-6
    relative).

    With `update_sizes_over=S` (the run's steps; `--update-sizes`), it also
    reads every trainable tensor before and after each of the first and the
    last `UPDATE_SIZE_WINDOW` of the S steps, and `update_sizes()` gives per
    tensor path the mean RMS of its updates over each window (`"early"`,
    `"late"`) and the tensor's RMS at the start and the end (`"rms_start"`,
    `"rms_end"`). Reading the weights syncs the training state to the host,
    so such a run is slower; its losses are unchanged.
    """

    def __init__(self, update_sizes_over=None):
        super().__init__()
        self.step_losses, self.epoch_losses = [], []
        self.seconds = 0.0
        self._previous_mean = 0.0
        self._window = None
        if update_sizes_over is not None:
            self._window = max(1, round(UPDATE_SIZE_WINDOW * update_sizes_over))
            self._total_steps = update_sizes_over
            self._sums = {"early": {}, "late": {}}
            self._counts = {"early": 0, "late": 0}
            self._rms = {}
            self._before = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = 0.0

    def _phase(self):
        step = len(self.step_losses)  # the 0-based step about to run or just run
        if step < self._window:
            return "early"
        return "late" if step >= self._total_steps - self._window else None

    def _weights(self):
        return {v.path: np.asarray(keras.ops.convert_to_numpy(v.value), np.float64)
                for v in self.model.trainable_variables}

    def on_train_batch_begin(self, batch, logs=None):
        if self._window is not None and self._phase() is not None:
            self._before = self._weights()

    def on_train_batch_end(self, batch, logs=None):
        phase = self._phase() if self._window is not None else None
        if phase is not None and self._before is not None:
            after = self._weights()
            for path, value in after.items():
                size = float(np.sqrt(np.mean(np.square(value - self._before[path]))))
                self._sums[phase][path] = self._sums[phase].get(path, 0.0) + size
                self._rms.setdefault(path, {"rms_start": _rms(self._before[path])})["rms_end"] = _rms(value)
            self._counts[phase] += 1
            self._before = None
        mean = float(logs["loss"])
        self.step_losses.append((batch + 1) * mean - batch * self._previous_mean)
        self._previous_mean = mean

    def on_epoch_end(self, epoch, logs=None):
        self.epoch_losses.append(float(logs["loss"]))

    def on_train_end(self, logs=None):
        self.seconds = time.perf_counter() - self._start

    def update_sizes(self):
        """`{tensor path: {"early", "late", "rms_start", "rms_end"}}`, or None if not recorded."""
        if self._window is None:
            return None
        return {
            path: {
                **{phase: self._sums[phase].get(path, 0.0) / max(1, self._counts[phase])
                   for phase in ("early", "late")},
                **self._rms[path],
            }
            for path in self._rms
        }


def loss_recorder(args):
    """The `LossRecorder` of a run: with `--update-sizes`, recording update sizes over `--steps`."""
    return LossRecorder(update_sizes_over=args.steps if args.update_sizes else None)


def _rms(value):
    return float(np.sqrt(np.mean(np.square(value)))) if value.size else 0.0


def training_loss_mode(batch_norm_examples):
    """How a record's `final_train_loss` was measured, in words (tables quote it)."""
    if batch_norm_examples:
        return (f"inference mode, BatchNorm statistics re-estimated on {batch_norm_examples} "
                "training examples")
    return "inference mode (no BatchNorm)"


def finish(example, args, model, recorder, history, *, data, train_evaluation, validation_data,
           metric, higher_is_better, extra=None):
    """Scores the trained model, prints a summary, writes `--json`; returns the record (a dict).

    `train_evaluation`: `(x, y, batch size)` of training examples for the
    final training loss; `validation_data`: `(x, y, batch size)` of the
    validation split. Both are measured the way the optimizer's work is
    judged: when the model has BatchNormalization layers, their moving
    statistics (which lag behind training) are first re-estimated on the
    training examples (`evaluation.batch_norm`), then both are evaluated in
    inference mode; the inference-mode numbers with the moving statistics
    are kept beside them (`*_moving_statistics`). Without BatchNorm the
    validation numbers are those of the last epoch (`history`). `metric`:
    the key that judges a run, e.g. `"accuracy"` or `"loss"`.
    """
    x, y, batch_size = train_evaluation
    validation = {
        key[len("val_"):]: float(values[-1])
        for key, values in history.history.items()
        if key.startswith("val_")
    }
    moving_statistics = {}
    if batch_norm_layers(model):
        moving_statistics["final_train_loss_moving_statistics"] = float(
            model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)["loss"])
        moving_statistics["validation_moving_statistics"] = validation
    batch_norm_examples = reestimate_batch_norm(model, batches_of(x, batch_size))
    if batch_norm_examples:
        x_val, y_val, val_batch = validation_data
        validation = {key: float(value) for key, value in model.evaluate(
            x_val, y_val, batch_size=val_batch, verbose=0, return_dict=True).items()}
    train_logs = model.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)
    record = {
        "example": example,
        "optimizer": args.optimizer,
        "label": optimizer_label(args),
        "learning_rate": args.learning_rate if args.optimizer != "velo" else None,
        "weights": args.weights if args.optimizer == "velo" else None,
        "backend": keras.backend.backend(),
        "keras": keras.__version__,
        "python": platform.python_version(),
        "data": data,
        "seed": args.seed,
        "steps": args.steps,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "quick": args.quick,
        "seconds": recorder.seconds,
        "step_losses": recorder.step_losses,
        "epoch_losses": recorder.epoch_losses,
        "epoch_validation": {
            key: [float(v) for v in values]
            for key, values in history.history.items()
            if key.startswith("val_")
        },
        "final_train_loss": float(train_logs["loss"]),
        "train_loss_mode": training_loss_mode(batch_norm_examples),
        "train_evaluation_examples": len(x),
        **moving_statistics,
        "validation": validation,
        "metric": {
            "name": metric,
            "value": validation[metric],
            "higher_is_better": higher_is_better,
        },
        "command": [f"{example}.py", *args.argv],
        **({"update_sizes": recorder.update_sizes()} if args.update_sizes else {}),
        **(extra or {}),
    }
    print(
        f"{example}: {record['label']}, {args.steps} steps in {recorder.seconds:.1f} s  "
        f"final train loss {record['final_train_loss']:.4f}  "
        f"validation {metric} {validation[metric]:.4f}"
    )
    if args.json:
        path = pathlib.Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
    return record
