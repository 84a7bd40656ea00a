"""Transformer language-model family: byte embedding + learned positions -> pre-LN decoder blocks -> bytes.

Each block is `x + attention(LN(x))` then `x + MLP(LN(x))` with causal
multi-head self-attention (Vaswani et al., 2017; GPT-2 layout), and a final
LayerNorm before the output layer. Next-byte prediction on `python_stdlib`
(or a `tfds:` text set). Samples sequence length 32-128, width 32-128,
heads, depth 1-3, MLP ratio, activation, initializer and batch size.

`norm_position="post"` builds the original Transformer's blocks instead,
`LN(x + attention(x))` then `LN(x + MLP(x))`, with no final LayerNorm; this
family never samples it (`task_families.gpt_lm` does).
"""

import dataclasses

import keras
from keras import layers

from task_families import layers as blocks, losses
from task_families.batches import TokenData
from task_families import datasets
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.task import Task
from task_families.text import VOCAB_SIZE

NAME = "transformer_lm"
NORM_POSITIONS = ("pre", "post")


@dataclasses.dataclass(frozen=True)
class TransformerLMConfig(TaskConfig):
    family = NAME

    sequence_length: int = 32
    model_dim: int = 32
    num_heads: int = 2
    num_layers: int = 1
    mlp_ratio: int = 4
    activation: str = "gelu"
    initializer: str = "glorot_uniform"
    norm_position: str = "pre"  # "pre" (GPT-2) or "post" (Vaswani et al., 2017)

    def modalities(self):
        return ("text",)

    def validate(self):
        check_positive_ints(self, "sequence_length", "model_dim", "num_heads", "num_layers", "mlp_ratio")
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"TransformerLMConfig: model_dim {self.model_dim} must be divisible by num_heads {self.num_heads}."
            )
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "norm_position", NORM_POSITIONS)

    def forward_flops(self):
        d, t = self.model_dim, self.sequence_length
        per_token_block = 2 * 4 * d * d + 2 * 2 * d * self.mlp_ratio * d + 2 * 2 * t * d
        return t * (self.num_layers * per_token_block + 2 * d * VOCAB_SIZE)


def sample(seed):
    rng = family_rng(NAME, seed)
    model_dim = pick(rng, (32, 64, 128))
    return TransformerLMConfig(
        dataset="python_stdlib",
        batch_size=pick(rng, (16, 32, 64)),
        init_seed=int(seed),
        sequence_length=pick(rng, (32, 64, 128)),
        model_dim=model_dim,
        num_heads=pick(rng, tuple(h for h in (1, 2, 4) if model_dim % h == 0)),
        num_layers=int(rng.integers(1, 4)),
        mlp_ratio=pick(rng, (2, 4)),
        activation=pick(rng, ("gelu", "gelu", "relu", "silu")),
        initializer=pick(rng, ("glorot_uniform", "lecun_normal", "glorot_normal")),
    )


def smallest():
    return TransformerLMConfig(
        dataset="python_stdlib", batch_size=8, init_seed=0, sequence_length=16, model_dim=16, num_heads=2
    )


def language_model_data(config):
    return TokenData(
        datasets.load_tokens(config.dataset, "train"),
        datasets.load_tokens(config.dataset, "test"),
        config.sequence_length,
    )


def transformer_block(x, attention, config, init):
    """One block: attention then MLP, each residual, normalised before (pre) or after (post).

    Reads `config.norm_position`, `mlp_ratio` and `activation`; the width is `x`'s.
    """
    width = x.shape[-1]

    def mlp(h):
        h = layers.Dense(config.mlp_ratio * width, kernel_initializer=init())(h)
        return layers.Dense(width, kernel_initializer=init())(layers.Activation(config.activation)(h))

    for sublayer in (attention, mlp):
        if config.norm_position == "pre":
            x = x + sublayer(layers.LayerNormalization()(x))
        else:
            x = layers.LayerNormalization()(x + sublayer(x))
    return x


def build(config):
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    tokens = keras.Input((config.sequence_length,), dtype="int32")
    x = layers.Embedding(VOCAB_SIZE, config.model_dim, embeddings_initializer=init("random_normal"))(tokens)
    x = blocks.PositionEmbedding(config.sequence_length, init("random_normal"))(x)
    for _ in range(config.num_layers):
        x = transformer_block(x, blocks.CausalSelfAttention(config.num_heads, init), config, init)
    if config.norm_position == "pre":
        x = layers.LayerNormalization()(x)
    logits = layers.Dense(VOCAB_SIZE, kernel_initializer=init())(x)
    model = keras.Model(tokens, logits, name=config.family)
    loss = losses.classification_loss("cross_entropy", VOCAB_SIZE)
    return Task(config, model, loss, language_model_data(config), metrics=["accuracy"], eval_batch_size=64)


FAMILY = TaskFamily(NAME, TransformerLMConfig, sample, build, smallest, __doc__.splitlines()[0])
