"""The bootstrap theta: hand-set VeLO weights that ship as `weights="bundled"`.

What it is
----------
Google's meta-trained VeLO checkpoint cannot be fetched on every machine
(keras-velo does not redistribute it), so keras-velo ships its own theta
in the official format (H=512 LSTM, K=256 MLP sets; `read_checkpoint` reads
it). Until keras-velo's own meta-training exists, that theta is *set by
hand* here: not learned, but written down so that VeLO's step is a known,
sensible rule. The file is rebuilt byte for byte by

    python -m meta.bootstrap_theta --out keras_velo/weights/bootstrap

(gzip-compressed `params.gz` plus `config.gin`). `python -m meta.bootstrap_tuning` re-runs the small
search that chose `DEFAULT_CONSTANTS` (see `meta/bootstrap_tuning.py`); the
chosen values are written below, so building never runs the search.

The rule it encodes
-------------------
For every tensor p, with `u = m_0 * rsqrt(rms + 1e-6)` (the momentum with
decay 0.9 over the root of VeLO's rms: Adam's direction without bias
correction; spec §5.8, group 5) and `hat(x) = x * rsqrt(1e-5 + mean(x²))`
(VeLO's per-tensor input normalisation):

    p_new = p - lambda(frac) * boost * 0.001 * rms(p) * (hat(u) + weight_decay * hat(p))

a per-tensor-normalised Adam direction scaled by the tensor's own RMS (a
LAMB-like trust ratio) plus a decoupled weight decay, with a warm-up then
cosine-decay schedule over the fraction of training
`frac = iteration / total_steps`. With the defaults the step at the peak
is 1.5% of the tensor's RMS. How theta makes VeLO compute it (spec
§5.5-5.10; every weight not named here is zero):

* Per-parameter MLP, all 256 sets identical except one bias (below);
  `rnn_to_controls/b = 0.01`, so `100 * mean_k(0.01 * Theta_k) = Theta`.
  First-layer unit 0 computes `d = hat(u) + weight_decay * hat(p)` (input
  groups 5 and 2), unit 1 computes `-d`; the second layer copies them and
  the direction output is `relu(d) - relu(-d) = d`.
* lambda (`rnn_params/step_size`): the input mix `linear_2` copies the 9
  training-fraction features `tanh(10 (frac - tau))` into LSTM units, with
  gains 1 and 3; `linear_1` is zero, so the cross-tensor max adds 0, and
  the dead layer `linear` is zero. Each used LSTM unit has its input gate
  saturated open, its forget gate saturated shut (no memory) and its output
  gate open, so it outputs `tanh(tanh(gain * feature))`; the hidden-to-gate
  weights and `lstm_init_state` are zero. The step-size head is the ridge
  least-squares fit of `peak_lr_mult * target_schedule(frac)` (linear
  warm-up to `warmup_fraction`, cosine decay to `final_lr_fraction * peak`
  at frac = 1, held after) onto those units, on frac in [0, 1.5]. lambda is
  the same for every tensor; `lr_mult_schedule` evaluates it.
* Small-tensor boost (the magnitude output mu: `step *= exp(0.001 mu)`):
  VeLO scales every step by `rms(p) = sqrt(mean p² + 1e-9)`, so a
  zero-initialised bias would move by ~3e-8 per step. One more LSTM unit
  reads LSTM feature 24, `cla(var_m) = 0.5 log(10 var(m_0) / mean p²)`
  (clipped to ±2.5): the log ratio of the momentum's spread to the
  tensor's scale. Through `rnn_to_controls` it shifts the mixing
  coefficients of the first 128 MLP sets up and of the other 128 down, and
  those sets' magnitude biases `b2[:, 1]` are `mu0 + mu0` and `mu0 - mu0`:
  the direction weights are unchanged (the shifts cancel) while
  `exp(0.001 mu)` = `boost_factor(feature)` rises smoothly from 1 (momentum
  spread small next to the tensor's RMS) to ~`small_tensor_boost` (spread
  above ~3x the RMS; half way, in log scale, at ~1.4x). A zero-initialised
  bias is boosted from its second update on and loses the boost as it
  grows.

Why these numbers (`python -m meta.bootstrap_tuning`): on 8x8 digits
classifiers (MLPs 64-128-10 relu and 64-32-32-10 tanh, a small CNN),
relative steps make the weights grow exponentially (cross-entropy rewards
larger weights), which blew up runs with a peak of 20-40 or without weight
decay at 2,000-20,000 steps; `weight_decay = 0.1` bounds the growth, and a
peak of 15 was the best of the candidates that stayed stable on a
5,000-step run. Against Adam(1e-3) from the same initialisation on the
same batches, the defaults reach a lower final training loss on all three
tasks at 200, 600, 2,000 and 5,000 steps (table in the README / the
`meta.bootstrap_tuning` output). The momentum decay 0.99 channel blew up; Adafactor's
factored momentum (group 13) was as good at short horizons and less stable.

The warm-up (20% of training) was set afterwards, on the canonical residual
workload (`resnet-fashion8`, 8 residual blocks): with a 5% warm-up, which
VeLO's fraction features can only render as a jump to ~90% of the peak by
5% of training, every seed collapsed to chance (loss ln 10) while a peak
of 7.5 or less did not; relative steps compound through the residual
stack, and a large early step knocks it out before the normalised
directions settle. A 10% warm-up still collapsed; 20% trains it (validation
loss 0.90-0.96 over 3 seeds, Adam(1e-3) 1.21-1.28) and moves the other
canonical tasks by -5% to +3% in a one-seed check (meta/MODEL_CARD.md has the
evaluation).

Limits
------
* Not meta-trained: a hand-set normalised-momentum (LAMB-like) rule with a
  schedule and weight decay, tuned on three small digits tasks only.
  VeLO's loss features, its cross-tensor pooling and the LSTM's memory are
  unused.
* Steps are relative to each tensor's RMS. Tensors that start at zero rely
  on the boost, which needs a momentum *spread*: a tensor with one element
  (e.g. a `Dense(1)` output bias) or with uniform momentum never gets it
  and, starting at zero, barely moves. The first update (zero momentum) is
  never boosted.
* The built-in decay `weight_decay * lambda * 0.001` per step (1.5e-4 at
  the peak) applies to every tensor, normalisation scales included.
* The schedule is limited by VeLO's fraction features (the sharpest has a
  width of ~0.1 of training): the fit rounds off the corner at the end of
  the warm-up, and lambda starts at ~4% of its peak, not 0.
* Much longer horizons than tested (>20,000 steps), other architectures
  (attention, normalisation layers) and other losses are untested.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys

import numpy as np

from keras_velo.maths.hypernetwork import LSTM_FORGET_BIAS, MLP_WEIGHT_MIX_SCALE
from keras_velo.maths.parameter_mlp import EXP_MULT
from keras_velo.maths.tensor_features import FRACTION_SHARPNESS, FRACTION_TIMESCALES
from keras_velo.maths.theta import (
    DEFAULT_LSTM_HIDDEN_SIZE,
    DEFAULT_NUM_PARAM_INITS,
    theta_shapes,
    unflatten_theta,
    validate_theta,
)

# The VeLO constants this construction relies on (spec §5.3-5.10) come from
# the maths modules the optimizer runs, so the two cannot drift apart.
CONTROL_BIAS = 0.01  # with MLP_WEIGHT_MIX_SCALE: 100 * mean_k(0.01 * Theta_k) = Theta

# Indices into VeLO's inputs.
MOMENTUM_SPREAD_FEATURE = 24  # LSTM feature `cla(var_m)` for momentum decay 0.9 (spec §5.4)
RANK_ONE_FEATURE = 20  # LSTM feature: the rank one-hot's entry for rank 1 (features 19-23, spec §5.4)
DIRECTION_GROUPS = {  # MLP input groups with one channel per decay (spec §5.8)
    "m": 3,
    "m_rsqrt_rms": 5,
    "fac_g": 7,
    "fac_mom_mult": 13,
}
PARAM_GROUP = 2  # MLP input group "p", the parameters themselves
GENERATION_ID = "keras_velo bootstrap theta"


@dataclasses.dataclass(frozen=True)
class BootstrapConstants:
    """The hand-set numbers of the bootstrap theta (see the module docstring).

    Attributes:
        peak_lr_mult: lambda at the top of the schedule; the relative step
            per update there is `peak_lr_mult * 0.001` of the tensor's RMS.
        warmup_fraction: the target schedule rises linearly over
            `[0, warmup_fraction]` of training (the fit smooths it).
        final_lr_fraction: lambda at frac >= 1, as a fraction of the peak
            (cosine decay in between).
        direction_group: MLP input group the direction is read from, one of
            `DIRECTION_GROUPS` ("m_rsqrt_rms": Adam-like).
        direction_decay: which of the group's 3 decay channels (0: 0.9).
        weight_decay: the direction is `u_hat + weight_decay * p_hat` (p_hat:
            the parameters normalised like every channel), i.e. decoupled
            weight decay of `lambda * 0.001 * weight_decay` per step,
            scheduled with lambda; it bounds the growth of the weights that
            relative steps otherwise make exponential.
        small_tensor_boost: the largest step multiplier `exp(0.001 mu)` for
            tensors much smaller than their momentum; 1.0 turns it off.
        boost_threshold: the value of LSTM feature 24 (`cla(var_m)`, in
            [-2.5, 2.5]) at which the boost is half way (in log scale).
        boost_sharpness: gain of the boost unit on that feature.
        schedule_gains: gains of the LSTM units on each fraction feature.
        schedule_ridge: ridge penalty of the schedule fit.
        gate_saturation: |bias| that saturates the LSTM gates.
        settled_vector_damping: the step multiplier of a *settled vector*: a
            rank-1 tensor whose momentum spread is small next to its RMS
            (LayerNorm and BatchNorm scales, which start at 1; not a bias
            that starts at zero, whose spread is large). 1.0: none (the
            shipped bootstrap).
        settled_vector_weight_decay: whether settled vectors are decayed
            like every other tensor (the shipped bootstrap) or not.
        settled_vector_threshold: the value of LSTM feature 24 below which
            a rank-1 tensor counts as settled (half way at the threshold).
        settled_vector_sharpness: gain of that transition.
    """

    peak_lr_mult: float = 15.0
    warmup_fraction: float = 0.2
    final_lr_fraction: float = 0.05
    direction_group: str = "m_rsqrt_rms"
    direction_decay: int = 0
    weight_decay: float = 0.1
    small_tensor_boost: float = 100.0
    boost_threshold: float = 1.5
    boost_sharpness: float = 2.0
    schedule_gains: tuple = (1.0, 3.0)
    schedule_ridge: float = 1e-4
    gate_saturation: float = 40.0
    settled_vector_damping: float = 1.0
    settled_vector_weight_decay: bool = True
    settled_vector_threshold: float = 0.0
    settled_vector_sharpness: float = 4.0

    def __post_init__(self):
        def positive(name):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")

        for name in ("peak_lr_mult", "boost_sharpness", "schedule_ridge", "gate_saturation"):
            positive(name)
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 < self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in (0, 1), got {self.warmup_fraction!r}")
        if not 0 < self.final_lr_fraction <= 1:
            raise ValueError(
                f"final_lr_fraction must be in (0, 1], got {self.final_lr_fraction!r}"
            )
        if self.direction_group not in DIRECTION_GROUPS:
            raise ValueError(
                f"direction_group must be one of {sorted(DIRECTION_GROUPS)}, "
                f"got {self.direction_group!r}"
            )
        if self.direction_decay not in (0, 1, 2):
            raise ValueError(f"direction_decay must be 0, 1 or 2, got {self.direction_decay!r}")
        if not (math.isfinite(self.small_tensor_boost) and self.small_tensor_boost >= 1):
            raise ValueError(
                f"small_tensor_boost must be >= 1, got {self.small_tensor_boost!r}"
            )
        if not -2.5 <= self.boost_threshold <= 2.5:
            raise ValueError(
                f"boost_threshold must be in [-2.5, 2.5] (the feature's range), "
                f"got {self.boost_threshold!r}"
            )
        if not 0 < self.settled_vector_damping <= 1:
            raise ValueError(
                f"settled_vector_damping must be in (0, 1], got {self.settled_vector_damping!r}"
            )
        if not -2.5 <= self.settled_vector_threshold <= 2.5:
            raise ValueError(
                f"settled_vector_threshold must be in [-2.5, 2.5] (the feature's range), "
                f"got {self.settled_vector_threshold!r}"
            )
        positive("settled_vector_sharpness")
        gains = tuple(self.schedule_gains)
        if not gains or not all(g > 0 and math.isfinite(g) for g in gains):
            raise ValueError(f"schedule_gains must be positive numbers, got {gains!r}")
        object.__setattr__(self, "schedule_gains", tuple(float(g) for g in gains))


DEFAULT_CONSTANTS = BootstrapConstants()
"""The constants of the shipped `weights="bundled"` theta (chosen by `meta.bootstrap_tuning`)."""


def target_schedule(fraction, constants: BootstrapConstants = DEFAULT_CONSTANTS):
    """The intended lambda / peak over the training fraction (numpy, any shape).

    Linear warm-up from 0 to 1 over `[0, warmup_fraction]`, then a cosine
    from 1 down to `final_lr_fraction` at fraction 1, held constant after.
    The theta realises a smooth least-squares fit of it (`lr_mult_schedule`).
    """
    fraction = np.asarray(fraction, np.float64)
    warmup, final = constants.warmup_fraction, constants.final_lr_fraction
    rise = np.clip(fraction / warmup, 0.0, 1.0)
    progress = np.clip((fraction - warmup) / (1.0 - warmup), 0.0, 1.0)
    decay = final + (1.0 - final) * 0.5 * (1.0 + np.cos(np.pi * progress))
    return np.where(fraction < warmup, rise, decay)


def _fraction_features(fraction):
    """`[..., 9]`: VeLO's training-fraction features (spec §5.3), float64."""
    fraction = np.asarray(fraction, np.float64)[..., None]
    return np.tanh(FRACTION_SHARPNESS * (fraction - np.asarray(FRACTION_TIMESCALES)))


