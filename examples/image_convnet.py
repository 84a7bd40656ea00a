"""Image classification with a small convnet on Fashion-MNIST, trained by VeLO or Adam.

Task: sort 28x28 greyscale photos of clothing (Fashion-MNIST: 60,000
training and 10,000 test images, 10 classes such as "T-shirt", "sneaker",
"bag") into their class.

Data: offline by default, from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`); without it, scikit-learn's 8x8
digits stand in. `--data keras` downloads Fashion-MNIST with
`keras.datasets.fashion_mnist` instead. The test set is the validation set.

Model: two blocks of 3x3 convolution + ReLU + 2x2 max-pooling (32 and 64
filters), dropout, and a linear layer to 10 logits (~20k parameters).
Training uses `--steps` batches of `--batch-size` images, reshuffled on
every pass and split into `--epochs` epochs; the final training loss is
measured on 10,000 training images after training.

    python examples/image_convnet.py                      # VeLO, bundled weights
    python examples/image_convnet.py --optimizer adam --learning-rate 3e-3
    KERAS_BACKEND=torch python examples/image_convnet.py --steps 300 --epochs 1
    python examples/image_convnet.py --json convnet_velo.json --verbose 0

`python examples/compare.py --examples image_convnet` runs it with VeLO,
Adam(1e-3) and tuned Adam side by side.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "image_convnet"


def build_model(input_shape, num_classes, seed):
    """A two-block convnet from `[h, w, 1]` images to `num_classes` logits."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dropout(0.2),
            keras.layers.Dense(num_classes),
        ],
        name="convnet",
    )


def main(argv=None):
    args = _common.parse_arguments(
        __doc__, steps=600, epochs=3, batch_size=128, image_data=True, argv=argv
    )
    data, (x_train, y_train), (x_test, y_test) = _common.load_image_data(args.data)
    print(f"{EXAMPLE}: {data}, train {len(x_train)}, test {len(x_test)}, "
          f"backend {keras.backend.backend()}, {_common.optimizer_label(args)}")

    model = build_model(x_train.shape[1:], 10, args.seed)
    model.compile(
        optimizer=_common.make_optimizer(args),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=_common.jit_compile(),
    )
    x_val, y_val, val_batch = _common.evaluation_split(x_test, y_test, args)
    recorder = _common.loss_recorder(args)
    history = model.fit(
        _common.BatchStream(x_train, y_train, args.batch_size, args.steps, args.seed),
        epochs=args.epochs,
        steps_per_epoch=args.steps // args.epochs,
        shuffle=False,
        validation_data=(x_val, y_val),
        validation_batch_size=val_batch,
        callbacks=[recorder, *_common.velo_callbacks(model)],
        verbose=args.verbose,
    )
    return _common.finish(
        EXAMPLE, args, model, recorder, history,
        data=data,
        train_evaluation=_common.evaluation_split(x_train, y_train, args, limit=10_000),
        validation_data=(x_val, y_val, val_batch),
        metric="accuracy",
        higher_is_better=True,
    )


if __name__ == "__main__":
    main()
