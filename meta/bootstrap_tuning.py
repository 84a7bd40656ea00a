"""The small search behind the bootstrap theta's constants (`--tune`).

Runs VeLO with `bootstrap_theta(**constants)` through the pure maths
(`keras_velo.update.velo_update`, jitted with JAX) and Adam(1e-3) on the
same tasks, data, initialisations and numbers of steps, and prints the
final full-data training losses. Tasks are small classifiers of
scikit-learn's bundled 8x8 digits (1,797 images, no download), trained
with minibatches; the horizons cover ~200 to ~2000 steps.

Needs the JAX backend (`KERAS_BACKEND=jax`) and scikit-learn. Run with

    KERAS_BACKEND=jax python -m meta.bootstrap_theta --tune

The default search takes a few minutes on 2 CPU cores; `--quick` is a
smoke test. Nothing is written: the chosen constants are copied by hand
into `BootstrapConstants`' defaults.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np

from meta.bootstrap_theta import DEFAULT_CONSTANTS, bootstrap_theta

ADAM_LEARNING_RATE = 1e-3
CHUNK_STEPS = 100  # steps per jitted lax.scan call; horizons are multiples of it


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
HORIZONS = (200, 600, 2000)

# The grid searched by `run_search` (each entry overrides DEFAULT_CONSTANTS).
SEARCH_GRID = {
    "peak_lr_mult": (5.0, 10.0, 20.0, 40.0),
    "direction": (("m_rsqrt_rms", 0), ("m_rsqrt_rms", 1), ("fac_mom_mult", 0)),
    "small_tensor_boost": (1.0, 1000.0),
}


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

        from keras_velo.update import velo_update

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

        def velo_chunk(theta, carry, batches):
            def body(carry, index):
                params, state = carry
                loss, grads = grad_fn(params, self.images[index], self.labels[index])
                params, state, _ = velo_update(theta, state, params, grads, loss)
                return (params, state), loss

            return jax.lax.scan(body, carry, batches)

        def adam_chunk(carry, batches):
            def body(carry, index):
                params, m, v, t = carry
                loss, grads = grad_fn(params, self.images[index], self.labels[index])
                t = t + 1
                b1, b2 = 0.9, 0.999
                m = [b1 * a + (1 - b1) * g for a, g in zip(m, grads)]
                v = [b2 * a + (1 - b2) * g * g for a, g in zip(v, grads)]
                # Keras' Adam: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t), eps 1e-7.
                tf = t.astype(jnp.float32)
                lr_t = ADAM_LEARNING_RATE * jnp.sqrt(1 - b2**tf) / (1 - b1**tf)
                params = [p - lr_t * a / (jnp.sqrt(b) + 1e-7) for p, a, b in zip(params, m, v)]
                return (params, m, v, t), loss

            return jax.lax.scan(body, carry, batches)

        self.velo_chunk = jax.jit(velo_chunk)
        self.adam_chunk = jax.jit(adam_chunk)
        self.full_loss = jax.jit(lambda params: loss_fn(params, self.images, self.labels))

    def batches(self, steps: int) -> np.ndarray:
        """`[steps, batch]` indices: shuffled epochs from a seeded generator."""
        rng = np.random.default_rng(1000 + self.seed)
        size = self.images.shape[0]
        needed = steps * self.task.batch_size
        order = np.concatenate([rng.permutation(size) for _ in range(needed // size + 1)])
        return order[:needed].reshape(steps, self.task.batch_size).astype(np.int32)

    def train_velo(self, theta, steps: int) -> float:
        from keras_velo.update import init_state, to_tensors

        state = to_tensors(init_state(theta, self.shapes, num_steps=steps))
        carry = (list(self.initial), state)
        batches = self.batches(steps)
        for start in range(0, steps, CHUNK_STEPS):
            carry, _ = self.velo_chunk(theta, carry, batches[start : start + CHUNK_STEPS])
        return float(self.full_loss(carry[0]))

    def train_adam(self, steps: int) -> float:
        import jax.numpy as jnp

        zeros = [jnp.zeros_like(p) for p in self.initial]
        carry = (list(self.initial), zeros, list(zeros), jnp.zeros([], jnp.int32))
        batches = self.batches(steps)
        for start in range(0, steps, CHUNK_STEPS):
            carry, _ = self.adam_chunk(carry, batches[start : start + CHUNK_STEPS])
        return float(self.full_loss(carry[0]))


def _jax_theta(theta):
    import jax.numpy as jnp

    from keras_velo.theta import flatten_theta, unflatten_theta

    return unflatten_theta({k: jnp.asarray(v) for k, v in flatten_theta(theta).items()})


def _grid_constants(quick: bool):
    grid = SEARCH_GRID
    if quick:
        grid = {key: values[:2] for key, values in grid.items()}
    for peak, (group, decay), boost in itertools.product(
        grid["peak_lr_mult"], grid["direction"], grid["small_tensor_boost"]
    ):
        yield dict(
            peak_lr_mult=peak, direction_group=group, direction_decay=decay,
            small_tensor_boost=boost,
        )


def _describe(constants: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in constants.items())


def evaluate(constants_list, tasks=None, horizons=HORIZONS, seed=0, runners=None):
    """Final training losses: `{(task, horizon): {"adam": x, i: x_i}}` for each constants i."""
    tasks = tasks or list(TASKS)
    runners = runners if runners is not None else {}
    results = {}
    for name in tasks:
        runner = runners.get(name) or _Runner(TASKS[name], seed)
        runners[name] = runner
        for horizon in horizons:
            results[(name, horizon)] = {"adam": runner.train_adam(horizon)}
    for i, constants in enumerate(constants_list):
        theta = _jax_theta(bootstrap_theta(**constants))
        for name in tasks:
            for horizon in horizons:
                results[(name, horizon)][i] = runners[name].train_velo(theta, horizon)
    return results


def _score(results, i):
    """Mean log(VeLO / Adam) over the runs (negative: VeLO lower) and the win count."""
    ratios = [math.log(r[i] / r["adam"]) for r in results.values()]
    return float(np.mean(ratios)), sum(x <= 0 for x in ratios)


def print_table(results, labels):
    keys = list(results)
    header = f"{'task':24s} {'steps':>5s} {'Adam(1e-3)':>10s} " + " ".join(
        f"{label:>10s}" for label in labels
    )
    print(header)
    for task, horizon in keys:
        row = results[(task, horizon)]
        cells = " ".join(f"{row[i]:10.4f}" for i in range(len(labels)))
        print(f"{task:24s} {horizon:5d} {row['adam']:10.4f} {cells}")


def run_search(quick: bool = False, seed: int = 0):
    """Grid search (printed), then the defaults against Adam on every task and horizon."""
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            "--tune runs VeLO under jax.jit: set KERAS_BACKEND=jax "
            f"(the backend is {keras.backend.backend()!r})."
        )
    started = time.time()
    candidates = list(_grid_constants(quick))
    search_tasks = list(TASKS)[:2]
    horizons = (200, 2000) if not quick else (200,)
    runners = {}
    results = evaluate(candidates, search_tasks, horizons, seed, runners)
    print(f"search: {len(candidates)} candidates x {len(search_tasks)} tasks x horizons "
          f"{horizons} ({time.time() - started:.0f} s)")
    print("score = mean log(VeLO loss / Adam loss) over the runs; wins = runs where VeLO <= Adam")
    ranked = sorted(range(len(candidates)), key=lambda i: _score(results, i)[0])
    for i in ranked:
        score, wins = _score(results, i)
        print(f"  score {score:+.3f} wins {wins}/{len(results)}  {_describe(candidates[i])}")
    best = candidates[ranked[0]]
    print(f"best: {_describe(best)}")
    defaults = dataclasses.asdict(DEFAULT_CONSTANTS)
    print(f"shipped defaults: {_describe(defaults)}")
    final = evaluate([{}], list(TASKS), HORIZONS if not quick else (200,), seed, runners)
    print("final training loss (full data), defaults vs Adam(1e-3), same init/batches/steps:")
    print_table(final, ["VeLO-bndl"])
    print(f"total {time.time() - started:.0f} s")
    return results, final