def _saturated_unit(pre_activation):
    """What an LSTM unit with open input/output gates and no memory outputs."""
    return np.tanh(np.tanh(pre_activation))


def _schedule_units(fraction, constants):
    """`[..., U]`: the outputs of the schedule's LSTM units at `fraction`."""
    features = _fraction_features(fraction)
    return np.concatenate(
        [_saturated_unit(gain * features) for gain in constants.schedule_gains], axis=-1
    )


def _fit_step_size_head(constants):
    """Ridge least squares of `peak * target_schedule` on the schedule units.

    Returns `(weights [U], bias)` of the step-size head, float64. The grid
    runs past fraction 1 (to 1.5) so that overrunning `total_steps` keeps the
    final value instead of extrapolating.
    """
    grid = np.linspace(0.0, 1.5, 1501)
    design = np.concatenate([_schedule_units(grid, constants), np.ones((grid.size, 1))], axis=1)
    target = constants.peak_lr_mult * target_schedule(grid, constants)
    gram = design.T @ design + constants.schedule_ridge * grid.size * np.eye(design.shape[1])
    solution = np.linalg.solve(gram, design.T @ target)
    return solution[:-1], float(solution[-1])


def lr_mult_schedule(fraction, constants: BootstrapConstants = DEFAULT_CONSTANTS):
    """lambda (VeLO's `lr_mult`) that `bootstrap_theta(constants)` gives at `fraction`.

    Computed in float64 numpy from the same construction; VeLO's float32
    forward pass agrees to ~1e-5 of the peak.
    """
    weights, bias = _fit_step_size_head(constants)
    return _schedule_units(fraction, constants) @ weights + bias


