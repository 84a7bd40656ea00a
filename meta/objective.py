"""What meta-training minimises: the per-step meta-loss of an inner run, and the weights of members.

The area under the loss curve (every step's normalised loss alike, what
meta-training optimised until now) rewards fast early progress; users
measure the end of training, and that a learned optimizer does not end
above Adam. A `MetaObjective` weighs both. For one inner run of horizon T
whose step t has normalised training loss `l_t` (`loss / initial loss`,
clipped to [0, max_ratio]; `meta.estimators.normalised_loss`) and, where
known, a reference Adam(1e-3) run of the same task with normalised loss
`a_t`, the episode's objective is

    J = (1 - final_share) * mean_t l_t
        + final_share * mean_{t in final} l_t
        + adam_penalty * mean_{t in final} max(0, l_t - a_t)

`final` being the last `final_fraction` of the steps (the span
meta-validation's `final` averages). J is the mean over the episode's steps of
per-step terms (`step_meta_losses`); a truncation's meta-loss is the mean
of its steps' terms, so Persistent ES over truncations stays unbiased for
J (up to the constant T / K), and full-unroll ES and truncated backprop
differentiate the same terms.

Across the members of one iteration, `tail_weight` beta adds a
conditional-value-at-risk term: the members whose runs do worst against
Adam (the highest mean `l_t` over the truncation relative to Adam's, or
the highest `l_t` without references) are weighted `1 + beta / tail_fraction`, the
others 1, normalised to mean 1 (`member_weights`), so the estimate is the
gradient of `mean_m J_m + beta * CVaR_q(J)` with the tail held fixed.

The default objective (`MetaObjective()`) is the area under the curve.
"""

import dataclasses
import math

import numpy as np


@dataclasses.dataclass(frozen=True)
class MetaObjective:
    """The meta-loss's weights (see the module docstring).

    Attributes:
        final_share: weight of the final segment's mean loss, in [0, 1]
            (0: the area under the curve; 1: the end only).
        final_fraction: the final segment, as a fraction of the horizon.
        adam_penalty: weight of `max(0, l_t - a_t)` over the final segment
            (needs Adam references: `meta.adam_reference`).
        tail_weight: beta of the CVaR term over the members of an iteration.
        tail_fraction: q, the share of members in the tail.
    """

    final_share: float = 0.0
    final_fraction: float = 0.1
    adam_penalty: float = 0.0
    tail_weight: float = 0.0
    tail_fraction: float = 0.25

    def __post_init__(self):
        if not 0.0 <= self.final_share <= 1.0:
            raise ValueError(f"final_share must be in [0, 1], got {self.final_share!r}.")
        for name in ("final_fraction", "tail_fraction"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)!r}.")
        for name in ("adam_penalty", "tail_weight"):
            if not getattr(self, name) >= 0.0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}.")

    @property
    def needs_references(self):
        """Whether members need Adam(1e-3) reference curves."""
        return self.adam_penalty > 0 or self.tail_weight > 0

    def describe(self):
        parts = ["area under the curve" if self.final_share == 0
                 else f"final {self.final_fraction:.0%} weighted {self.final_share:g}"]
        if self.adam_penalty:
            parts.append(f"penalty {self.adam_penalty:g} x (loss above Adam(1e-3)) at the end")
        if self.tail_weight:
            parts.append(f"CVaR {self.tail_weight:g} over the worst {self.tail_fraction:.0%} of members")
        return ", ".join(parts)

    def to_dict(self):
        return dataclasses.asdict(self)


def final_start(horizon, final_fraction):
    """The first step (0-based) of an episode's final segment."""
    return horizon - max(1, int(round(final_fraction * horizon)))


def step_meta_losses(objective, normalised, positions, horizon, reference=None):
    """Per-step meta-loss terms; their mean over an episode's steps is its J.

    Args:
        objective: a `MetaObjective`.
        normalised: `[steps, ...]` normalised losses `l_t` (numpy or JAX;
            trailing axes, e.g. arms, broadcast).
        positions: `[steps]` each step's index in its episode (0-based).
        horizon: the episode's length T.
        reference: None, or `[steps]` the Adam reference `a_t` at those steps.

    Returns an array like `normalised`. Differentiable in `normalised`
    (JAX), as truncated backprop needs.
    """
    import jax.numpy as jnp

    positions = np.asarray(positions)
    in_final = positions >= final_start(horizon, objective.final_fraction)
    final_steps = horizon - final_start(horizon, objective.final_fraction)
    # mean over all T steps of w_t l_t equals the objective's first two terms.
    weight = (1.0 - objective.final_share) + objective.final_share * in_final * horizon / final_steps
    shape = (-1,) + (1,) * (jnp.ndim(normalised) - 1)
    terms = jnp.reshape(jnp.asarray(weight, jnp.float32), shape) * normalised
    if objective.adam_penalty and reference is not None:
        excess = jnp.maximum(normalised - jnp.reshape(jnp.asarray(reference, jnp.float32), shape), 0.0)
        penalty = objective.adam_penalty * in_final * horizon / final_steps
        terms = terms + jnp.reshape(jnp.asarray(penalty, jnp.float32), shape) * excess
    return terms


def tail_scores(normalised_means, reference_means):
    """How badly each member did this truncation: `l / a` against Adam, else `l`.

    `normalised_means[m]`: member m's mean normalised loss over the
    truncation (over its arms); `reference_means[m]`: Adam's over the same
    steps, or None where unknown. The ratio is used only when every member
    has a reference (the two are on different scales).
    """
    losses = np.asarray(normalised_means, np.float64)
    if any(r is None or not r > 0 for r in reference_means):
        return losses
    return losses / np.asarray(reference_means, np.float64)


def member_weights(objective, scores):
    """`[members]` weights, mean 1: the CVaR tail (highest scores) weighted `1 + beta / q`."""
    scores = np.asarray(scores, np.float64)
    weights = np.ones(scores.size)
    if objective.tail_weight == 0 or scores.size < 2:
        return weights
    count = max(1, int(math.ceil(objective.tail_fraction * scores.size)))
    worst = np.argsort(-scores, kind="stable")[:count]
    weights[worst] += objective.tail_weight / objective.tail_fraction
    return weights / weights.mean()
