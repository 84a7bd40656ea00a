"""Image CNN family: [Conv -> (norm) -> activation -> (pool)] x depth -> global average -> Dense.

Reads Fashion-MNIST or digits at 8/16/28 pixels, greyscale or colourised to
3 channels (optionally zero-padded by 2, the 28 -> 32 "CIFAR-shaped" view).
Samples depth 1-3, channels 8-64, kernel 3 or 5, pooling, normalization,
activation, initializer and batch size.
"""

import dataclasses

import keras
from keras import layers

from task_families import datasets, layers as blocks, losses
from task_families.config import TaskConfig, check_choice, check_non_negative_int, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.image_mlp import classification_data
from task_families.task import Task

NAME = "image_cnn"
POOLINGS = ("max", "average", "none")


@dataclasses.dataclass(frozen=True)
class ImageCNNConfig(TaskConfig):
    family = NAME

    image_size: int = 8
    channels: int = 1  # 1 = greyscale, 3 = colourised
    padding: int = 0
    conv_channels: tuple = (16,)
    kernel_size: int = 3
    pooling: str = "max"  # after each conv while the map is >= 4 pixels
    activation: str = "relu"
    initializer: str = "he_normal"
    normalization: str = "none"
    loss: str = "cross_entropy"

    def modalities(self):
        return ("image",)

    def validate(self):
        check_positive_ints(self, "image_size", "conv_channels", "kernel_size")
        check_choice(self, "channels", (1, 3))
        check_non_negative_int(self, "padding")
        check_choice(self, "pooling", POOLINGS)
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "normalization", blocks.NORMALIZATIONS)
        check_choice(self, "loss", losses.CLASSIFICATION_LOSSES)

    def forward_flops(self):
        size, channels_in, flops = self.image_size + 2 * self.padding, self.channels, 0
        for channels_out in self.conv_channels:
            flops += 2 * size * size * self.kernel_size**2 * channels_in * channels_out
            channels_in = channels_out
            if self.pooling != "none" and size >= 4:
                size //= 2
        return flops + 2 * channels_in * datasets.dataset_info(self.dataset).num_classes


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("fashion_mnist", "fashion_mnist", "digits"))
    channels = pick(rng, (1, 1, 3))
    depth = int(rng.integers(1, 4))
    return ImageCNNConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64, 128)),
        init_seed=int(seed),
        image_size=pick(rng, (8, 16, 28) if dataset == "fashion_mnist" else (8, 16)),
        channels=channels,
        padding=pick(rng, (0, 2)) if channels == 3 else 0,
        conv_channels=tuple(pick(rng, (8, 16, 32, 64)) for _ in range(depth)),
        kernel_size=pick(rng, (3, 3, 5)),
        pooling=pick(rng, POOLINGS),
        activation=pick(rng, blocks.ACTIVATIONS),
        initializer=pick(rng, blocks.INITIALIZERS),
        normalization=pick(rng, blocks.NORMALIZATIONS),
    )


def smallest():
    return ImageCNNConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, conv_channels=(8,))


def build(config):
    data, standardise = classification_data(config, config.channels, config.padding)
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    inputs = keras.Input(data.x_train.shape[1:])
    x, size = standardise(inputs), data.x_train.shape[1]
    for width in config.conv_channels:
        x = layers.Conv2D(width, config.kernel_size, padding="same", kernel_initializer=init())(x)
        x = blocks.apply_normalization(config.normalization, x)
        x = layers.Activation(config.activation)(x)
        if config.pooling != "none" and size >= 4:
            x = (layers.MaxPooling2D if config.pooling == "max" else layers.AveragePooling2D)(2)(x)
            size //= 2
    x = layers.GlobalAveragePooling2D()(x)
    num_classes = datasets.dataset_info(config.dataset).num_classes
    logits = layers.Dense(num_classes, kernel_initializer=init("glorot_uniform"))(x)
    model = keras.Model(inputs, logits, name=NAME)
    return Task(config, model, losses.classification_loss(config.loss, num_classes), data, metrics=["accuracy"])


FAMILY = TaskFamily(NAME, ImageCNNConfig, sample, build, smallest, __doc__.splitlines()[0])
