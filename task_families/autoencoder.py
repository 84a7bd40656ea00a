"""Autoencoder family: flatten -> Dense encoder -> bottleneck -> mirrored decoder -> pixel logits.

Reconstructs Fashion-MNIST or digits images (8/16/28 pixels, in [0, 1])
under sigmoid cross-entropy or squared error. Samples encoder depth 1-2,
widths 32-256, bottleneck 8-32, activation, initializer and batch size.
"""

import dataclasses

import keras
from keras import layers

from task_families import datasets, layers as blocks, losses
from task_families.batches import ArrayData
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.task import Task

NAME = "autoencoder"


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig(TaskConfig):
    family = NAME

    image_size: int = 8
    encoder_sizes: tuple = (32,)
    bottleneck: int = 8
    activation: str = "relu"
    initializer: str = "glorot_uniform"
    loss: str = "sigmoid_cross_entropy"

    def modalities(self):
        return ("image",)

    def validate(self):
        check_positive_ints(self, "image_size", "encoder_sizes", "bottleneck")
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "loss", losses.RECONSTRUCTION_LOSSES)

    def forward_flops(self):
        pixels = self.image_size**2
        sizes = (pixels, *self.encoder_sizes, self.bottleneck, *reversed(self.encoder_sizes), pixels)
        return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("fashion_mnist", "fashion_mnist", "digits"))
    depth = int(rng.integers(1, 3))
    return AutoencoderConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64, 128)),
        init_seed=int(seed),
        image_size=pick(rng, (8, 16, 28) if dataset == "fashion_mnist" else (8, 16)),
        encoder_sizes=tuple(sorted((pick(rng, (32, 64, 128, 256)) for _ in range(depth)), reverse=True)),
        bottleneck=pick(rng, (8, 16, 32)),
        activation=pick(rng, blocks.ACTIVATIONS),
        initializer=pick(rng, blocks.INITIALIZERS),
        loss=pick(rng, losses.RECONSTRUCTION_LOSSES),
    )


def smallest():
    return AutoencoderConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, encoder_sizes=(16,))


def reconstruction_data(config):
    """ArrayData with `x = images [n, s, s, 1]` and `y` the same pixels flattened `[n, s*s]`."""
    x_train, _ = datasets.load_images(config.dataset, "train", config.image_size, 1)
    x_eval, _ = datasets.load_images(config.dataset, "test", config.image_size, 1)
    return ArrayData(x_train, x_train.reshape(len(x_train), -1), x_eval, x_eval.reshape(len(x_eval), -1))


def encoder(x, config, init):
    x = layers.Flatten()(x)
    for width in config.encoder_sizes:
        x = layers.Dense(width, activation=config.activation, kernel_initializer=init())(x)
    return x


def decoder(z, config, init):
    for width in reversed(config.encoder_sizes):
        z = layers.Dense(width, activation=config.activation, kernel_initializer=init())(z)
    return layers.Dense(config.image_size**2, kernel_initializer=init())(z)


def build(config):
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    images = keras.Input((config.image_size, config.image_size, 1))
    code = layers.Dense(config.bottleneck, kernel_initializer=init())(encoder(images, config, init))
    model = keras.Model(images, decoder(code, config, init), name=NAME)
    return Task(config, model, losses.reconstruction_loss(config.loss), reconstruction_data(config))


FAMILY = TaskFamily(NAME, AutoencoderConfig, sample, build, smallest, __doc__.splitlines()[0])
