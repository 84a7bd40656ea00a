"""The optimizers a Keras user would pick instead of VeLO, at Keras' defaults and over a small grid.

VeLO is judged against what a Keras 3 user already has, not only against
the Adam of the VeLO paper:

| name | optimizer | default rate | grid |
|---|---|---:|---|
| `adam` | `keras.optimizers.Adam`, constant rate | 1e-3 | 1e-4 .. 1e-2, half-decades (tuned Adam: the VeLOdrome reference) |
| `adamw` | `keras.optimizers.AdamW()`, constant rate, weight decay 0.004 | 1e-3 | (defaults only) |
| `adamw_cosine` | `AdamW` with a linear warm-up over the first 5% of the steps, then a cosine decay to 0 at the last step (`keras.optimizers.schedules.CosineDecay`) | 1e-3 | 3e-4, 1e-3, 3e-3 |
| `schedule_free_adamw` | `keras.optimizers.ScheduleFreeAdamW()` | 2.5e-3 | 8e-4, 2.5e-3, 7.5e-3 |
| `muon` | `keras.optimizers.Muon()`: orthogonalised momentum for 2-D kernels, AdamW for the rest and for embeddings | 1e-3 | 3e-4, 1e-3, 3e-3 |

Every other argument stays at Keras' default: this is what a user gets
from the constructor, and "tuned" means only the learning rate, chosen
over the grid (about a third of the default, the default, three times it).
`ScheduleFreeAdamW` trains and is evaluated at the point Keras leaves in
the model's variables (the interpolated sequence y; Keras 3.15 has no
switch to the averaged sequence x for evaluation), as a Keras user gets it.
All five run on JAX, TensorFlow and PyTorch.

>>> optimizer = ALTERNATIVES["adamw_cosine"].make(total_steps=1000)   # default rate
>>> optimizer = ALTERNATIVES["muon"].make(learning_rate=3e-3)
"""

import dataclasses

import keras

WARMUP_FRACTION = 0.05  # adamw_cosine's linear warm-up, as a fraction of the steps


def _adam(learning_rate, total_steps):
    return keras.optimizers.Adam(learning_rate=learning_rate)


def _adamw(learning_rate, total_steps):
    return keras.optimizers.AdamW(learning_rate=learning_rate)


def warmup_cosine_schedule(peak, total_steps, warmup_fraction=WARMUP_FRACTION):
    """Keras' `CosineDecay`: linear from 0 to `peak` over the first `warmup_fraction` of
    `total_steps` (at least one step), then a cosine decay to 0 at `total_steps`."""
    if not (isinstance(total_steps, int) and total_steps >= 2):
        raise ValueError(f"a warm-up and cosine schedule needs total_steps >= 2, got {total_steps!r}.")
    warmup = max(1, round(warmup_fraction * total_steps))
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, decay_steps=total_steps - warmup, alpha=0.0,
        warmup_target=peak, warmup_steps=warmup,
    )


def _adamw_cosine(learning_rate, total_steps):
    return keras.optimizers.AdamW(learning_rate=warmup_cosine_schedule(learning_rate, total_steps))


def _schedule_free_adamw(learning_rate, total_steps):
    return keras.optimizers.ScheduleFreeAdamW(learning_rate=learning_rate)


def _muon(learning_rate, total_steps):
    return keras.optimizers.Muon(learning_rate=learning_rate)


@dataclasses.dataclass(frozen=True)
class Alternative:
    """One optimizer a user could pick instead of VeLO.

    Attributes:
        name: the key (`ALTERNATIVES`, run file names, `--optimizer`).
        title: how tables name it.
        default_learning_rate: Keras' default.
        grid: the learning rates it is tuned over (the default among them).
        needs_total_steps: its schedule needs the run's length.
        build: `build(learning_rate, total_steps) -> keras optimizer`.
    """

    name: str
    title: str
    default_learning_rate: float
    grid: tuple
    needs_total_steps: bool
    build: object

    def make(self, learning_rate=None, total_steps=None):
        """The Keras optimizer at `learning_rate` (default: Keras' default)."""
        rate = self.default_learning_rate if learning_rate is None else float(learning_rate)
        if not rate > 0:
            raise ValueError(f"{self.title}: the learning rate must be > 0, got {learning_rate!r}.")
        if self.needs_total_steps and total_steps is None:
            raise ValueError(f"{self.title} schedules its rate over the run: pass total_steps.")
        return self.build(rate, total_steps)

    def label(self, learning_rate=None):
        """E.g. `"Muon(0.001)"`."""
        rate = self.default_learning_rate if learning_rate is None else learning_rate
        return f"{self.title}({rate:g})"


ALTERNATIVES = {
    a.name: a
    for a in (
        Alternative("adam", "Adam", 1e-3, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), False, _adam),
        Alternative("adamw", "AdamW", 1e-3, (1e-3,), False, _adamw),
        Alternative("adamw_cosine", "AdamW cosine", 1e-3, (3e-4, 1e-3, 3e-3), True, _adamw_cosine),
        Alternative("schedule_free_adamw", "ScheduleFreeAdamW", 2.5e-3, (8e-4, 2.5e-3, 7.5e-3), False,
                    _schedule_free_adamw),
        Alternative("muon", "Muon", 1e-3, (3e-4, 1e-3, 3e-3), False, _muon),
    )
}
"""Every alternative by name, in the order tables list them."""

USER_CHOICES = ("adamw_cosine", "schedule_free_adamw", "muon")
"""The alternatives a Keras user picks today over plain Adam (notes: AlgoPerf's self-tuning
leader, Muon, and AdamW with the schedule most recipes use)."""
