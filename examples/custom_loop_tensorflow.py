"""VeLO in a hand-written TensorFlow training loop (no `fit`): pass the loss to every update.

    python examples/custom_loop_tensorflow.py --steps 300

`jit_compile=True` matters on CPU: VeLO's per-parameter MLP is many small
elementwise operations that XLA fuses into one pass.
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "tensorflow"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_velo import VeLO, enable_compilation_cache  # noqa: E402


def main(steps=300, batch_size=64, weights="bundled"):
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer = VeLO(total_steps=steps, weights=weights)
    optimizer.build(model.trainable_variables)  # create the state outside tf.function

    @tf.function(jit_compile=True)
    def train_step(xb, yb):
        with tf.GradientTape() as tape:
            loss = loss_fn(yb, model(xb, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply(grads, model.trainable_variables, loss=loss)
        return loss

    rng = np.random.default_rng(0)
    for step in range(steps):
        batch = rng.integers(0, len(x), batch_size)
        loss = train_step(x[batch], y[batch])
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    return float(loss)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weights", default="bundled")
    args = parser.parse_args()
    enable_compilation_cache()
    main(args.steps, weights=args.weights)
