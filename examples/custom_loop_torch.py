"""VeLO in a hand-written PyTorch training loop (no `fit`): pass the loss to every update.

    python examples/custom_loop_torch.py --steps 300

Gradients come from `loss.backward()`; the Keras variables' `.value` are
torch Parameters.
"""

import argparse
import os

os.environ["KERAS_BACKEND"] = "torch"

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from keras_velo import VeLO, enable_compilation_cache  # noqa: E402


def main(steps=300, batch_size=64, weights="bundled"):
    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target, dtype=torch.int64)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
    )
    optimizer = VeLO(total_steps=steps, weights=weights)
    variables = model.trainable_variables
    generator = torch.Generator().manual_seed(0)
    for step in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch], training=True), y[batch])
        for v in variables:
            v.value.grad = None
        loss.backward()
        optimizer.apply([v.value.grad for v in variables], variables, loss=loss.detach())
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    return loss.item()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--weights", default="bundled")
    args = parser.parse_args()
    enable_compilation_cache()
    main(args.steps, weights=args.weights)
