"""Evolution-strategies gradient estimates of the meta-loss: pure maths, in JAX.

Every estimate here is built from antithetic pairs. Member `m` of an
iteration evaluates theta + eps_m (its "+" arm) and theta - eps_m (its "-"
arm), eps_m ~ N(0, sigma^2 I), on the same task and the same batches, and
reports the two arms' meta-losses `L+` and `L-`.

* Full-unroll antithetic ES (the VeLO paper's estimator): each arm trains
  its task for the whole horizon;
  `g = mean_m (L+_m - L-_m) / (2 sigma^2) * eps_m`, or with
  `sign_of_difference` (VeLO's `sign_delta_loss_scalar`)
  `g = mean_m sign(L+_m - L-_m) / (2 sigma^2) * eps_m` -- the difference
  replaced by its sign (times 1), which bounds the influence of exploding
  runs.
* Persistent ES (Vicol, Metz and Sohl-Dickstein, 2021): each arm keeps its
  inner training state across truncations of `K` steps, with a fresh eps
  each truncation; the estimate weighs the difference of the truncation's
  losses by the *accumulated* perturbation `xi_m = sum of the eps_m used
  since the arm's unroll began` (this truncation's included):
  `g = mean_m (L+_m - L-_m) / (2 sigma^2) * xi_m`. It is unbiased for the
  gradient of the sum of losses over the whole unroll, although each
  iteration only runs K steps.

`inverse_variance_combination` merges a Persistent ES estimate with the
truncated-backprop gradients of the same members (`meta.particles`).

Perturbations are never stored or sent: `perturbation(key, size, sigma,
iteration, member)` regenerates eps from the run's seed, the iteration and
the member on any machine.
"""

import jax
import jax.numpy as jnp
import numpy as np


def member_key(seed, iteration, member):
    """The PRNG key of one member's perturbation at one iteration."""
    key = jax.random.PRNGKey(np.uint32(seed))
    key = jax.random.fold_in(key, np.uint32(iteration))
    return jax.random.fold_in(key, np.uint32(member))


def perturbation(seed, iteration, member, size, sigma):
    """eps ~ N(0, sigma^2 I) of shape `[size]` for (seed, iteration, member)."""
    return sigma * jax.random.normal(member_key(seed, iteration, member), (size,), jnp.float32)


def accumulate(accumulated, eps, new_episode):
    """A member's accumulated perturbation after this truncation's `eps` (Persistent ES).

    `eps` alone when the member began a new episode (or has no history),
    else the running sum. Full-unroll ES is the case where every truncation
    is a new episode.
    """
    if new_episode or accumulated is None:
        return eps
    return accumulated + eps


def centered_ranks(values):
    """Fitness shaping: each value replaced by its rank, mapped to [-0.5, 0.5].

    Ties keep the order of appearance; a single value maps to 0.
    """
    values = np.asarray(values, np.float64)
    if values.size < 2:
        return np.zeros_like(values)
    ranks = np.empty(values.size, np.float64)
    ranks[np.argsort(values.ravel(), kind="stable")] = np.arange(values.size)
    return (ranks / (values.size - 1) - 0.5).reshape(values.shape)


def pair_weights(losses_plus, losses_minus, sigma, shaping="none"):
    """Per-member weights `w_m` such that the estimate is `mean_m w_m * xi_m`.

    Args:
        losses_plus, losses_minus: `[members]` meta-losses of the two arms.
        sigma: the perturbation scale.
        shaping: "none" (`(L+ - L-) / (2 sigma^2)`), "sign" (the VeLO
            paper's `sign(L+ - L-) / (2 sigma^2)`), or "centered_ranks" (the 2M losses
            replaced by their centred ranks before differencing, then
            `/ (2 sigma^2)`).
    """
    plus = np.asarray(losses_plus, np.float64)
    minus = np.asarray(losses_minus, np.float64)
    if plus.shape != minus.shape or plus.ndim != 1:
        raise ValueError(f"losses must be two [members] vectors, got {plus.shape} and {minus.shape}.")
    if shaping == "none":
        difference = plus - minus
    elif shaping == "sign":
        difference = np.sign(plus - minus)
    elif shaping == "centered_ranks":
        ranked = centered_ranks(np.concatenate([plus, minus]))
        difference = ranked[: plus.size] - ranked[plus.size :]
    else:
        raise ValueError(f"shaping must be 'none', 'sign' or 'centered_ranks', got {shaping!r}.")
    return difference / (2.0 * sigma**2)


def weighted_mean(weights, vectors):
    """`mean_m weights[m] * vectors[m]`; `vectors` is a list of `[size]` arrays."""
    if len(weights) != len(vectors) or not vectors:
        raise ValueError(f"need one vector per weight, got {len(weights)} weights and {len(vectors)} vectors.")
    total = jnp.zeros_like(vectors[0])
    for weight, vector in zip(weights, vectors):
        total = total + jnp.float32(weight) * vector
    return total / len(vectors)


def normalised_loss(loss, initial_loss, max_ratio):
    """A task's training loss made comparable across tasks: `loss / initial_loss` in `[0, max_ratio]`.

    As the reference clips each task's loss to a maximum (and maps NaN or
    inf to it), a diverged run costs `max_ratio` and no more; dividing by
    the loss at initialisation puts classification, language-model and
    reconstruction losses on one scale (1 = no progress). Works on numpy
    or JAX values; a non-positive or non-finite `initial_loss` gives
    `max_ratio`.
    """
    ratio = loss / initial_loss
    usable = jnp.isfinite(ratio) & jnp.isfinite(initial_loss) & (initial_loss > 0)
    return jnp.where(usable, jnp.clip(ratio, 0.0, max_ratio), max_ratio)


def inverse_variance_combination(es_samples, gradient_samples):
    """Per coordinate, the two estimates' means weighted by the inverse of their variances.

    Metz et al. (2019), "Understanding and correcting pathologies in the
    training of learned optimizers": an ES estimate and a truncated-backprop
    gradient of the same meta-loss, each a mean over n members, combined
    coordinate by coordinate as `(g_es / v_es + g_tb / v_tb) / (1 / v_es +
    1 / v_tb)`, `v` the variance of each mean measured across the members.
    Where one is much noisier (ES in most coordinates of a large theta,
    truncated backprop where it explodes) the other dominates.

    Args:
        es_samples, gradient_samples: `[n, d]` per-member samples (`w_m xi_m`
            and each member's gradient), n >= 2.

    Returns `(combined [d], share of the ES estimate [d])`.
    """
    es = np.asarray(es_samples, np.float64)
    gradient = np.asarray(gradient_samples, np.float64)
    n = es.shape[0]
    if es.shape != gradient.shape or n < 2:
        raise ValueError(f"need two [n >= 2, d] sample arrays, got {es.shape} and {gradient.shape}.")
    tiny = 1e-30
    es_variance = es.var(axis=0, ddof=1) / n + tiny
    gradient_variance = gradient.var(axis=0, ddof=1) / n + tiny
    es_weight = (1.0 / es_variance) / (1.0 / es_variance + 1.0 / gradient_variance)
    combined = es_weight * es.mean(axis=0) + (1.0 - es_weight) * gradient.mean(axis=0)
    return combined.astype(np.float32), es_weight.astype(np.float32)
