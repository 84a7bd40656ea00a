"""The family registry and the entry points built on it."""

from task_families import (
    autoencoder,
    gpt_lm,
    image_cnn,
    image_mlp,
    residual_net,
    resnet,
    rnn_lm,
    tabular,
    transformer_lm,
    vae,
    vit,
)
from task_families.config import TaskConfig

FAMILIES = {
    module.FAMILY.name: module.FAMILY
    for module in (image_mlp, image_cnn, resnet, transformer_lm, rnn_lm, autoencoder, vae,
                   residual_net, vit, gpt_lm, tabular)
}
# The seven families of the first suites (canonical-cpu-v1, cpu-valid-v1); the
# last four (branch-normalised residual nets, ViTs, GPT-style LMs with either
# norm placement, tables) widen meta-training to where unseen models broke.
FIRST_FAMILIES = ("image_mlp", "image_cnn", "resnet", "transformer_lm", "rnn_lm", "autoencoder", "vae")


def family_of(config):
    name = config.get("family") if isinstance(config, dict) else getattr(config, "family", None)
    if name not in FAMILIES:
        raise ValueError(f"Unknown task family {name!r}; known families: {sorted(FAMILIES)}.")
    return FAMILIES[name]


def config_from_dict(data):
    """Rebuild a config from `config.to_dict()` output, choosing the class by `data["family"]`."""
    return family_of(data).config_type.from_dict(data)


def build_task(config):
    """Build the Keras model, loss and data of `config` (a `TaskConfig` or its dict)."""
    if isinstance(config, dict):
        config = config_from_dict(config)
    if not isinstance(config, TaskConfig):
        raise TypeError(f"build_task expects a TaskConfig or its dict, got {type(config).__name__}.")
    return family_of(config).build(config)


def sample_within_budget(family, seed, max_flops_per_step, max_tries=100):
    """Sample `family` from `seed`, rejecting configs whose `flops_per_step()` exceeds the budget.

    As VeLO's meta-training rejected samples by estimated run time. Try `k`
    uses sample seed `seed * max_tries + k`, so the result is deterministic.
    """
    sampler = FAMILIES[family].sample if isinstance(family, str) else family.sample
    for attempt in range(max_tries):
        config = sampler(seed * max_tries + attempt)
        if config.flops_per_step() <= max_flops_per_step:
            return config
    raise ValueError(
        f"No {family} config within {max_flops_per_step:.3g} FLOPs per step in {max_tries} tries; "
        "raise the budget or max_tries."
    )
