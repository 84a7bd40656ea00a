"""A byte-level language model on KerasHub's GPT-2 backbone, trained from scratch by VeLO or Adam.

Task: predict the next byte of Python source code. The validation loss is
the mean cross-entropy per byte in nats (divide by ln 2 for bits per
byte); a uniform guess scores ln 256 = 5.55.

Data: offline, the CPython standard library's `.py` sources of the Python
running the script (`task_families.text.python_stdlib_bytes()`: test
suites left out, the first 4 MB in sorted path order). From 79% on, those
4 MB are the codec tables of `encodings/` (with Python 3.11), regular text
that says little about a code model, so this example trains on the first
72% and validates on the next 5% (ordinary modules) and leaves the codec
tables out. Training
windows of 65 bytes (inputs: the first 64; targets: the same shifted by
one) start at random offsets drawn from `--seed`
(`task_families.batches.TokenData`); the validation windows are the first
2,000 consecutive ones of the validation text.

Model: `keras_hub.models.GPT2Backbone` with fresh weights (no preset, no
download): 256 byte tokens, 2 decoder layers of causal self-attention with
2 heads, width 64, feed-forward width 256, learned positions for 64 tokens,
no dropout; then a linear layer from each position's output to 256 byte
logits (~137k parameters). Every window is full text, so the padding mask
the backbone takes is all ones.

KerasHub is installed without its dependencies (`pip install --no-deps -r
examples/requirements-keras-hub.txt`; that file says why).

    python examples/keras_hub_gpt2.py                     # VeLO, bundled weights
    python examples/keras_hub_gpt2.py --optimizer adamw
    python examples/keras_hub_gpt2.py --optimizer adam --learning-rate 3e-3 --json gpt2_adam.json
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "keras_hub_gpt2"
SEQUENCE_LENGTH = 64
TRAIN_FRACTION, VALIDATION_END = 0.72, 0.77  # of the 4 MB corpus; codec tables from 79%
VALIDATION_WINDOWS = 2000
TRAIN_EVALUATION_WINDOWS = 2000


def load_windows(steps, batch_size, seed):
    """`(description, (x_train, y_train), (x_val, y_val))`: byte windows, int32 `[n, SEQUENCE_LENGTH]`.

    The training windows are the first `steps` batches of
    `TokenData.train_batches(seed, batch_size)`, in order.
    """
    from task_families import text
    from task_families.batches import TokenData

    tokens = np.frombuffer(text.python_stdlib_bytes(), np.uint8)
    train_end, validation_end = int(TRAIN_FRACTION * len(tokens)), int(VALIDATION_END * len(tokens))
    data = TokenData(tokens[:train_end], tokens[train_end:validation_end], SEQUENCE_LENGTH)
    batches = data.train_batches(seed, batch_size)
    train = [next(batches) for _ in range(steps)]
    validation = list(data.eval_batches(_common.EVALUATION_BATCH_SIZE, VALIDATION_WINDOWS))
    return (
        f"{text.corpus_description()}, bytes",
        (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        (np.concatenate([x for x, _ in validation]), np.concatenate([y for _, y in validation])),
    )


def build_model(seed, vocabulary_size=256, layers=2, heads=2, width=64, feed_forward_width=256):
    """Byte ids `[batch, SEQUENCE_LENGTH]` -> next-byte logits `[batch, SEQUENCE_LENGTH, vocabulary_size]`."""
    keras_hub = _common.import_keras_hub()
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=vocabulary_size,
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        intermediate_dim=feed_forward_width,
        dropout=0.0,
        max_sequence_length=SEQUENCE_LENGTH,
    )
    token_ids = keras.Input((SEQUENCE_LENGTH,), dtype="int32", name="token_ids")
    padding_mask = keras.ops.ones_like(token_ids)  # no padding: every window is full text
    sequence = backbone({"token_ids": token_ids, "padding_mask": padding_mask})  # [batch, length, width]
    logits = keras.layers.Dense(vocabulary_size, name="byte_logits")(sequence)
    return keras.Model(token_ids, logits, name="gpt2_bytes")


def main(argv=None):
    args = _common.parse_arguments(__doc__, steps=200, epochs=2, batch_size=64, argv=argv)
    data, (x_train, y_train), (x_test, y_test) = load_windows(args.steps, args.batch_size, args.seed)
    print(f"{EXAMPLE}: {data}, {len(x_train)} training windows of {SEQUENCE_LENGTH}, "
          f"validation {len(x_test)}, backend {keras.backend.backend()}, {_common.optimizer_label(args)}")

    model = build_model(args.seed)
    model.compile(
        optimizer=_common.make_optimizer(args),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=_common.jit_compile(),
    )
    x_val, y_val, val_batch = _common.evaluation_split(x_test, y_test, args)
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
        train_evaluation=_common.evaluation_split(x_train, y_train, args, limit=TRAIN_EVALUATION_WINDOWS),
        validation_data=(x_val, y_val, val_batch),
        metric="loss",
        higher_is_better=False,
        extra={"sequence_length": SEQUENCE_LENGTH, "vocabulary_size": 256},
    )


if __name__ == "__main__":
    main()
