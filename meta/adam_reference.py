"""Reference runs of Adam(1e-3) on meta-training and meta-validation tasks, computed once and cached.

"Does the learned optimizer end above Adam?" is what users check first. A
reference is the normalised training-loss curve (`loss / initial loss`,
clipped to [0, max_ratio], as `meta.estimators.normalised_loss`) of
`optax.adam(1e-3)` (Keras' default Adam) on a task from the same initial
weights, for `steps` steps on the batches of `data_seed`. With a constant
learning rate the curve does not depend on how long the run will be, so one
curve of the longest horizon serves every member episode on that config
(the member's own batch order differs; the curve is smoothed over
`CURVE_STRIDE` steps).

`ReferenceStore(directory)` keeps them as small JSON files, one per
(config, steps, data seed, learning rate), named by a hash of those: the
committed ones (`meta/references/`) make meta-validation's "ends above
Adam" check reproducible without rerunning Adam. `compute_reference` trains
one (JAX; called on the workers, `meta.particles.ParticleRunner`).
"""

import hashlib
import json
import os
import pathlib

import numpy as np

LEARNING_RATE = 1e-3
CURVE_STRIDE = 10
# Committed with the repository; KERAS_VELO_REFERENCE_DIR puts them elsewhere.
DEFAULT_DIRECTORY = pathlib.Path(__file__).resolve().parent / "references"
_VERSION = 1  # bump if the training loop or the normalisation changes


def reference_key(config, steps, data_seed, learning_rate=LEARNING_RATE):
    """The file stem of a reference: a hash of what it depends on."""
    text = json.dumps({"config": config, "steps": int(steps), "data_seed": int(data_seed),
                       "learning_rate": float(learning_rate), "version": _VERSION},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def summarise_curve(normalised, final_fraction=0.1):
    """`{"final", "mean", "curve"}` of a normalised curve: meta-validation's two numbers and
    the curve averaged over windows of `CURVE_STRIDE` steps."""
    values = np.asarray(normalised, np.float64)
    last = max(1, int(round(final_fraction * values.size)))
    windows = [values[i:i + CURVE_STRIDE].mean() for i in range(0, values.size, CURVE_STRIDE)]
    return {"final": float(values[-last:].mean()), "mean": float(values.mean()),
            "curve": [round(float(v), 5) for v in windows]}


def value_at(record, positions):
    """The reference's smoothed normalised loss at each of `positions` (0-based steps)."""
    curve = np.asarray(record["curve"], np.float64)
    index = np.minimum(np.asarray(positions) // CURVE_STRIDE, curve.size - 1)
    return curve[index]


def compute_reference(task, steps, data_seed, max_ratio=1.5, learning_rate=LEARNING_RATE):
    """Trains `task` (`meta.functional_task.FunctionalTask`) with Adam for `steps`; its normalised losses."""
    import jax
    import jax.numpy as jnp
    import optax

    from meta.estimators import normalised_loss

    optimizer = optax.adam(learning_rate)

    @jax.jit
    def step(trainable, non_trainable, opt_state, x, y):
        loss, grads, non_trainable = task.loss_and_grads(trainable, non_trainable, x, y)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return loss, optax.apply_updates(trainable, updates), non_trainable, opt_state

    trainable, non_trainable = task.initial_state(1.0)
    opt_state = optimizer.init(trainable)
    batches = task.train_batches(data_seed)
    losses = []
    for _ in range(int(steps)):
        x, y = next(batches)
        loss, trainable, non_trainable, opt_state = step(trainable, non_trainable, opt_state, x, y)
        losses.append(loss)
    losses = np.asarray(jnp.stack(losses), np.float64)
    return np.asarray(normalised_loss(losses, losses[0], max_ratio), np.float64)


class ReferenceStore:
    """Adam references as JSON files in `directory` (created when first written)."""

    def __init__(self, directory=None):
        self.directory = pathlib.Path(
            directory or os.environ.get("KERAS_VELO_REFERENCE_DIR") or DEFAULT_DIRECTORY)

    def path(self, key):
        return self.directory / f"{key}.json"

    def get(self, key):
        path = self.path(key)
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def put(self, key, record):
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path(key).with_suffix(".tmp")
        temporary.write_text(json.dumps(record) + "\n")
        os.replace(temporary, self.path(key))


def ensure_references(pool, specs, store=None):
    """`{key: record}` for every `(config, steps, data_seed)` of `specs`: from `store`, the rest
    trained on `pool`'s workers (`compute_references`) and written to `store`."""
    store = store or ReferenceStore()
    records, missing = {}, {}
    for config, steps, data_seed in specs:
        key = reference_key(config, steps, data_seed)
        record = store.get(key)
        if record is not None:
            records[key] = record
        else:
            missing[key] = (config, steps, data_seed)
    if missing:
        computed = pool.compute_references(list(missing.values()))
        for key, record in computed.items():
            store.put(key, record)
        records.update(computed)
    return records
