"""The optimizers VeLO is compared with: Keras' own, at Keras' defaults, on every backend."""

import keras
import numpy as np
import pytest

from evaluation.alternatives import ALTERNATIVES, USER_CHOICES, warmup_cosine_schedule

KERAS_DEFAULTS = {  # what each constructor gives with no arguments
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "adamw_cosine": keras.optimizers.AdamW,
    "schedule_free_adamw": keras.optimizers.ScheduleFreeAdamW,
    "muon": keras.optimizers.Muon,
}


def test_every_alternative_is_a_keras_optimizer_at_keras_default_rate():
    assert list(ALTERNATIVES) == list(KERAS_DEFAULTS) and set(USER_CHOICES) < set(ALTERNATIVES)
    for name, alternative in ALTERNATIVES.items():
        keras_class = KERAS_DEFAULTS[name]
        optimizer = alternative.make(total_steps=100)
        assert isinstance(optimizer, keras_class)
        default = keras_class()
        assert alternative.default_learning_rate == pytest.approx(float(default.learning_rate))
        assert alternative.default_learning_rate in alternative.grid
        assert list(alternative.grid) == sorted(alternative.grid)
        if name != "adamw_cosine":  # the schedule is the one difference from the constructor's defaults
            assert float(optimizer.learning_rate) == pytest.approx(float(default.learning_rate))
        assert getattr(optimizer, "weight_decay", None) == getattr(default, "weight_decay", None)
    assert float(ALTERNATIVES["muon"].make(3e-3).learning_rate) == pytest.approx(3e-3)
    assert ALTERNATIVES["adam"].label() == "Adam(0.001)"


def test_adamw_cosine_warms_up_linearly_then_decays_to_zero():
    schedule = warmup_cosine_schedule(1e-3, 200)  # warm-up over 10 steps
    values = [float(schedule(step)) for step in (0, 5, 10, 105, 200)]
    assert values[0] == pytest.approx(0.0, abs=1e-12) and values[1] == pytest.approx(5e-4)
    assert values[2] == pytest.approx(1e-3) and values[3] == pytest.approx(5e-4, rel=1e-3)
    assert values[4] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="total_steps"):
        ALTERNATIVES["adamw_cosine"].make()
    with pytest.raises(ValueError, match="> 0"):
        ALTERNATIVES["muon"].make(learning_rate=0.0)


@pytest.mark.parametrize("name", list(ALTERNATIVES))
def test_each_alternative_trains_a_model_in_fit(name):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype("float32")
    y = (x @ rng.standard_normal((6, 1))).astype("float32")
    model = keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(8, activation="tanh", kernel_initializer=keras.initializers.GlorotUniform(1)),
        keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(2)),
    ])
    model.compile(optimizer=ALTERNATIVES[name].make(3e-2, total_steps=40), loss="mse")
    history = model.fit(x, y, batch_size=16, epochs=20, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
