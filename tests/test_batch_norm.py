"""Scores measure the optimizer: BatchNorm statistics re-estimated before inference-mode scoring.

A model whose BatchNorm sees inputs of mean 5 and standard deviation 3
while its moving statistics still hold what a few steps of momentum 0.99
left (near mean 0, variance 1) scores badly in inference mode, however
well it was trained. `evaluation.batch_norm.reestimate_batch_norm` and the
examples' `finish` must score what the trained weights achieve.
"""

import pathlib
import sys

import keras
import numpy as np
import pytest

from evaluation.batch_norm import batch_norm_layers, reestimate_batch_norm

EXAMPLES_DIR = pathlib.Path(__file__).resolve().parents[1] / "examples"
MEAN, SCALE = 5.0, 3.0


def _data(n=512, seed=0):
    """Inputs of mean 5 and standard deviation 3; the target is the first input standardised."""
    x = (MEAN + SCALE * np.random.default_rng(seed).standard_normal((n, 4))).astype("float32")
    y = ((x[:, :1] - MEAN) / SCALE).astype("float32")
    return x, y


def _model(nested=False):
    """BatchNorm, then a Dense(1) that reads the first normalised input: exact in training mode."""
    inputs = keras.Input((4,))
    norm = keras.layers.BatchNormalization(center=False, scale=False)
    if nested:
        norm = keras.Sequential([keras.Input((4,)), norm], name="inner")
    head = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant([[1.0], [0], [0], [0]]),
                              bias_initializer="zeros")
    return keras.Model(inputs, head(norm(inputs)))


def _mse(model, x, y, training):
    prediction = keras.ops.convert_to_numpy(model(x, training=training))
    return float(np.mean((prediction - y) ** 2))


@pytest.mark.parametrize("nested", [False, True])
def test_reestimated_statistics_are_the_training_data_s(nested):
    x, y = _data()
    model = _model(nested)
    layer, = batch_norm_layers(model)
    assert _mse(model, x, y, training=False) > 10  # moving statistics at their init: the lag
    used = reestimate_batch_norm(model, [x[i:i + 128] for i in range(0, len(x), 128)])
    assert used == len(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean), x.mean(0), rtol=1e-5)
    # the mean of the batch variances: within (1 - 1/128) of the population's, as batches of 128 give
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_variance), x.var(0), rtol=0.05)
    assert layer.momentum == 0.99  # restored
    assert _mse(model, x, y, training=False) < 5e-3  # what training mode gives, up to the variance


def test_a_model_without_batch_norm_is_left_alone():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    before = [keras.ops.convert_to_numpy(v) for v in model.weights]
    assert batch_norm_layers(model) == [] and reestimate_batch_norm(model, [np.zeros((2, 4))]) == 0
    assert all((a == keras.ops.convert_to_numpy(b)).all() for a, b in zip(before, model.weights))
    with pytest.raises(ValueError, match="at least one batch"):
        reestimate_batch_norm(_model(), [])


def test_examples_score_the_loss_the_optimizer_minimised_not_the_lagging_statistics(monkeypatch):
    """`examples/_common.finish` (the scoring of compare.py): the old scoring, `evaluate` with the
    moving statistics, reads this model's training loss as > 1; the loss it minimised is ~0."""
    monkeypatch.syspath_prepend(str(EXAMPLES_DIR))
    import _common

    x, y = _data()
    args = _common.parse_arguments("test", steps=2, epochs=1, batch_size=128,
                                   argv=["--optimizer", "adam", "--learning-rate", "1e-9"])
    model = _model()
    model.compile(optimizer=_common.make_optimizer(args), loss="mse")
    recorder = _common.loss_recorder(args)
    history = model.fit(_common.BatchStream(x, y, 128, args.steps, args.seed), epochs=1, steps_per_epoch=2,
                        validation_data=(x, y), callbacks=[recorder], verbose=0)
    assert history.history["val_loss"][-1] > 1  # Keras' own validation: moving statistics, lagging
    record = _common.finish("lagging", args, model, recorder, history, data="generated",
                            train_evaluation=(x, y, 128), validation_data=(x, y, 128),
                            metric="loss", higher_is_better=False)
    assert record["final_train_loss_moving_statistics"] > 1
    assert record["validation_moving_statistics"]["loss"] > 1
    assert record["final_train_loss"] < 5e-3 and record["metric"]["value"] < 5e-3
    assert record["train_loss_mode"] == ("inference mode, BatchNorm statistics re-estimated on 512 "
                                         "training examples")
    sys.modules.pop("_common", None)
