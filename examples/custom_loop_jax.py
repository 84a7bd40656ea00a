"""VeLO in a hand-written JAX training loop (no `fit`): pass the loss to every update.

    python examples/custom_loop_jax.py --steps 300

The optimizer is used functionally: `stateless_apply(..., loss=loss)` inside
`jax.jit`, the way Keras' own JAX trainer uses optimizers.
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
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
    optimizer.build(model.trainable_variables)

    def compute_loss(trainable, non_trainable, xb, yb):
        logits, _ = model.stateless_call(trainable, non_trainable, xb, training=True)
        return loss_fn(yb, logits)

    @jax.jit
    def train_step(trainable, non_trainable, optimizer_values, xb, yb):
        loss, grads = jax.value_and_grad(compute_loss)(trainable, non_trainable, xb, yb)
        trainable, optimizer_values = optimizer.stateless_apply(
            optimizer_values, grads, trainable, loss=loss
        )
        return trainable, optimizer_values, loss

    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    optimizer_values = [v.value for v in optimizer.variables]
    rng = np.random.default_rng(0)
    for step in range(steps):
        batch = rng.integers(0, len(x), batch_size)
        trainable, optimizer_values, loss = train_step(
            trainable, non_trainable, optimizer_values, x[batch], y[batch]
        )
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {float(loss):.4f}")
    # Write the final values back into the Keras variables.
    for variable, value in zip(model.trainable_variables, trainable):
        variable.assign(value)
    for variable, value in zip(optimizer.variables, optimizer_values):
        variable.assign(value)
    return float(loss)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weights", default="bundled")
    args = parser.parse_args()
    enable_compilation_cache()
    main(args.steps, weights=args.weights)
