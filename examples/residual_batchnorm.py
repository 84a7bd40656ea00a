"""A small ResNet with batch normalisation classifying Fashion-MNIST.

Task: sort 28x28 greyscale clothing images (Fashion-MNIST, 10 classes) into
their class, as in `image_convnet.py`, with a deeper network whose training
depends on residual connections and batch statistics: the kind of model the
bundled VeLO weights were not tuned on.

Data: offline by default, from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`); without it, scikit-learn's 8x8
digits stand in. `--data keras` downloads Fashion-MNIST with
`keras.datasets.fashion_mnist` instead. The test set is the validation set.

Model: a 3x3 convolution stem (16 filters), then three stages of one
residual block each (16, 32 and 64 filters; the last two halve the image
with stride 2). A block is conv-BN-ReLU-conv-BN added to its input (through
a 1x1 convolution + BN where the shape changes), then ReLU. Global average
pooling and a linear layer give 10 logits (~80k parameters, 9 convolutions,
each followed by BatchNormalization). The moving statistics use momentum
0.9 rather than Keras' 0.99, which would leave them near their initial
values after a few hundred steps. The final training loss is measured in
inference mode (with those moving statistics) on 10,000 training images.

    python examples/residual_batchnorm.py                 # VeLO, bundled weights
    python examples/residual_batchnorm.py --optimizer adam --learning-rate 3e-3
    KERAS_BACKEND=torch python examples/residual_batchnorm.py --steps 200 --epochs 2
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "residual_batchnorm"
STAGE_FILTERS = (16, 32, 64)
BATCH_NORM_MOMENTUM = 0.9  # Keras' 0.99 leaves the moving statistics near their init after a few hundred steps


def conv_bn(x, filters, kernel_size, strides=1):
    """Convolution without bias (BatchNormalization supplies the shift), then BN."""
    x = keras.layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)(x)
    return keras.layers.BatchNormalization(momentum=BATCH_NORM_MOMENTUM)(x)


def residual_block(x, filters, strides):
    """ReLU(conv-BN-ReLU-conv-BN(x) + shortcut(x)); the shortcut projects when the shape changes."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, 1, strides)
    y = keras.layers.Activation("relu")(conv_bn(x, filters, 3, strides))
    y = conv_bn(y, filters, 3)
    return keras.layers.Activation("relu")(keras.layers.Add()([y, shortcut]))


def build_model(input_shape, num_classes, seed):
    """Images `[batch, h, w, 1]` -> `num_classes` logits."""
    keras.utils.set_random_seed(seed)
    images = keras.Input(input_shape)
    x = keras.layers.Activation("relu")(conv_bn(images, STAGE_FILTERS[0], 3))
    for stage, filters in enumerate(STAGE_FILTERS):
        x = residual_block(x, filters, strides=1 if stage == 0 else 2)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(images, keras.layers.Dense(num_classes)(x), name="small_resnet")


def main(argv=None):
    args = _common.parse_arguments(
        __doc__, steps=300, epochs=3, batch_size=128, image_data=True, argv=argv
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
