"""RNN language-model family: byte embedding -> stacked LSTM / GRU / simple RNN -> bytes.

Next-byte prediction on `python_stdlib` (or a `tfds:` text set). Samples the
cell, depth 1-2, hidden sizes 32-256, embedding size, sequence length,
initializer and batch size.
"""

import dataclasses

import keras
from keras import layers

from task_families import layers as blocks, losses
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.task import Task
from task_families.text import VOCAB_SIZE
from task_families.transformer_lm import language_model_data

NAME = "rnn_lm"
CELLS = {"lstm": (layers.LSTM, 4), "gru": (layers.GRU, 3), "simple_rnn": (layers.SimpleRNN, 1)}


@dataclasses.dataclass(frozen=True)
class RNNLMConfig(TaskConfig):
    family = NAME

    sequence_length: int = 32
    cell: str = "lstm"
    embedding_dim: int = 16
    hidden_sizes: tuple = (32,)
    initializer: str = "glorot_uniform"

    def modalities(self):
        return ("text",)

    def validate(self):
        check_positive_ints(self, "sequence_length", "embedding_dim", "hidden_sizes")
        check_choice(self, "cell", CELLS)
        check_choice(self, "initializer", blocks.INITIALIZERS)

    def forward_flops(self):
        gates = CELLS[self.cell][1]
        flops, width_in = 0, self.embedding_dim
        for hidden in self.hidden_sizes:
            flops += 2 * gates * (width_in + hidden) * hidden
            width_in = hidden
        return self.sequence_length * (flops + 2 * width_in * VOCAB_SIZE)


def sample(seed):
    rng = family_rng(NAME, seed)
    depth = int(rng.integers(1, 3))
    return RNNLMConfig(
        dataset="python_stdlib",
        batch_size=pick(rng, (16, 32, 64)),
        init_seed=int(seed),
        sequence_length=pick(rng, (32, 64)),
        cell=pick(rng, ("lstm", "lstm", "gru", "simple_rnn")),
        embedding_dim=pick(rng, (16, 32, 64)),
        hidden_sizes=tuple(pick(rng, (32, 64, 128, 256)) for _ in range(depth)),
        initializer=pick(rng, ("glorot_uniform", "lecun_normal", "glorot_normal")),
    )


def smallest():
    return RNNLMConfig(dataset="python_stdlib", batch_size=8, init_seed=0, sequence_length=16, hidden_sizes=(16,))


def build(config):
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    cell_type = CELLS[config.cell][0]
    tokens = keras.Input((config.sequence_length,), dtype="int32")
    x = layers.Embedding(VOCAB_SIZE, config.embedding_dim, embeddings_initializer=init("random_normal"))(tokens)
    for hidden in config.hidden_sizes:
        x = cell_type(
            hidden, return_sequences=True, kernel_initializer=init(), recurrent_initializer=init("orthogonal")
        )(x)
    logits = layers.Dense(VOCAB_SIZE, kernel_initializer=init())(x)
    model = keras.Model(tokens, logits, name=NAME)
    loss = losses.classification_loss("cross_entropy", VOCAB_SIZE)
    return Task(config, model, loss, language_model_data(config), metrics=["accuracy"], eval_batch_size=64)


FAMILY = TaskFamily(NAME, RNNLMConfig, sample, build, smallest, __doc__.splitlines()[0])
