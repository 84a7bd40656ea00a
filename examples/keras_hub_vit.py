"""Image classification with KerasHub's Vision Transformer backbone on Fashion-MNIST, trained from scratch.

Task: sort 28x28 greyscale photos of clothing (Fashion-MNIST: 60,000
training and 10,000 test images, 10 classes) into their class, as
`image_convnet.py` does, with a Vision Transformer instead of a convnet.

Data: offline by default, from the Debian package `dataset-fashion-mnist`
(`apt-get install dataset-fashion-mnist`); without it, scikit-learn's 8x8
digits stand in. `--data keras` downloads Fashion-MNIST with
`keras.datasets.fashion_mnist` instead. The test set is the validation set.

Model: `keras_hub.models.ViTBackbone` with fresh weights (no preset, no
download): the image cut into 7x7 patches (4x4 for the 8x8 digits), each
projected to width 64, a class token and learned positions in front, 3
pre-norm encoder layers (4-head self-attention, MLP width 128, no
dropout); then a linear layer from the class token's output to 10 logits
(~105k parameters). Training and evaluation follow `image_convnet.py`.

KerasHub is installed without its dependencies (`pip install --no-deps -r
examples/requirements-keras-hub.txt`; that file says why).

    python examples/keras_hub_vit.py                      # VeLO, bundled weights
    python examples/keras_hub_vit.py --optimizer adamw
    KERAS_BACKEND=torch python examples/keras_hub_vit.py --quick
"""

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402

import _common  # noqa: E402

EXAMPLE = "keras_hub_vit"


def patch_size(image_shape):
    """7 for 28x28 images (16 patches), else 4 (the 8x8 digits: 4 patches)."""
    return 7 if image_shape[0] % 7 == 0 and image_shape[1] % 7 == 0 else 4


def build_model(image_shape, num_classes, seed, layers=3, heads=4, width=64, mlp_width=128):
    """Images `[batch, h, w, 1]` -> `num_classes` logits, read off the class token."""
    keras_hub = _common.import_keras_hub()
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.ViTBackbone(
        image_shape=tuple(image_shape),
        patch_size=patch_size(image_shape),
        num_layers=layers,
        num_heads=heads,
        hidden_dim=width,
        mlp_dim=mlp_width,
    )
    images = keras.Input(tuple(image_shape), name="images")
    tokens = backbone(images)  # [batch, 1 + patches, width]; token 0 is the class token
    logits = keras.layers.Dense(num_classes, name="class_logits")(tokens[:, 0, :])
    return keras.Model(images, logits, name="vit")


def main(argv=None):
    args = _common.parse_arguments(
        __doc__, steps=380, epochs=2, batch_size=128, image_data=True, argv=argv
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
        extra={"patch_size": patch_size(x_train.shape[1:])},
    )


if __name__ == "__main__":
    main()
