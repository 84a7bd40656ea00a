"""The baselines' published learning-rate schedules, as Keras schedules (see the protocol, section 2).

* `warmup_cosine(peak, step_hint)`: Adam, NAdam, NAdamW. With `S = 0.75 x
  step_hint`: linear warm-up over the first 5% of S, cosine decay over the
  rest of S down to `1e-4 x peak`, then constant.
* `warmup_linear_decay(peak, step_hint)`: heavy-ball and Nesterov momentum.
  Linear warm-up over 5% of the step hint, then linear decay to 1e-3
  (absolute) at the step hint, constant after.
"""

import math

import keras
from keras import ops

COSINE_FRACTION = 0.75
WARMUP_FRACTION = 0.05
COSINE_FLOOR = 1e-4
MOMENTUM_FINAL_LR = 1e-3


def warmup_cosine_value(step, peak, step_hint):
    """The warm-up + cosine learning rate at `step` (Python floats; the schedule's maths)."""
    decay_steps = COSINE_FRACTION * step_hint
    warmup = max(1.0, WARMUP_FRACTION * decay_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1.0, decay_steps - warmup))
    floor = COSINE_FLOOR * peak
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear_decay_value(step, peak, step_hint):
    """The warm-up + linear-decay learning rate at `step`."""
    warmup = max(1.0, WARMUP_FRACTION * step_hint)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1.0, step_hint - warmup))
    return peak + (MOMENTUM_FINAL_LR - peak) * progress


@keras.saving.register_keras_serializable("keras_velo_evaluation")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, step_hint):
        self.peak, self.step_hint = float(peak), int(step_hint)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        decay_steps = COSINE_FRACTION * self.step_hint
        warmup = max(1.0, WARMUP_FRACTION * decay_steps)
        floor = COSINE_FLOOR * self.peak
        progress = ops.clip((step - warmup) / max(1.0, decay_steps - warmup), 0.0, 1.0)
        cosine = floor + (self.peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * progress))
        return ops.where(step < warmup, self.peak * (step + 1.0) / warmup, cosine)

    def get_config(self):
        return {"peak": self.peak, "step_hint": self.step_hint}


@keras.saving.register_keras_serializable("keras_velo_evaluation")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak, step_hint):
        self.peak, self.step_hint = float(peak), int(step_hint)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = max(1.0, WARMUP_FRACTION * self.step_hint)
        progress = ops.clip((step - warmup) / max(1.0, self.step_hint - warmup), 0.0, 1.0)
        decay = self.peak + (MOMENTUM_FINAL_LR - self.peak) * progress
        return ops.where(step < warmup, self.peak * (step + 1.0) / warmup, decay)

    def get_config(self):
        return {"peak": self.peak, "step_hint": self.step_hint}
