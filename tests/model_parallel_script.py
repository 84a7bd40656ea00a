"""Run by test_model_parallel.py in a fresh process with 4 host devices (JAX).

Trains an MLP 64-512-512-10 with VeLO on one device and under
`keras.distribution.ModelParallel` on a 2x2 ("batch", "model") mesh (Dense
kernels `(None, "model")`, biases `("model",)`); compiles one optimizer
update of VeLO and of Adam on the sharded variables. Prints, as JSON, the
losses, the largest weight difference, the optimizer state on device 0
(theta left out) and the collectives in each compiled update.
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_velo  # noqa: E402
from benchmarks.multi_device import collectives_in_hlo  # noqa: E402

theta_dir = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 64)).astype("float32")
y = rng.integers(0, 10, 128)


def model_parallel():
    mesh = keras.distribution.DeviceMesh((2, 2), ["batch", "model"], devices=jax.devices())
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    layout_map[".*dense.*bias"] = ("model",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def new_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(512, activation="relu", name="dense_a"),
        keras.layers.Dense(512, activation="relu", name="dense_b"),
        keras.layers.Dense(10, name="head"),
    ])


def train(distribution):
    keras.distribution.set_distribution(distribution)
    model = new_model()
    model.compile(keras_velo.VeLO(total_steps=8, weights=theta_dir, weight_decay=1e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0,
                        callbacks=[keras_velo.VeLOCallback()])
    saved_back = None
    if distribution is not None:  # a save restores the sharded state, laid out again
        path = os.path.join(tempfile.mkdtemp(), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        saved_back = all(
            np.array_equal(np.asarray(a.value), np.asarray(b.value))
            and a.value.sharding.spec == b.value.sharding.spec
            for a, b in zip(model.optimizer.variables, restored.optimizer.variables)
        ) and len(model.optimizer.variables) == len(restored.optimizer.variables)
    keras.distribution.set_distribution(None)
    if distribution is not None:  # a packed VeLO refuses the sharded state, saying why
        try:
            keras.saving.load_model(path)
            refused = ""
        except ValueError as error:
            refused = str(error)
        saved_back = {"restored": saved_back, "refused_on_one_device": refused}
    return history.history["loss"], [np.asarray(w) for w in model.get_weights()], saved_back


def one_update(make_optimizer):
    """(state bytes on device 0, whole state bytes, collectives) of one compiled update."""
    keras.distribution.set_distribution(model_parallel())
    model = new_model()
    optimizer = make_optimizer()
    optimizer.build(model.trainable_variables)
    device = jax.devices()[0]
    on_device = whole = 0
    for variable in optimizer.variables:
        if "theta_" not in variable.path:
            whole += variable.value.nbytes
            on_device += sum(s.data.nbytes for s in variable.value.addressable_shards
                             if s.device == device)
    trainable = [v.value for v in model.trainable_variables]
    grads = [jax.device_put(np.full(v.shape, 0.01, np.float32), v.sharding) for v in trainable]
    kwargs = {"loss": 1.0} if isinstance(optimizer, keras_velo.VeLO) else {}
    update = jax.jit(lambda o, g, t: optimizer.stateless_apply(o, g, t, **kwargs))
    text = update.lower([v.value for v in optimizer.variables], grads, trainable).compile().as_text()
    keras.distribution.set_distribution(None)
    return on_device, whole, {k: v for k, v in collectives_in_hlo(text).items() if v}


def refusal_of_long_horizons():
    """The error a horizon beyond max_training_steps (accumulation) gives, or ''."""
    keras.distribution.set_distribution(model_parallel())
    model = new_model()
    model.compile(keras_velo.VeLO(total_steps=300_000, weights=theta_dir),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    try:
        model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0,
                  callbacks=[keras_velo.VeLOCallback()])
    except ValueError as error:
        return str(error)
    finally:
        keras.distribution.set_distribution(None)
    return ""


init = [np.asarray(w) for w in new_model().get_weights()]
one_losses, one_weights, _ = train(None)
parallel_losses, parallel_weights, saved_back = train(model_parallel())
velo = one_update(lambda: keras_velo.VeLO(total_steps=8, weights=theta_dir))
adam = one_update(lambda: keras.optimizers.Adam(1e-3))
print(json.dumps({
    "losses": [one_losses, parallel_losses],
    "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, parallel_weights)),
    "max_abs_change": max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, init)),
    "largest_parameter_bytes": max(w.nbytes for w in init),
    "velo": {"state_on_device": velo[0], "state_whole": velo[1], "collectives": velo[2]},
    "adam": {"state_on_device": adam[0], "state_whole": adam[1], "collectives": adam[2]},
    "long_horizon_error": refusal_of_long_horizons(),
    "saved_state_restored": saved_back,
}))
