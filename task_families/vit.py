"""Vision Transformer family: patches -> learned positions -> self-attention blocks -> Dense(classes).

Dosovitskiy et al. (2021): the image is cut into `patch_size` squares, each
projected to `model_dim` (a strided convolution), a learned class token is
prepended (or the patches are mean-pooled at the end), learned positions
are added, and `num_layers` blocks of (non-causal) multi-head
self-attention and an MLP follow, pre-normalised (`x + f(LN(x))`, a final
LayerNorm before the head: ViT's layout) or post-normalised
(`LN(x + f(x))`). Reads Fashion-MNIST at 16/28 pixels or digits at 8.
Samples patch size, width 32-64, heads, depth 1-4, MLP ratio, norm
placement, pooling, activation, initializer and batch size.
"""

import dataclasses

import keras
from keras import layers

from task_families import datasets, layers as blocks, losses
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.image_mlp import classification_data
from task_families.task import Task
from task_families.transformer_lm import NORM_POSITIONS, transformer_block

NAME = "vit"
POOLS = ("class_token", "mean")


@dataclasses.dataclass(frozen=True)
class ViTConfig(TaskConfig):
    family = NAME

    image_size: int = 8
    patch_size: int = 4
    model_dim: int = 32
    num_heads: int = 2
    num_layers: int = 1
    mlp_ratio: int = 2
    norm_position: str = "pre"
    pool: str = "class_token"
    activation: str = "gelu"
    initializer: str = "glorot_uniform"
    loss: str = "cross_entropy"

    def modalities(self):
        return ("image",)

    def validate(self):
        check_positive_ints(self, "image_size", "patch_size", "model_dim", "num_heads", "num_layers",
                            "mlp_ratio")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig: image_size {self.image_size} must be a multiple of patch_size {self.patch_size}."
            )
        if self.model_dim % self.num_heads:
            raise ValueError(
                f"ViTConfig: model_dim {self.model_dim} must be divisible by num_heads {self.num_heads}."
            )
        check_choice(self, "norm_position", NORM_POSITIONS)
        check_choice(self, "pool", POOLS)
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "loss", losses.CLASSIFICATION_LOSSES)

    def sequence_length(self):
        return (self.image_size // self.patch_size) ** 2 + (self.pool == "class_token")

    def forward_flops(self):
        d, t = self.model_dim, self.sequence_length()
        patches = 2 * (t - (self.pool == "class_token")) * self.patch_size**2 * d
        per_token_block = 2 * 4 * d * d + 2 * 2 * d * self.mlp_ratio * d + 2 * 2 * t * d
        return patches + t * self.num_layers * per_token_block + 2 * d * datasets.dataset_info(
            self.dataset).num_classes


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("fashion_mnist", "fashion_mnist", "digits"))
    image_size = pick(rng, (16, 28)) if dataset == "fashion_mnist" else 8
    patch_size = pick(rng, {8: (2, 4), 16: (4, 8), 28: (4, 7)}[image_size])
    model_dim = pick(rng, (32, 64))
    return ViTConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64)),
        init_seed=int(seed),
        image_size=image_size,
        patch_size=patch_size,
        model_dim=model_dim,
        num_heads=pick(rng, (1, 2, 4)),
        num_layers=int(rng.integers(1, 5)),
        mlp_ratio=pick(rng, (2, 4)),
        norm_position=pick(rng, NORM_POSITIONS),
        pool=pick(rng, POOLS),
        activation=pick(rng, ("gelu", "gelu", "relu", "silu")),
        initializer=pick(rng, ("glorot_uniform", "lecun_normal", "glorot_normal")),
    )


def smallest():
    return ViTConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, patch_size=4,
                     model_dim=16, num_heads=2, num_layers=1)


def build(config):
    data, standardise = classification_data(config)
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    inputs = keras.Input(data.x_train.shape[1:])
    x = layers.Conv2D(config.model_dim, config.patch_size, strides=config.patch_size,
                      kernel_initializer=init())(standardise(inputs))
    x = layers.Reshape((-1, config.model_dim))(x)
    if config.pool == "class_token":
        x = blocks.ClassToken("zeros")(x)
    x = blocks.PositionEmbedding(config.sequence_length(), init("random_normal"))(x)
    for _ in range(config.num_layers):
        x = transformer_block(x, blocks.SelfAttention(config.num_heads, init), config, init)
    if config.norm_position == "pre":
        x = layers.LayerNormalization()(x)
    x = x[:, 0] if config.pool == "class_token" else layers.GlobalAveragePooling1D()(x)
    num_classes = datasets.dataset_info(config.dataset).num_classes
    logits = layers.Dense(num_classes, kernel_initializer=init())(x)
    model = keras.Model(inputs, logits, name=NAME)
    return Task(config, model, losses.classification_loss(config.loss, num_classes), data, metrics=["accuracy"])


FAMILY = TaskFamily(NAME, ViTConfig, sample, build, smallest, __doc__.splitlines()[0])
