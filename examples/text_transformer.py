"""Text classification with a small Transformer: which standard-library package is this line from?

Task: given one line of Python source code, say which of five packages of
the Python standard library it comes from: `asyncio`, `email`, `http`,
`logging` or `unittest`. Identifiers such as `loop`, `header`, `handler`
or `assertEqual` give many lines away; many others (`if x is None:`) are
ambiguous, so accuracy well below 100% is expected.

Data: offline, built deterministically from the source files of the Python
running the script (`sysconfig.get_paths()["stdlib"]`), test folders
excluded. Each distinct stripped line with at least 4 tokens is one
example; lines found in more than one package are dropped. At most 3,000
lines per package are kept and split 80/20 into train and test with a fixed
seed (independent of `--seed`), so every run on one Python version sees the
same data. Tokens are identifiers, numbers and single punctuation
characters; the 5,000 most frequent training tokens form the vocabulary (0
pads, 1 is out-of-vocabulary), and lines are cut or padded to 32 tokens.

Model: token embeddings plus learned position embeddings (64 wide), two
pre-norm Transformer blocks (4-head self-attention from
`keras.layers.MultiHeadAttention` with padding masked out, and a 128-wide
feed-forward layer, each with a residual connection), mean pooling over the
non-padding tokens, and a linear layer to 5 logits (~400k parameters, most
of them in the embedding).

    python examples/text_transformer.py                   # VeLO, bundled weights
    python examples/text_transformer.py --optimizer adam --learning-rate 3e-4
    KERAS_BACKEND=tensorflow python examples/text_transformer.py --steps 200 --epochs 2
"""

import collections
import os
import pathlib
import re
import sysconfig

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "text_transformer"
PACKAGES = ("asyncio", "email", "http", "logging", "unittest")
LINES_PER_PACKAGE = 3000
MIN_TOKENS = 4
SEQUENCE_LENGTH = 32
VOCABULARY_SIZE = 5000
TEST_FRACTION = 0.2
DATA_SEED = 0
TOKEN_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|\d+|\S")
TEST_FOLDERS = {"test", "tests", "idle_test"}


def tokenize(line):
    """Identifiers, numbers and single punctuation characters.

    >>> tokenize("self._loop.call_soon(cb, 0)")
    ['self', '.', '_loop', '.', 'call_soon', '(', 'cb', ',', '0', ')']
    """
    return TOKEN_PATTERN.findall(line)


def package_lines(stdlib, package):
    """The distinct stripped source lines (>= MIN_TOKENS tokens) of one stdlib package, sorted."""
    lines = set()
    for path in sorted((stdlib / package).rglob("*.py")):
        if TEST_FOLDERS & set(path.relative_to(stdlib).parts):
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            line = line.strip()
            if len(tokenize(line)) >= MIN_TOKENS:
                lines.add(line)
    return sorted(lines)


def load_stdlib_lines():
    """`(train_lines, train_labels, test_lines, test_labels)`; labels index `PACKAGES`."""
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    per_package = {package: package_lines(stdlib, package) for package in PACKAGES}
    owners = collections.Counter(line for lines in per_package.values() for line in lines)
    rng = np.random.default_rng(DATA_SEED)
    train, test = [], []
    for label, package in enumerate(PACKAGES):
        lines = [line for line in per_package[package] if owners[line] == 1]
        if len(lines) < 100:
            raise RuntimeError(f"Only {len(lines)} lines found for {package} under {stdlib}.")
        chosen = rng.permutation(len(lines))[:LINES_PER_PACKAGE]
        num_test = int(round(TEST_FRACTION * len(chosen)))
        test += [(lines[i], label) for i in chosen[:num_test]]
        train += [(lines[i], label) for i in chosen[num_test:]]
    train = [train[i] for i in rng.permutation(len(train))]
    test = [test[i] for i in rng.permutation(len(test))]
    return (
        [line for line, _ in train], np.array([label for _, label in train], "int32"),
        [line for line, _ in test], np.array([label for _, label in test], "int32"),
    )


