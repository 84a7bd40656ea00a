"""Image MLP family: flatten -> [Dense -> (LayerNorm) -> activation] x depth -> Dense(classes).

Reads images (Fashion-MNIST, digits, resized to 8/16/28) or MNIST-1D vectors.
Samples depth 1-3, widths 32-256, activation, initializer, normalization,
batch size and loss (cross-entropy or squared error on one-hot logits).
"""

import dataclasses

import keras
from keras import layers

from task_families import datasets, layers as blocks, losses
from task_families.batches import ArrayData
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.task import Task

NAME = "image_mlp"
IMAGE_SIZES = (8, 16, 28)


@dataclasses.dataclass(frozen=True)
class ImageMLPConfig(TaskConfig):
    family = NAME

    image_size: int | None = 8  # None for vector datasets (mnist1d)
    hidden_sizes: tuple = (64,)
    activation: str = "relu"
    initializer: str = "glorot_uniform"
    normalization: str = "none"  # "none" or "layer"
    loss: str = "cross_entropy"

    def modalities(self):
        return ("image", "vector")

    def validate(self):
        info = datasets.dataset_info(self.dataset)
        if info.modality == "vector" and self.image_size is not None:
            raise ValueError(f"ImageMLPConfig: {self.dataset} is a vector dataset; image_size must be None.")
        if info.modality == "image":
            check_positive_ints(self, "image_size")
        check_positive_ints(self, "hidden_sizes")
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "normalization", ("none", "layer"))
        check_choice(self, "loss", losses.CLASSIFICATION_LOSSES)

    def input_size(self):
        info = datasets.dataset_info(self.dataset)
        return info.native_size if self.image_size is None else self.image_size**2

    def forward_flops(self):
        sizes = (self.input_size(), *self.hidden_sizes, datasets.dataset_info(self.dataset).num_classes)
        return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("fashion_mnist", "fashion_mnist", "digits", "mnist1d"))
    image_size = None if dataset == "mnist1d" else pick(rng, IMAGE_SIZES if dataset == "fashion_mnist" else (8, 16))
    depth = int(rng.integers(1, 4))
    return ImageMLPConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64, 128)),
        init_seed=int(seed),
        image_size=image_size,
        hidden_sizes=tuple(pick(rng, (32, 64, 128, 256)) for _ in range(depth)),
        activation=pick(rng, blocks.ACTIVATIONS),
        initializer=pick(rng, blocks.INITIALIZERS),
        normalization=pick(rng, ("none", "layer")),
        loss=pick(rng, ("cross_entropy", "cross_entropy", "cross_entropy", "squared_error")),
    )


def smallest():
    return ImageMLPConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, hidden_sizes=(16,))


def classification_data(config, channels=1, padding=0):
    """`(ArrayData, rescaling layer)` for an image or vector classification config."""
    info = datasets.dataset_info(config.dataset)
    if info.modality == "vector":
        x_train, y_train = datasets.load_vectors(config.dataset, "train")
        x_eval, y_eval = datasets.load_vectors(config.dataset, "test")
    else:
        x_train, y_train = datasets.load_images(config.dataset, "train", config.image_size, channels, padding)
        x_eval, y_eval = datasets.load_images(config.dataset, "test", config.image_size, channels, padding)
    mean, std = float(x_train.mean()), float(x_train.std()) + 1e-6
    standardise = layers.Rescaling(1.0 / std, offset=-mean / std, name="standardise")
    return ArrayData(x_train, y_train, x_eval, y_eval), standardise


def build(config):
    data, standardise = classification_data(config)
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    inputs = keras.Input(data.x_train.shape[1:])
    x = layers.Flatten()(standardise(inputs))
    for width in config.hidden_sizes:
        x = layers.Dense(width, kernel_initializer=init())(x)
        x = blocks.apply_normalization(config.normalization, x)
        x = layers.Activation(config.activation)(x)
    num_classes = datasets.dataset_info(config.dataset).num_classes
    logits = layers.Dense(num_classes, kernel_initializer=init())(x)
    model = keras.Model(inputs, logits, name=NAME)
    return Task(config, model, losses.classification_loss(config.loss, num_classes), data, metrics=["accuracy"])


FAMILY = TaskFamily(NAME, ImageMLPConfig, sample, build, smallest, __doc__.splitlines()[0])
