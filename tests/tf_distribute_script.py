"""Run by test_tf_distribute.py in a fresh process with 2 logical CPUs.

Trains the same model with VeLO on one device and under
`tf.distribute.MirroredStrategy` over 2 replicas, with `fit` and with a
custom loop (`strategy.run`, the loss passed to `apply_gradients`); prints
the largest difference between the final weights, as JSON.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

import keras_velo  # noqa: E402

theta_dir = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(64, 6)).astype("float32")
y = (x[:, :1] - 0.5 * x[:, 1:2]).astype("float32")
init = None


def new_model():
    global init
    model = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(16, activation="tanh"), keras.layers.Dense(1)]
    )
    if init is None:
        init = [rng.normal(size=w.shape).astype("float32") * 0.5 for w in model.get_weights()]
    model.set_weights(init)
    return model


def fit(strategy):
    with strategy.scope():
        model = new_model()
        model.compile(optimizer=keras_velo.VeLO(total_steps=8, weights=theta_dir), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0,
                        callbacks=[keras_velo.VeLOCallback()])
    return [np.asarray(w) for w in model.get_weights()], history.history["loss"]


def custom_loop(strategy):
    with strategy.scope():
        model = new_model()
        optimizer = keras_velo.VeLO(total_steps=8, weights=theta_dir)
        optimizer.build(model.trainable_variables)

    def replica_step(xb, yb):
        with tf.GradientTape() as tape:
            per_example = keras.losses.mean_squared_error(yb, model(xb, training=True))
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=16)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables), loss=loss)

    @tf.function
    def step(batch):
        strategy.run(replica_step, args=batch)

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    for _ in range(2):
        for batch in strategy.experimental_distribute_dataset(dataset):
            step(batch)
    return [np.asarray(w) for w in model.get_weights()]


def largest(a, b):
    return max(float(np.max(np.abs(u - v))) for u, v in zip(a, b))


one = tf.distribute.get_strategy()
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
fit_one, losses_one = fit(one)
fit_two, losses_two = fit(mirrored)
loop_one = custom_loop(one)
loop_two = custom_loop(mirrored)
print(
    json.dumps(
        {
            "replicas": mirrored.num_replicas_in_sync,
            "fit_change": largest(fit_one, init),
            "fit_diff": largest(fit_one, fit_two),
            "loss_diff": max(abs(a - b) for a, b in zip(losses_one, losses_two)),
            "loop_change": largest(loop_one, init),
            "loop_diff": largest(loop_one, loop_two),
            "loop_vs_fit": largest(loop_one, fit_one),
        }
    )
)