def build_vocabulary(lines):
    """Token -> id for the `VOCABULARY_SIZE - 2` most frequent tokens (0: padding, 1: unknown)."""
    counts = collections.Counter(token for line in lines for token in tokenize(line))
    ranked = sorted(counts, key=lambda token: (-counts[token], token))
    return {token: index + 2 for index, token in enumerate(ranked[: VOCABULARY_SIZE - 2])}


def encode(lines, vocabulary):
    """Token ids `[len(lines), SEQUENCE_LENGTH]` int32, cut or padded with 0."""
    ids = np.zeros((len(lines), SEQUENCE_LENGTH), "int32")
    for row, line in enumerate(lines):
        tokens = [vocabulary.get(token, 1) for token in tokenize(line)][:SEQUENCE_LENGTH]
        ids[row, : len(tokens)] = tokens
    return ids


class PositionEmbedding(keras.layers.Layer):
    """Adds a learned vector per position to a `[batch, length, width]` sequence."""

    def build(self, input_shape):
        self.positions = self.add_weight(
            shape=tuple(input_shape[1:]), initializer="random_normal", name="positions"
        )

    def call(self, sequence):
        return sequence + self.positions


def transformer_block(x, padding_mask, width, heads, feed_forward_width, dropout):
    """Pre-norm self-attention + feed-forward, each added back to `x` `[batch, length, width]`."""
    attention_mask = keras.ops.expand_dims(padding_mask, 1)  # [batch, 1, length]: keys to attend
    y = keras.layers.LayerNormalization()(x)
    y = keras.layers.MultiHeadAttention(heads, key_dim=width // heads, dropout=dropout)(
        y, y, attention_mask=attention_mask
    )
    x = x + keras.layers.Dropout(dropout)(y)
    y = keras.layers.LayerNormalization()(x)
    y = keras.layers.Dense(feed_forward_width, activation="gelu")(y)
    y = keras.layers.Dense(width)(y)
    return x + keras.layers.Dropout(dropout)(y)


def build_model(num_classes, seed, width=64, heads=4, feed_forward_width=128, blocks=2, dropout=0.1):
    """Token ids `[batch, SEQUENCE_LENGTH]` -> `num_classes` logits."""
    keras.utils.set_random_seed(seed)
    token_ids = keras.Input((SEQUENCE_LENGTH,), dtype="int32")
    padding_mask = keras.ops.not_equal(token_ids, 0)  # [batch, length] bool
    x = keras.layers.Embedding(VOCABULARY_SIZE, width)(token_ids)
    x = PositionEmbedding()(x)
    for _ in range(blocks):
        x = transformer_block(x, padding_mask, width, heads, feed_forward_width, dropout)
    x = keras.layers.LayerNormalization()(x)
    x = keras.layers.GlobalAveragePooling1D()(x, mask=padding_mask)
    logits = keras.layers.Dense(num_classes)(x)
    return keras.Model(token_ids, logits, name="transformer")


def main(argv=None):
    args = _common.parse_arguments(__doc__, steps=600, epochs=3, batch_size=64, argv=argv)
    train_lines, y_train, test_lines, y_test = load_stdlib_lines()
    vocabulary = build_vocabulary(train_lines)
    x_train, x_test = encode(train_lines, vocabulary), encode(test_lines, vocabulary)
    data = f"Python {sysconfig.get_python_version()} stdlib lines of {', '.join(PACKAGES)}"
    print(f"{EXAMPLE}: {data}, train {len(x_train)}, test {len(x_test)}, "
          f"backend {keras.backend.backend()}, {_common.optimizer_label(args)}")

    model = build_model(len(PACKAGES), args.seed)
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
        train_evaluation=_common.evaluation_split(x_train, y_train, args),
        validation_data=(x_val, y_val, val_batch),
        metric="accuracy",
        higher_is_better=True,
        extra={"classes": list(PACKAGES), "vocabulary_size": VOCABULARY_SIZE},
    )


if __name__ == "__main__":
    main()
