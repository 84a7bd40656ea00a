"""VAE family: Dense encoder -> Gaussian latent (reparameterised) -> Dense decoder -> Bernoulli pixels.

Kingma & Welling (2014). The loss is the negative ELBO per pixel: summed
binary cross-entropy of the reconstruction plus the KL divergence of the
posterior from N(0, I), divided by the pixel count. Reads Fashion-MNIST or
digits (8/16/28 pixels). Samples encoder depth and widths, latent size 2-32,
activation, initializer and batch size. The ELBO is a one-sample estimate
(fresh noise from a seeded generator at every call), so repeated
evaluations of the same weights differ slightly.
"""

import dataclasses

import keras
from keras import layers, ops

from task_families import layers as blocks, losses
from task_families.autoencoder import decoder, encoder, reconstruction_data
from task_families.config import TaskConfig, check_choice, check_positive_ints
from task_families.family import TaskFamily, family_rng, pick
from task_families.task import Task

NAME = "vae"


@dataclasses.dataclass(frozen=True)
class VAEConfig(TaskConfig):
    family = NAME

    image_size: int = 8
    encoder_sizes: tuple = (32,)
    latent_dim: int = 4
    activation: str = "relu"
    initializer: str = "glorot_uniform"

    def modalities(self):
        return ("image",)

    def validate(self):
        check_positive_ints(self, "image_size", "encoder_sizes", "latent_dim")
        check_choice(self, "activation", blocks.ALL_ACTIVATIONS)
        check_choice(self, "initializer", blocks.INITIALIZERS)

    def forward_flops(self):
        pixels = self.image_size**2
        enc = (pixels, *self.encoder_sizes)
        dec = (self.latent_dim, *reversed(self.encoder_sizes), pixels)
        flops = sum(2 * a * b for s in (enc, dec) for a, b in zip(s[:-1], s[1:]))
        return flops + 2 * self.encoder_sizes[-1] * 2 * self.latent_dim


def sample(seed):
    rng = family_rng(NAME, seed)
    dataset = pick(rng, ("fashion_mnist", "fashion_mnist", "digits"))
    depth = int(rng.integers(1, 3))
    return VAEConfig(
        dataset=dataset,
        batch_size=pick(rng, (32, 64, 128)),
        init_seed=int(seed),
        image_size=pick(rng, (8, 16, 28) if dataset == "fashion_mnist" else (8, 16)),
        encoder_sizes=tuple(sorted((pick(rng, (32, 64, 128, 256)) for _ in range(depth)), reverse=True)),
        latent_dim=pick(rng, (2, 4, 8, 16, 32)),
        activation=pick(rng, blocks.ACTIVATIONS),
        initializer=pick(rng, blocks.INITIALIZERS),
    )


def smallest():
    return VAEConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, encoder_sizes=(16,))


class _KLDivergence(layers.Layer):
    """Per-example KL(N(mean, exp(log_variance)) || N(0, I)), shape `[batch, 1]`."""

    def call(self, inputs):
        mean, log_variance = inputs
        kl = 0.5 * ops.sum(ops.exp(log_variance) + ops.square(mean) - 1.0 - log_variance, axis=-1)
        return ops.expand_dims(kl, -1)


def build(config):
    init = blocks.SeededInitializers(config.init_seed, config.initializer)
    images = keras.Input((config.image_size, config.image_size, 1))
    hidden = encoder(images, config, init)
    mean = layers.Dense(config.latent_dim, kernel_initializer=init())(hidden)
    log_variance = layers.Dense(config.latent_dim, kernel_initializer=init())(hidden)
    z = blocks.GaussianSample(seed=config.init_seed)([mean, log_variance])
    logits = decoder(z, config, init)
    outputs = layers.Concatenate()([logits, _KLDivergence()([mean, log_variance])])
    model = keras.Model(images, outputs, name=NAME)
    return Task(config, model, losses.NegativeELBO(), reconstruction_data(config))


FAMILY = TaskFamily(NAME, VAEConfig, sample, build, smallest, __doc__.splitlines()[0])