def _boost_unit(feature, constants):
    return _saturated_unit(constants.boost_sharpness * (feature - constants.boost_threshold))


def boost_factor(momentum_spread_feature, constants: BootstrapConstants = DEFAULT_CONSTANTS):
    """The step multiplier `exp(0.001 mu)` for a value of LSTM feature 24.

    Smoothly 1 for low values (momentum spread small next to the tensor's
    RMS) up to ~`small_tensor_boost` (99% of it in log scale) at the
    feature's top, 2.5.
    """
    top = math.tanh(1.0)
    log_boost = math.log(constants.small_tensor_boost)
    unit = _boost_unit(np.asarray(momentum_spread_feature, np.float64), constants)
    return np.exp(log_boost * 0.5 * (1.0 + unit / top))


def settled_vector_unit(rank_one, momentum_spread_feature, constants: BootstrapConstants = DEFAULT_CONSTANTS):
    """The output of the settled-vector LSTM unit, in [0, tanh(1)] (numpy, float64).

    `rank_one` is 1 for a rank-1 tensor, else 0; the unit's output gate
    passes only rank-1 tensors, its input gate `sigmoid(sharpness *
    (threshold - feature 24))` opens as the momentum spread falls below the
    threshold, and its candidate is saturated at 1, so the unit outputs
    `rank_one * tanh(sigmoid(...))`: near tanh(1) for a settled vector,
    near 0 for everything else.
    """
    spread = np.asarray(momentum_spread_feature, np.float64)
    gate = 1.0 / (1.0 + np.exp(-constants.settled_vector_sharpness * (constants.settled_vector_threshold - spread)))
    return np.asarray(rank_one, np.float64) * np.tanh(gate)


