"""GPT-style language-model family: the Transformer LM with either norm placement, and deeper.

The same model as `task_families.transformer_lm` (byte embedding + learned
positions -> causal blocks -> bytes) over a wider space: blocks
pre-normalised as in GPT-2 (`x + f(LN(x))`, a final LayerNorm before the
output layer) or post-normalised as in the original Transformer
(`LN(x + f(x))`, no final LayerNorm), depth 1-4, width 32-96. It is its own
family so that `transformer_lm`'s samples (and the canonical and
meta-validation tasks drawn from them) stay as they were.
"""

import dataclasses

from task_families.family import TaskFamily, family_rng, pick
from task_families.transformer_lm import TransformerLMConfig, build

NAME = "gpt_lm"


@dataclasses.dataclass(frozen=True)
class GPTLMConfig(TransformerLMConfig):
    family = NAME


def sample(seed):
    rng = family_rng(NAME, seed)
    model_dim = pick(rng, (32, 48, 64, 96))
    return GPTLMConfig(
        dataset="python_stdlib",
        batch_size=pick(rng, (16, 32)),
        init_seed=int(seed),
        sequence_length=pick(rng, (32, 64)),
        model_dim=model_dim,
        num_heads=pick(rng, tuple(h for h in (1, 2, 4) if model_dim % h == 0)),
        num_layers=int(rng.integers(1, 5)),
        mlp_ratio=pick(rng, (2, 4)),
        activation=pick(rng, ("gelu", "gelu", "relu", "silu")),
        initializer=pick(rng, ("glorot_uniform", "lecun_normal", "glorot_normal")),
        norm_position=pick(rng, ("pre", "post")),
    )


def smallest():
    return GPTLMConfig(dataset="python_stdlib", batch_size=8, init_seed=0, sequence_length=16,
                       model_dim=16, num_heads=2, num_layers=2, norm_position="post")


FAMILY = TaskFamily(NAME, GPTLMConfig, sample, build, smallest, __doc__.splitlines()[0])
