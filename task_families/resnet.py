"""ResNet family: conv stem -> stages of pre-activation residual blocks -> global average -> Dense.

He et al. (2016) v2 blocks `x + conv(act(norm(conv(act(norm(x))))))`; every
stage after the first halves the resolution and doubles the width (1x1
projection on the shortcut). Reads colourised (3-channel) Fashion-MNIST or
digits at 8/16/28 pixels, optionally padded to 32. Samples stages 1-3,
blocks per stage 1-2, base width 8-32, normalization, activation.
"""

import dataclasses

import keras
from keras import layers

from task_families import datasets, layers as blocks, losses
from task_families.config import TaskConfig, check_choice, check_non_negative_int, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.image_mlp import classification_data
from task_families.task import Task

NAME = "resnet"


@dataclasses.dataclass(frozen=True)
class ResNetConfig(TaskConfig):
    family = NAME

    image_size: int = 8
    padding: int = 0
    base_width: int = 8
    num_stages: int = 1
    blocks_per_stage: int = 1
    activation: str = "relu"
    initializer: str = "he_normal"
    normalization: str = "batch"
    loss: str = "cross_entropy"

    def modalities(self):
        return ("image",)

    def validate(self):
        check_positive_ints(self, "image_size", "base_width", "num_stages", "blocks_per_stage")
        check_non_negative_int(self, "padding")
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "normalization", blocks.NORMALIZATIONS)
        check_choice(self, "loss", losses.CLASSIFICATION_LOSSES)

    def forward_flops(self):
        size = self.image_size + 2 * self.padding
        flops = 2 * size * size * 9 * 3 * self.base_width
        width = self.base_width
        for stage in range(self.num_stages):
            if stage > 0:
                size = (size + 1) // 2
                flops += 2 * size * size * width * 2 * width  # projection
                width *= 2
            flops += self.blocks_per_stage * 2 * (2 * size * size * 9 * width * width)
        return flops + 2 * width * datasets.dataset_info(self.dataset).num_classes


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("fashion_mnist", "fashion_mnist", "digits"))
    return ResNetConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64, 128)),
        init_seed=int(seed),
        image_size=pick(rng, (8, 16, 28) if dataset == "fashion_mnist" else (8, 16)),
        padding=pick(rng, (0, 2)),
        base_width=pick(rng, (8, 16, 32)),
        num_stages=int(rng.integers(1, 4)),
        blocks_per_stage=int(rng.integers(1, 3)),
        activation=pick(rng, ("relu", "relu", "silu", "gelu")),
        initializer=pick(rng, ("he_normal", "he_normal", "glorot_uniform")),
        normalization=pick(rng, ("batch", "batch", "layer", "none")),
    )


def smallest():
    return ResNetConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, base_width=8)


def _residual_block(x, width, stride, config, init):
    shortcut = x
    x = blocks.apply_normalization(config.normalization, x)
    x = layers.Activation(config.activation)(x)
    if stride != 1 or shortcut.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, kernel_initializer=init())(x)
    x = layers.Conv2D(width, 3, strides=stride, padding="same", kernel_initializer=init())(x)
    x = blocks.apply_normalization(config.normalization, x)
    x = layers.Activation(config.activation)(x)
    x = layers.Conv2D(width, 3, padding="same", kernel_initializer=init())(x)
    return layers.Add()([shortcut, x])


def build(config):
    data, standardise = classification_data(config, channels=3, padding=config.padding)
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    inputs = keras.Input(data.x_train.shape[1:])
    x = layers.Conv2D(config.base_width, 3, padding="same", kernel_initializer=init())(standardise(inputs))
    width = config.base_width
    for stage in range(config.num_stages):
        if stage > 0:
            width *= 2
        for block in range(config.blocks_per_stage):
            stride = 2 if stage > 0 and block == 0 else 1
            x = _residual_block(x, width, stride, config, init)
    x = blocks.apply_normalization(config.normalization, x)
    x = layers.Activation(config.activation)(x)
    x = layers.GlobalAveragePooling2D()(x)
    num_classes = datasets.dataset_info(config.dataset).num_classes
    logits = layers.Dense(num_classes, kernel_initializer=init("glorot_uniform"))(x)
    model = keras.Model(inputs, logits, name=NAME)
    return Task(config, model, losses.classification_loss(config.loss, num_classes), data, metrics=["accuracy"])


FAMILY = TaskFamily(NAME, ResNetConfig, sample, build, smallest, __doc__.splitlines()[0])
