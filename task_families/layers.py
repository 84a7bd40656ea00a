"""Keras building blocks the task families share: seeded initializers, norms, attention.

Every random initializer gets its own integer seed drawn in build order from
the config's `init_seed`, so a config builds the same weights every time on
a given backend without touching Keras' global random state.
"""

import keras
from keras import layers, ops

ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "elu")  # what the samplers draw (fixed: samples depend on it)
# Accepted by every family but never sampled: out-of-distribution meta-validation uses them.
UNSAMPLED_ACTIVATIONS = ("leaky_relu", "softplus")
ALL_ACTIVATIONS = ACTIVATIONS + UNSAMPLED_ACTIVATIONS
INITIALIZERS = ("glorot_uniform", "he_normal", "lecun_normal", "glorot_normal")
NORMALIZATIONS = ("none", "batch", "layer")


class SeededInitializers:
    """Hands out initializers of one kind, each with a fresh seed: `init()`, `init("orthogonal")`."""

    def __init__(self, seed, kind):
        self._seed = seed
        self._kind = kind
        self._count = 0

    def __call__(self, kind=None):
        self._count += 1
        return keras.initializers.get(
            {"class_name": kind or self._kind, "config": {"seed": self._seed * 10_007 + self._count}}
        )


def normalization(kind, name=None):
    """A normalization layer for `kind` in NORMALIZATIONS, or None for "none"."""
    if kind == "batch":
        return layers.BatchNormalization(name=name)
    if kind == "layer":
        return layers.LayerNormalization(name=name)
    return None


def apply_normalization(kind, x):
    layer = normalization(kind)
    return x if layer is None else layer(x)


class PositionEmbedding(layers.Layer):
    """Adds a learned `[sequence_length, dim]` position table to `[batch, time, dim]` inputs."""

    def __init__(self, sequence_length, initializer, **kwargs):
        super().__init__(**kwargs)
        self.sequence_length = sequence_length
        self.initializer = initializer

    def build(self, input_shape):
        self.table = self.add_weight(
            shape=(self.sequence_length, input_shape[-1]), initializer=self.initializer, name="table"
        )

    def call(self, x):
        return x + self.table[None, : ops.shape(x)[1]]


class SelfAttention(layers.Layer):
    """Multi-head self-attention on `[batch, time, dim]`, from four Dense projections.

    `causal=True` masks attention to later positions (language models).
    Written out (rather than `keras.layers.MultiHeadAttention`) so each
    projection gets its own seeded initializer.
    """

    def __init__(self, num_heads, initializers, causal=False, **kwargs):
        super().__init__(**kwargs)
        self.num_heads = num_heads
        self.causal = causal
        self._initializers = initializers

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim % self.num_heads:
            raise ValueError(f"model width {dim} is not divisible by num_heads {self.num_heads}.")
        self.query, self.key_proj, self.value, self.output_proj = (
            layers.Dense(dim, kernel_initializer=self._initializers(), name=name)
            for name in ("query", "key", "value", "output")
        )
        for dense in (self.query, self.key_proj, self.value, self.output_proj):
            dense.build(input_shape)

    def call(self, x):
        batch, time, dim = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        head_dim = dim // self.num_heads

        def heads(t):
            return ops.transpose(ops.reshape(t, (batch, time, self.num_heads, head_dim)), (0, 2, 1, 3))

        q, k, v = heads(self.query(x)), heads(self.key_proj(x)), heads(self.value(x))
        scores = ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / (head_dim**0.5)
        if self.causal:
            causal = ops.tril(ops.ones((time, time), dtype="bool"))
            scores = ops.where(causal[None, None], scores, ops.full_like(scores, -1e9))
        attended = ops.matmul(ops.softmax(scores, axis=-1), v)
        merged = ops.reshape(ops.transpose(attended, (0, 2, 1, 3)), (batch, time, dim))
        return self.output_proj(merged)


class CausalSelfAttention(SelfAttention):
    """`SelfAttention` with the causal mask (each position sees itself and earlier ones)."""

    def __init__(self, num_heads, initializers, **kwargs):
        super().__init__(num_heads, initializers, causal=True, **kwargs)


class ClassToken(layers.Layer):
    """Prepends one learned `[dim]` token to `[batch, time, dim]` inputs (ViT's class token)."""

    def __init__(self, initializer, **kwargs):
        super().__init__(**kwargs)
        self.initializer = initializer

    def build(self, input_shape):
        self.token = self.add_weight(shape=(1, 1, input_shape[-1]), initializer=self.initializer,
                                     name="token")

    def call(self, x):
        token = ops.broadcast_to(self.token, (ops.shape(x)[0], 1, x.shape[-1]))
        return ops.concatenate([ops.cast(token, x.dtype), x], axis=1)


class GaussianSample(layers.Layer):
    """VAE reparameterisation: `[mean, log_variance]` -> `mean + exp(log_variance / 2) * noise`.

    The noise comes from a `keras.random.SeedGenerator` seeded by the config,
    so runs repeat exactly.
    """

    def __init__(self, seed, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs):
        mean, log_variance = inputs
        noise = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * log_variance) * noise