def _has_settled_vector_unit(config):
    return config.settled_vector_damping != 1.0 or not config.settled_vector_weight_decay


def bootstrap_theta(**constants) -> dict:
    """The bootstrap theta (numpy float32 nested dict, H=512, K=256).

    Keyword arguments override fields of `DEFAULT_CONSTANTS`
    (`BootstrapConstants`); with none, this is exactly the theta shipped as
    `weights="bundled"`. Deterministic: no randomness is involved.

    Example:
        >>> theta = bootstrap_theta()
        >>> validate_theta(theta, source="bootstrap")
        >>> theta["rnn_params"]["step_size"]["w"].shape
        (512, 1)
        >>> louder = bootstrap_theta(peak_lr_mult=40.0)
    """
    config = dataclasses.replace(DEFAULT_CONSTANTS, **constants)
    hidden, inits = DEFAULT_LSTM_HIDDEN_SIZE, DEFAULT_NUM_PARAM_INITS
    flat = {path: np.zeros(shape, np.float64) for path, shape in theta_shapes().items()}

    def leaf(*path):
        return flat[path]

    num_fraction = len(FRACTION_TIMESCALES)
    schedule_units = [
        (gain, k) for gain in config.schedule_gains for k in range(num_fraction)
    ]
    boost_unit = len(schedule_units)
    if boost_unit + 1 > hidden:
        raise ValueError(f"{boost_unit + 1} LSTM units needed, only {hidden} exist")
    candidate = slice(hidden, 2 * hidden)  # gate column blocks (i, g, f, o)

    # Mix layer C (`linear_2`) copies the fraction features and feature 24
    # into LSTM input units; `linear` (dead) and `linear_1` (max-pooled) stay 0.
    mix_w = leaf("rnn_params", "linear_2", "w")
    for unit, (gain, k) in enumerate(schedule_units):
        mix_w[k, unit] = gain
    mix_w[MOMENTUM_SPREAD_FEATURE, boost_unit] = config.boost_sharpness

    # LSTM: unit u's candidate reads input unit u; gates saturated; h ignored.
    gate_w = leaf("rnn_params", "rnn/linear", "w")
    gate_b = leaf("rnn_params", "rnn/linear", "b")
    saturation = config.gate_saturation
    for unit in range(boost_unit + 1):
        gate_w[unit, candidate.start + unit] = 1.0
        gate_b[unit] = saturation  # input gate open
        gate_b[2 * hidden + unit] = -saturation - LSTM_FORGET_BIAS  # forget gate closed
        gate_b[3 * hidden + unit] = saturation  # output gate open
    gate_b[candidate.start + boost_unit] = -config.boost_sharpness * config.boost_threshold

    settled_unit = boost_unit + 1  # the LSTM unit; its output gate reads mix unit settled_unit
    if _has_settled_vector_unit(config):
        if settled_unit + 1 > hidden:
            raise ValueError(f"{settled_unit + 1} LSTM units needed, only {hidden} exist")
        mix_w[RANK_ONE_FEATURE, settled_unit] = 1.0
        # input gate: sigmoid(sharpness * (threshold - feature 24)), from the boost's input unit
        gate_w[boost_unit, settled_unit] = -config.settled_vector_sharpness / config.boost_sharpness
        gate_b[settled_unit] = config.settled_vector_sharpness * config.settled_vector_threshold
        gate_b[candidate.start + settled_unit] = saturation  # candidate tanh(.) = 1
        gate_b[2 * hidden + settled_unit] = -saturation - LSTM_FORGET_BIAS  # forget gate closed
        gate_w[settled_unit, 3 * hidden + settled_unit] = 2.0 * saturation  # output gate: rank 1 only
        gate_b[3 * hidden + settled_unit] = -saturation

    # Step-size head: the fitted schedule.
    head_w, head_b = _fit_step_size_head(config)
    leaf("rnn_params", "step_size", "w")[: len(schedule_units), 0] = head_w
    leaf("rnn_params", "step_size", "b")[0] = head_b

    # Controls: 0.01 for every set, plus +-c * boost unit (first / second half).
    half = inits // 2
    signs = np.where(np.arange(inits) < half, 1.0, -1.0)
    if inits % 2:
        signs[-1] = 0.0
    top = math.tanh(1.0)
    leaf("rnn_params", "rnn_to_controls", "b")[:] = CONTROL_BIAS
    leaf("rnn_params", "rnn_to_controls", "w")[boost_unit, :] = signs / (
        MLP_WEIGHT_MIX_SCALE * top
    )
    # The settled-vector unit shifts the sets by an alternating pattern, orthogonal to the
    # boost's halves, so each unit's term survives the mix alone.
    settled_signs = np.where(np.arange(inits) % 2 == 0, 1.0, -1.0)
    if inits % 2:
        settled_signs[-1] = 0.0
    if _has_settled_vector_unit(config):
        leaf("rnn_params", "rnn_to_controls", "w")[settled_unit, :] = settled_signs / (
            MLP_WEIGHT_MIX_SCALE * top
        )

    # The per-parameter MLP, identical in all sets except b2[:, 1] = mu0 +- mu0.
    group = DIRECTION_GROUPS[config.direction_group]
    first = leaf("ff_mod_stack", "~", f"w0__{group}")
    first[:, config.direction_decay, 0] = 1.0
    first[:, config.direction_decay, 1] = -1.0
    decay = leaf("ff_mod_stack", "~", f"w0__{PARAM_GROUP}")
    # With the settled-vector unit at its top, (1 - signs) mixes to 0: no decay for them.
    kept = 1.0 if config.settled_vector_weight_decay else 1.0 - settled_signs
    decay[:, 0, 0] = config.weight_decay * kept
    decay[:, 0, 1] = -config.weight_decay * kept
    second = leaf("ff_mod_stack", "~", "w1")
    second[:, 0, 0] = 1.0
    second[:, 1, 1] = 1.0
    third = leaf("ff_mod_stack", "~", "w2")
    third[:, 0, 0] = 1.0
    third[:, 1, 0] = -1.0
    # mu = mu0 (1 + h/tanh(1)) runs from 0 to log(boost)/0.001 as h = boost unit
    # runs over (-tanh(1), tanh(1)); the shifted controls carry the h term.
    mu0 = 0.5 * math.log(config.small_tensor_boost) / EXP_MULT
    settled = math.log(config.settled_vector_damping) / EXP_MULT
    leaf("ff_mod_stack", "~", "b2")[:, 1] = mu0 + mu0 * signs + settled * settled_signs

    theta = unflatten_theta({path: value.astype(np.float32) for path, value in flat.items()})
    validate_theta(theta, source="bootstrap_theta")
    return theta


def write_bootstrap_checkpoint(directory, **constants):
    """Writes `bootstrap_theta(**constants)` as `directory/params.gz` + `config.gin`.

    Returns the path of `params.gz`. The bytes are deterministic (gzip with
    mtime 0 and no file name).
    """
    from keras_velo.weights.checkpoint import write_checkpoint

    path = os.fspath(directory)
    if not path.endswith(os.sep):
        path += os.sep  # a directory: params.gz and config.gin go inside
    return write_checkpoint(
        path, bootstrap_theta(**constants), gen_id=GENERATION_ID, step=0, compress=True
    )


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m meta.bootstrap_theta",
        description="Build keras-velo's bootstrap theta (weights='bundled').",
    )
    parser.add_argument(
        "--out", default="keras_velo/weights/bootstrap",
        help="output directory for params.gz and config.gin (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    path = write_bootstrap_checkpoint(args.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
