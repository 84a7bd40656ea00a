"""A convolutional autoencoder on Fashion-MNIST: squeeze each image through 32 numbers and back.

Task: reconstruct 28x28 greyscale clothing images (Fashion-MNIST) from a
32-dimensional code, minimising the mean squared error per pixel.

Data: offline by default, from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`); without it, scikit-learn's 8x8
digits stand in. `--data keras` downloads Fashion-MNIST with
`keras.datasets.fashion_mnist` instead. Labels are not used; the test
images are the validation set.

Model: encoder of two stride-2 3x3 convolutions (16 and 32 filters, ReLU)
and a linear layer to the 32-number code; decoder mirroring it with a
linear layer, two stride-2 transposed convolutions and a 3x3 convolution
with a sigmoid to pixel values in [0, 1] (~120k parameters). Reported
metric: validation MSE (the loss).

    python examples/autoencoder.py                       # VeLO, bundled weights
    python examples/autoencoder.py --optimizer adam --learning-rate 3e-3
    KERAS_BACKEND=tensorflow python examples/autoencoder.py --steps 300 --epochs 3
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "autoencoder"
CODE_SIZE = 32


def build_model(input_shape, seed):
    """Images `[batch, h, w, 1]` (h, w divisible by 4) -> reconstructions of the same shape."""
    keras.utils.set_random_seed(seed)
    height, width, _ = input_shape
    encoder = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(CODE_SIZE),
        ],
        name="encoder",
    )
    decoder = keras.Sequential(
        [
            keras.Input((CODE_SIZE,)),
            keras.layers.Dense((height // 4) * (width // 4) * 32, activation="relu"),
            keras.layers.Reshape((height // 4, width // 4, 32)),
            keras.layers.Conv2DTranspose(32, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(16, 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid"),
        ],
        name="decoder",
    )
    return keras.Sequential([encoder, decoder], name="autoencoder")


def main(argv=None):
    args = _common.parse_arguments(
        __doc__, steps=600, epochs=3, batch_size=128, image_data=True, argv=argv
    )
    data, (x_train, _), (x_test, _) = _common.load_image_data(args.data)
    print(f"{EXAMPLE}: {data}, train {len(x_train)}, test {len(x_test)}, "
          f"backend {keras.backend.backend()}, {_common.optimizer_label(args)}")

    model = build_model(x_train.shape[1:], args.seed)
    model.compile(
        optimizer=_common.make_optimizer(args),
        loss="mse",
        jit_compile=_common.jit_compile(),
    )
    x_val, _, val_batch = _common.evaluation_split(x_test, x_test, args)
    recorder = _common.loss_recorder(args)
    history = model.fit(
        _common.BatchStream(x_train, x_train, args.batch_size, args.steps, args.seed),
        epochs=args.epochs,
        steps_per_epoch=args.steps // args.epochs,
        shuffle=False,
        validation_data=(x_val, x_val),
        validation_batch_size=val_batch,
        callbacks=[recorder, *_common.velo_callbacks(model)],
        verbose=args.verbose,
    )
    return _common.finish(
        EXAMPLE, args, model, recorder, history,
        data=data,
        train_evaluation=_common.evaluation_split(x_train, x_train, args, limit=10_000),
        validation_data=(x_val, x_val, val_batch),
        metric="loss",
        higher_is_better=False,
    )


if __name__ == "__main__":
    main()
