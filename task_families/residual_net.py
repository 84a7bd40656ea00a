"""Branch-normalised residual convnets: stem conv -> blocks `x + norm(conv(act(norm(conv(x)))))` -> Dense.

The residual layout many hand-written Keras models use, and one where
relative steps compound: the normalisation sits inside each residual
branch (He et al., 2016, v1, after each convolution), the residual stream
itself is never normalised, and nothing is normalised before the head
(global average -> Dense). Optionally an activation after each addition
(v1's `act(x + branch)`) and one stride-2 stage that doubles the width
halfway through. Greyscale Fashion-MNIST at 8/16 pixels or digits at 8.
Samples depth 2-16 blocks, width 8-32, BatchNorm, LayerNorm or none,
activation, initializer and batch size.
"""

import dataclasses

import keras
from keras import layers

from task_families import datasets, layers as blocks, losses
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.image_mlp import classification_data
from task_families.task import Task

NAME = "residual_net"


@dataclasses.dataclass(frozen=True)
class ResidualNetConfig(TaskConfig):
    family = NAME

    image_size: int = 8
    width: int = 8
    num_blocks: int = 2
    downsample: bool = False  # a stride-2 block doubling the width at num_blocks // 2
    post_activation: bool = False  # act(x + branch) instead of x + branch
    activation: str = "relu"
    initializer: str = "he_normal"
    normalization: str = "batch"
    loss: str = "cross_entropy"

    def modalities(self):
        return ("image",)

    def validate(self):
        check_positive_ints(self, "image_size", "width", "num_blocks")
        check_choice(self, "downsample", (False, True))
        check_choice(self, "post_activation", (False, True))
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "normalization", blocks.NORMALIZATIONS)
        check_choice(self, "loss", losses.CLASSIFICATION_LOSSES)

    def stages(self):
        """`[(blocks, width, first stride)]`: one stage, or two split at `num_blocks // 2`."""
        if not self.downsample or self.num_blocks < 2:
            return [(self.num_blocks, self.width, 1)]
        first = self.num_blocks // 2
        return [(first, self.width, 1), (self.num_blocks - first, 2 * self.width, 2)]

    def forward_flops(self):
        size = self.image_size
        flops = 2 * size * size * 9 * self.width
        width_in = self.width
        for count, width, stride in self.stages():
            if stride == 2:
                size = (size + 1) // 2
                flops += 2 * size * size * width_in * width  # 1x1 projection
            flops += count * 2 * (2 * size * size * 9 * width * width)
            width_in = width
        return flops + 2 * width_in * datasets.dataset_info(self.dataset).num_classes


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("digits", "fashion_mnist", "fashion_mnist"))
    return ResidualNetConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64)),
        init_seed=int(seed),
        image_size=pick(rng, (8, 16)) if dataset == "fashion_mnist" else 8,
        width=pick(rng, (8, 16, 32)),
        num_blocks=int(round(2 ** rng.uniform(1, 4))),  # 2-16, log-uniform
        downsample=bool(rng.integers(2)),
        post_activation=bool(rng.integers(2)),
        activation=pick(rng, ("relu", "relu", "silu", "gelu")),
        initializer=pick(rng, ("he_normal", "he_normal", "glorot_uniform")),
        normalization=pick(rng, ("batch", "batch", "layer", "none")),
    )


def smallest():
    # LayerNorm: with BatchNorm, 40 steps leave the moving statistics that
    # inference-mode evaluation uses far from the batch statistics.
    return ResidualNetConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, width=8,
                             num_blocks=2, normalization="layer")


def _block(x, width, stride, config, init):
    shortcut = x
    if stride != 1 or x.shape[-1] != width:
        shortcut = layers.Conv2D(width, 1, strides=stride, kernel_initializer=init())(x)
    h = layers.Conv2D(width, 3, strides=stride, padding="same", kernel_initializer=init())(x)
    h = blocks.apply_normalization(config.normalization, h)
    h = layers.Activation(config.activation)(h)
    h = layers.Conv2D(width, 3, padding="same", kernel_initializer=init())(h)
    h = blocks.apply_normalization(config.normalization, h)
    x = layers.Add()([shortcut, h])
    return layers.Activation(config.activation)(x) if config.post_activation else x


def build(config):
    data, standardise = classification_data(config)
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    inputs = keras.Input(data.x_train.shape[1:])
    x = layers.Conv2D(config.width, 3, padding="same", kernel_initializer=init())(standardise(inputs))
    for count, width, stride in config.stages():
        for block in range(count):
            x = _block(x, width, stride if block == 0 else 1, config, init)
    x = layers.GlobalAveragePooling2D()(x)  # no normalisation before the head
    num_classes = datasets.dataset_info(config.dataset).num_classes
    logits = layers.Dense(num_classes, kernel_initializer=init("glorot_uniform"))(x)
    model = keras.Model(inputs, logits, name=NAME)
    return Task(config, model, losses.classification_loss(config.loss, num_classes), data, metrics=["accuracy"])


FAMILY = TaskFamily(NAME, ResidualNetConfig, sample, build, smallest, __doc__.splitlines()[0])
