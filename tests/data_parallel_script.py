"""Run by test_data_parallel.py in a fresh process with 4 fake CPU devices.

Trains the same model with VeLO on one device and with
`keras.distribution.DataParallel` over 4 devices; prints the largest
difference between the two sets of final weights, as JSON.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_velo  # noqa: E402

theta_dir = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(128, 6)).astype("float32")
y = (x[:, :1] - 0.5 * x[:, 1:2]).astype("float32")
init = None


def train():
    global init
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
    )
    if init is None:
        init = [rng.normal(size=w.shape).astype("float32") * 0.5 for w in model.get_weights()]
    model.set_weights(init)
    model.compile(optimizer=keras_velo.VeLO(total_steps=16, weights=theta_dir), loss="mse")
    keras_velo.attach(model)
    model.fit(x, y, batch_size=32, epochs=4, shuffle=False, verbose=0)
    return [np.asarray(w) for w in model.get_weights()], model


single, _ = train()
keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
parallel, model = train()
sharding = str(model.trainable_variables[0].value.sharding)
print(
    json.dumps(
        {
            "devices": len(jax.devices()),
            "max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in zip(single, parallel)),
            "max_abs_change": max(float(np.max(np.abs(a - b))) for a, b in zip(single, init)),
            "sharding": sharding,
        }
    )
)
