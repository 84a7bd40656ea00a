"""Tabular family: standardised features -> [Dense -> (norm) -> activation] x depth -> Dense.

Small MLPs on scikit-learn's bundled tables: classification (breast cancer,
wine) with cross-entropy, or regression (diabetes, and `friedman1`
generated offline) with the mean squared error of a standardised target.
`iris` and `friedman2` are accepted but never sampled (out-of-distribution
meta-validation uses them). Samples depth 1-4, widths 16-256, activation, initializer,
normalization (none, LayerNorm, BatchNorm) and batch size.
"""

import dataclasses

import keras
from keras import layers, ops

from task_families import datasets, layers as blocks, losses
from task_families.batches import ArrayData
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.task import Task

NAME = "tabular"
SAMPLED_DATASETS = ("breast_cancer", "wine", "diabetes", "friedman1")


@dataclasses.dataclass(frozen=True)
class TabularConfig(TaskConfig):
    family = NAME

    hidden_sizes: tuple = (32,)
    activation: str = "relu"
    initializer: str = "glorot_uniform"
    normalization: str = "none"

    def modalities(self):
        return ("table",)

    def validate(self):
        check_positive_ints(self, "hidden_sizes")
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)
        check_choice(self, "normalization", blocks.NORMALIZATIONS)

    def outputs(self):
        return datasets.dataset_info(self.dataset).num_classes or 1

    def forward_flops(self):
        sizes = (datasets.dataset_info(self.dataset).native_size, *self.hidden_sizes, self.outputs())
        return sum(2 * a * b for a, b in zip(sizes[:-1], sizes[1:]))


def sample(seed):
    rng = family_rng(NAME, seed)
    depth = int(rng.integers(1, 5))
    return TabularConfig(
        dataset=pick(rng, SAMPLED_DATASETS),
        batch_size=pick(rng, (16, 32, 64)),
        init_seed=int(seed),
        hidden_sizes=tuple(pick(rng, (16, 32, 64, 128, 256)) for _ in range(depth)),
        activation=pick(rng, blocks.ACTIVATIONS),
        initializer=pick(rng, blocks.INITIALIZERS),
        normalization=pick(rng, ("none", "none", "layer", "batch")),
    )


def smallest():
    return TabularConfig(dataset="wine", batch_size=16, init_seed=0, hidden_sizes=(16,))


class MeanSquaredError(keras.losses.Loss):
    """`mean((prediction - target)^2)` on `[batch, 1]` standardised targets."""

    def __init__(self, name="mean_squared_error", **kwargs):
        super().__init__(name=name, **kwargs)

    def call(self, y_true, y_pred):
        return ops.mean(ops.square(y_pred - ops.cast(y_true, y_pred.dtype)), axis=-1)


def build(config):
    x_train, y_train = datasets.load_table(config.dataset, "train")
    x_eval, y_eval = datasets.load_table(config.dataset, "test")
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    inputs = keras.Input(x_train.shape[1:])
    x = inputs
    for width in config.hidden_sizes:
        x = layers.Dense(width, kernel_initializer=init())(x)
        x = blocks.apply_normalization(config.normalization, x)
        x = layers.Activation(config.activation)(x)
    num_classes = datasets.dataset_info(config.dataset).num_classes
    outputs = layers.Dense(config.outputs(), kernel_initializer=init())(x)
    model = keras.Model(inputs, outputs, name=NAME)
    if num_classes:
        loss, metrics = losses.classification_loss("cross_entropy", num_classes), ["accuracy"]
    else:
        loss, metrics = MeanSquaredError(), []
    data = ArrayData(x_train, y_train, x_eval, y_eval)
    return Task(config, model, loss, data, metrics=metrics, eval_batch_size=64)


FAMILY = TaskFamily(NAME, TabularConfig, sample, build, smallest, __doc__.splitlines()[0])
