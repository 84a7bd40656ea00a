"""The small search behind the bootstrap theta's constants.

Runs VeLO with `bootstrap_theta(**constants)` through the pure maths
(`keras_velo.packed.update.velo_update`, jitted with JAX) and Adam(1e-3) on the
same tasks, data, initialisations and numbers of steps, and prints the
final full-data training losses. Tasks are small classifiers of
scikit-learn's bundled 8x8 digits (1,797 images, no download), trained
with minibatches of shuffled epochs. Everything is seeded: the initial
weights (`keras.utils.set_random_seed(seed)`) and the batches
(`np.random.default_rng(1000 + seed)`) are the same for every optimizer.

Stage 1 searches the peak step size and the weight decay, stage 2 the
direction channel and the small-tensor boost; candidates are ranked by the
mean log ratio of their final loss to Adam's over the tasks at 200 and
2,000 steps, among those that stay stable on a 5,000-step run. Then the
shipped defaults are compared with Adam at 200, 600, 2,000 and 5,000 steps.

Needs the JAX backend (`KERAS_BACKEND=jax`) and scikit-learn. Run with

    KERAS_BACKEND=jax python -m meta.bootstrap_tuning [--quick]

It takes 8-12 minutes on 2 CPU cores (479 s and 695 s measured); `--quick` is a
~1 minute smoke test. Nothing is written: the chosen constants are copied
by hand into `BootstrapConstants`' defaults, and the output says whether
they still match the search's result.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np

from meta.bootstrap_theta import DEFAULT_CONSTANTS, bootstrap_theta

ADAM_LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class DigitsTask:
    """A digits classifier: `kind` "mlp" (hidden widths) or "cnn" (conv widths)."""

    name: str
    kind: str
    widths: tuple
    activation: str
    batch_size: int


TASKS = {
    task.name: task
    for task in (
        DigitsTask("mlp 64-128-10 relu", "mlp", (128,), "relu", 128),
        DigitsTask("mlp 64-32-32-10 tanh", "mlp", (32, 32), "tanh", 64),
        DigitsTask("cnn 8x8 c16-c32 relu", "cnn", (16, 32), "relu", 128),
    )
}
HORIZONS = (200, 600, 2000, 5000)
"""Horizons of the final comparison table."""

SEARCH_HORIZONS = (200, 2000)
STABILITY_TASK, STABILITY_HORIZON = "mlp 64-32-32-10 tanh", 5000
STABILITY_MARGIN = 0.1
"""A candidate must also end below `STABILITY_MARGIN` x Adam's loss on this
longer run. The tanh MLP is the first to blow up when relative steps let the
weights grow; candidates that only just pass at 5,000 steps were seen to
blow up by 20,000, hence the margin."""

# Stage 1 searches the step size and the weight decay; stage 2 the direction
# and the small-tensor boost at the best stage-1 point.
STAGE_1 = {"peak_lr_mult": (10.0, 15.0, 20.0), "weight_decay": (0.05, 0.1, 0.2)}
STAGE_2 = {
    "direction": (("m_rsqrt_rms", 0), ("m_rsqrt_rms", 1), ("fac_mom_mult", 0)),
    "small_tensor_boost": (1.0, 100.0),
}
LOSS_FLOOR = 1e-4  # losses below this count as equal when scoring


def _digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)
    return images, data.target.astype(np.int32)


def _build_model(task: DigitsTask, seed: int):
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8))]
    if task.kind == "mlp":
        layers.append(keras.layers.Flatten())
        layers += [keras.layers.Dense(w, activation=task.activation) for w in task.widths]
    else:
        layers.append(keras.layers.Reshape((8, 8, 1)))
        layers.append(keras.layers.Conv2D(task.widths[0], 3, padding="same",
                                          activation=task.activation))
        layers.append(keras.layers.Conv2D(task.widths[1], 3, strides=2, padding="same",
                                          activation=task.activation))
        layers.append(keras.layers.GlobalAveragePooling2D())
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)


class _Runner:
    """Jitted training chunks for one task (compiled once, reused for every theta)."""

    def __init__(self, task: DigitsTask, seed: int):
        import jax
        import jax.numpy as jnp

        from keras_velo.packed.update import velo_update

        self.task, self.seed = task, seed
        images, labels = _digits()
        self.images, self.labels = jnp.asarray(images), jnp.asarray(labels)
        model = _build_model(task, seed)
        self.initial = [jnp.asarray(v.value) for v in model.trainable_variables]
        self.shapes = [tuple(v.shape) for v in model.trainable_variables]

        def loss_fn(params, x, y):
            logits, _ = model.stateless_call(params, [], x)
            logp = jax.nn.log_softmax(logits, axis=-1)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        grad_fn = jax.value_and_grad(loss_fn)

        def velo_step(theta, params, state, index):
            loss, grads = grad_fn(params, self.images[index], self.labels[index])
            params, state, _ = velo_update(theta, state, params, grads, loss)
            return params, state

        def adam_step(params, m, v, t, index):
            loss, grads = grad_fn(params, self.images[index], self.labels[index])
            t = t + 1
            b1, b2 = 0.9, 0.999
            m = [b1 * a + (1 - b1) * g for a, g in zip(m, grads)]
            v = [b2 * a + (1 - b2) * g * g for a, g in zip(v, grads)]
            # As Keras' Adam: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), epsilon 1e-7.
            t_float = t.astype(jnp.float32)
            lr_t = ADAM_LEARNING_RATE * jnp.sqrt(1 - b2**t_float) / (1 - b1**t_float)
            params = [p - lr_t * a / (jnp.sqrt(b) + 1e-7) for p, a, b in zip(params, m, v)]
            return params, m, v, t

        # One jitted step per call (a lax.scan over steps runs convolutions
        # ~8x slower on CPU).
        self.velo_step = jax.jit(velo_step)
        self.adam_step = jax.jit(adam_step)
        self.full_loss = jax.jit(lambda params: loss_fn(params, self.images, self.labels))

    def batches(self, steps: int) -> np.ndarray:
        """`[steps, batch]` indices: shuffled epochs from a seeded generator."""
        rng = np.random.default_rng(1000 + self.seed)
        size = self.images.shape[0]
        needed = steps * self.task.batch_size
        order = np.concatenate([rng.permutation(size) for _ in range(needed // size + 1)])
        return order[:needed].reshape(steps, self.task.batch_size).astype(np.int32)

    def train_velo(self, theta, steps: int) -> float:
        from keras_velo.packed.update import init_state, to_tensors

        state = to_tensors(init_state(theta, self.shapes, num_steps=steps))
        params = list(self.initial)
        for index in self.batches(steps):
            params, state = self.velo_step(theta, params, state, index)
        return float(self.full_loss(params))

    def train_adam(self, steps: int) -> float:
        import jax.numpy as jnp

        params = list(self.initial)
        m = [jnp.zeros_like(p) for p in params]
        v, t = list(m), jnp.zeros([], jnp.int32)
        for index in self.batches(steps):
            params, m, v, t = self.adam_step(params, m, v, t, index)
        return float(self.full_loss(params))


def _jax_theta(theta):
    import jax.numpy as jnp

    from keras_velo.maths.theta import flatten_theta, unflatten_theta

    return unflatten_theta({k: jnp.asarray(v) for k, v in flatten_theta(theta).items()})


def _stage_1(quick: bool):
    peaks, decays = STAGE_1["peak_lr_mult"], STAGE_1["weight_decay"]
    if quick:
        peaks, decays = peaks[:2], decays[1:2]
    return [dict(peak_lr_mult=p, weight_decay=w) for p, w in itertools.product(peaks, decays)]


def _stage_2(best: dict, quick: bool):
    candidates = []
    directions = STAGE_2["direction"][: 2 if quick else None]
    for (group, decay), boost in itertools.product(directions, STAGE_2["small_tensor_boost"]):
        candidates.append(dict(best, direction_group=group, direction_decay=decay,
                               small_tensor_boost=boost))
    return candidates


def _describe(constants: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in constants.items())


def evaluate(constants_list, tasks, horizons, runners, seed=0):
    """Final training losses `{(task, horizon): {"adam": x, 0: x_0, 1: x_1, ...}}`.

    Entry i is VeLO with `bootstrap_theta(**constants_list[i])`; "adam" is
    Adam(1e-3) from the same initialisation on the same batches.
    """
    results = {}
    for name in tasks:
        if name not in runners:
            runners[name] = _Runner(TASKS[name], seed)
        for horizon in horizons:
            results[(name, horizon)] = {"adam": runners[name].train_adam(horizon)}
    for i, constants in enumerate(constants_list):
        theta = _jax_theta(bootstrap_theta(**constants))
        for name in tasks:
            for horizon in horizons:
                results[(name, horizon)][i] = runners[name].train_velo(theta, horizon)
    return results


def _score(results, i):
    """Mean log(VeLO / Adam) over the runs (< 0: VeLO lower), with losses floored."""
    ratios = [
        math.log(max(r[i], LOSS_FLOOR) / max(r["adam"], LOSS_FLOOR)) for r in results.values()
    ]
    return float(np.mean(ratios)), sum(r[i] <= r["adam"] for r in results.values())


def _search_stage(title, candidates, tasks, runners, seed, quick):
    """Runs one stage, prints its ranking, returns the best stable candidate."""
    started = time.time()
    horizons = SEARCH_HORIZONS[:1] if quick else SEARCH_HORIZONS
    results = evaluate(candidates, tasks, horizons, runners, seed)
    stability = {}
    if not quick:
        stability = evaluate(candidates, [STABILITY_TASK], [STABILITY_HORIZON], runners, seed)
    print(f"{title}: {len(candidates)} candidates x {len(tasks)} tasks x {horizons} steps"
          + ("" if quick else f", + {STABILITY_TASK} at {STABILITY_HORIZON} steps")
          + f" ({time.time() - started:.0f} s)")
    ranked = []
    for i, constants in enumerate(candidates):
        score, wins = _score(results, i)
        row = stability.get((STABILITY_TASK, STABILITY_HORIZON))
        stable = row is None or row[i] <= STABILITY_MARGIN * row["adam"]
        ranked.append((not stable, score, i))
        long_run = "" if row is None else f"  long run {row[i]:.4f} (Adam {row['adam']:.4f})"
        print(f"  score {score:+.3f} wins {wins}/{len(results)}{long_run}"
              f"{'' if stable else ' UNSTABLE'}  {_describe(constants)}")
    best = candidates[min(ranked)[2]]
    print(f"  best: {_describe(best)}")
    return best


def print_table(results, labels):
    """One row per (task, horizon): Adam's final loss, then each VeLO's."""
    print(f"{'task':24s} {'steps':>5s} {'Adam(1e-3)':>10s} "
          + " ".join(f"{label:>12s}" for label in labels))
    for (task, horizon), row in results.items():
        cells = " ".join(f"{row[i]:12.4g}" for i in range(len(labels)))
        print(f"{task:24s} {horizon:5d} {row['adam']:10.4g} {cells}")


def run_search(quick: bool = False, seed: int = 0):
    """The two-stage search (printed), then the defaults against Adam on every task."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "meta.bootstrap_tuning runs VeLO under jax.jit: set KERAS_BACKEND=jax "
            f"(the backend is {keras.backend.backend()!r})."
        )
    started = time.time()
    print("score = mean log(VeLO loss / Adam(1e-3) loss), losses floored at "
          f"{LOSS_FLOOR}; < 0 is better than Adam. wins = runs where VeLO <= Adam. "
          f"UNSTABLE: the long run ends above {STABILITY_MARGIN} x Adam's loss.")
    tasks, runners = list(TASKS), {}
    best = _search_stage("stage 1 (step size, weight decay)", _stage_1(quick), tasks,
                         runners, seed, quick)
    best = _search_stage("stage 2 (direction, small-tensor boost)", _stage_2(best, quick),
                         tasks, runners, seed, quick)
    defaults = {k: getattr(DEFAULT_CONSTANTS, k) for k in best}
    print(f"search result: {_describe(best)}")
    print(f"shipped:       {_describe(defaults)}")
    horizons = SEARCH_HORIZONS[:1] if quick else HORIZONS
    final = evaluate([{}], tasks, horizons, runners, seed)
    print("final training loss (all 1,797 images) after the same steps, init and batches:")
    print_table(final, ["VeLO bundled"])
    print(f"total {time.time() - started:.0f} s")
    return best, final


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m meta.bootstrap_tuning",
        description="Re-run the search that chose the bootstrap theta's constants; writes nothing.",
    )
    parser.add_argument("--quick", action="store_true", help="a smaller search (smoke test)")
    args = parser.parse_args(argv)
    run_search(quick=args.quick)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
