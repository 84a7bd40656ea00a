"""Training with `model.fit`, VeLO fed by `keras_velo.VeLOCallback` or `attach`, on every backend.

JAX compiles with XLA as always. TensorFlow runs as a plain `tf.function`
(an XLA compile of VeLO costs ~15 s there) except where a test asks for
`jit_compile=True`; PyTorch runs eagerly (torch.compile takes a minute per
model on these CPUs).
"""

import warnings

import keras
import numpy as np
import pytest
from keras import ops

import golden_data
import keras_velo
from keras_velo import NonFiniteTrainingError, VeLO
from keras_velo.training.callbacks import infer_total_steps

THETA = str(golden_data.GOLDEN_DIR / "velo_perturbed_theta")
BACKEND = keras.backend.backend()
JIT = BACKEND == "jax"
XLA = BACKEND != "torch"  # for the tests that check the XLA path where there is one
BATCH = 16


def _data(num=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(num, 6)).astype("float32")
    y = (x[:, :1] - 0.5 * x[:, 1:2] + 0.1).astype("float32")
    return x, y


def _model(seed=0, regularize=False, dtype=None):
    rng = np.random.default_rng(seed)
    kwargs = {"kernel_regularizer": keras.regularizers.L2(0.01)} if regularize else {}
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="tanh", dtype=dtype, **kwargs),
            keras.layers.Dense(1, dtype=dtype),
        ]
    )
    model.set_weights([rng.normal(size=w.shape).astype("float32") * 0.5 for w in model.get_weights()])
    return model


def _compiled(optimizer=None, seed=0, jit_compile=JIT, attach=True, **model_kwargs):
    """A compiled model; with `attach=False` its fits must pass `VeLOCallback`."""
    model = _model(seed, **model_kwargs)
    optimizer = optimizer or VeLO(total_steps=8, weights=THETA)
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    return keras_velo.attach(model) if attach else model


def _weights(model):
    return [np.asarray(w, np.float32) for w in model.get_weights()]


class _RecordFedLoss(keras.callbacks.Callback):
    """Weights before each batch and the loss VeLO holds after it."""

    def __init__(self, velo):
        super().__init__()
        self.velo, self.weights, self.fed, self.counts = velo, [], [], []

    def on_train_batch_begin(self, batch, logs=None):
        self.weights.append(self.model.get_weights())  # on JAX, syncs state first

    def on_train_batch_end(self, batch, logs=None):
        self.model  # noqa: B018 (sync on JAX)
        self.fed.append(float(ops.convert_to_numpy(self.velo.loss_variable.value)))
        self.counts.append(int(self.velo.velo_state().loss_buffer.iteration))


def _batch_loss(model, weights, x, y):
    model.set_weights(weights)
    y_pred = model(x, training=True)
    return float(ops.convert_to_numpy(model.compute_loss(x=x, y=y, y_pred=y_pred)))


@pytest.mark.parametrize("feeding", ["callback", "attach"])
def test_each_update_receives_its_batch_loss_once(feeding):
    """The unscaled mean loss of the same batch, with regularisation, exactly once."""
    x, y = _data()
    velo = VeLO(total_steps=8, weights=THETA)
    model = _compiled(velo, regularize=True, jit_compile=XLA, attach=feeding == "attach")
    recorder = _RecordFedLoss(velo)
    callbacks = [recorder] if feeding == "attach" else [keras_velo.VeLOCallback(), recorder]
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
    assert recorder.counts == list(range(1, 9))
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, len(x), BATCH)] * 2
    expected = [
        _batch_loss(model, w, xb, yb) for w, (xb, yb) in zip(recorder.weights, batches)
    ]
    np.testing.assert_allclose(recorder.fed, expected, rtol=1e-5)
    assert len(set(np.round(expected, 6))) == len(expected)  # the test can tell batches apart


def _assert_usable_and_unchanged(model, weights, tmp_path):
    """Weights readable and equal to `weights`; evaluate, save and load work."""
    for a, b in zip(_weights(model), weights):
        np.testing.assert_array_equal(a, b)
    x, y = _data()
    assert np.isfinite(model.evaluate(x, y, verbose=0))
    path = tmp_path / "after_error.keras"
    model.save(path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        loaded = keras.saving.load_model(path)
    # Saved before VeLO was built (TensorFlow builds it in the failing step): loads without Keras'
    # "Skipping variable loading" warning.
    assert not [w for w in record if "Skipping variable loading" in str(w.message)]
    for a, b in zip(_weights(loaded), weights):
        np.testing.assert_array_equal(a, b)


def test_fit_without_the_callback_fails_with_advice_and_keeps_the_model(tmp_path):
    """An Adam-trained model recompiled with VeLO, fit without the callback."""
    x, y = _data()
    model = _model()
    model.compile(optimizer="adam", loss="mse", jit_compile=JIT)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    trained = _weights(model)
    for velo in (VeLO(total_steps=8, weights=THETA), VeLO(weights=THETA)):  # with and without a horizon
        model.compile(optimizer=velo, loss="mse", jit_compile=JIT)
        with pytest.raises(ValueError, match=r"callbacks=\[keras_velo.VeLOCallback\(\)\]"):
            model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        _assert_usable_and_unchanged(model, trained, tmp_path)


def test_velo_errors_in_fit_leave_the_model_usable(tmp_path):
    """A horizon that cannot be inferred, and too many skipped steps."""
    x, y = _data()
    model = _compiled(VeLO(weights=THETA), attach=False)
    before = _weights(model)

    def endless():
        while True:
            yield x[:BATCH], y[:BATCH]

    with pytest.raises(ValueError, match="steps_per_epoch"):
        model.fit(endless(), epochs=1, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    _assert_usable_and_unchanged(model, before, tmp_path)

    model.compile(optimizer=VeLO(total_steps=8, weights=THETA, max_consecutive_skips=2),
                  loss="mse", jit_compile=JIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteTrainingError):
            model.fit(x * np.nan, y, batch_size=BATCH, epochs=1, verbose=0,
                      callbacks=[keras_velo.VeLOCallback()])
    _assert_usable_and_unchanged(model, before, tmp_path)


def test_a_model_can_leave_velo():
    """After attach (and the callback), recompiling with Adam trains as Keras would."""
    x, y = _data()
    model = _compiled(VeLO(total_steps=8, weights=THETA))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    model.compile(optimizer="adam", loss="mse", jit_compile=JIT)
    before = _weights(model)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    model.train_on_batch(x[:BATCH], y[:BATCH])
    assert all(not np.array_equal(a, b) for a, b in zip(_weights(model), before))
    assert int(ops.convert_to_numpy(model.optimizer.iterations.value)) == 5


def test_attach_needs_a_velo_model():
    model = _model()
    with pytest.raises(ValueError, match="compiled with a VeLO optimizer"):
        keras_velo.attach(model)
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(ValueError, match="compiled with a VeLO optimizer"):
        keras_velo.attach(model)


def test_bundled_weights_train():
    x, y = _data(256)
    model = _compiled(VeLO(weights="bundled"))
    history = model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


# --------------------------------------------------------------- horizon


@pytest.mark.parametrize(
    "fit_kwargs, compile_kwargs, optimizer_kwargs, expected",
    [
        ({}, {}, {}, 12),
        ({}, {"steps_per_execution": 2}, {}, 12),
        ({}, {}, {"gradient_accumulation_steps": 2}, 6),
        ({}, {}, {"total_steps": 100}, 100),
    ],
    ids=["epochs-x-steps", "steps_per_execution", "gradient_accumulation", "explicit-wins"],
)
def test_total_steps_inferred_from_fit(fit_kwargs, compile_kwargs, optimizer_kwargs, expected):
    if BACKEND == "torch" and compile_kwargs:
        pytest.skip("steps_per_execution > 1 is not supported by Keras on torch")
    velo = VeLO(weights=THETA, **optimizer_kwargs)
    model = _model()
    model.compile(optimizer=velo, loss="mse", jit_compile=JIT, **compile_kwargs)
    keras_velo.attach(model)
    x, y = _data()
    model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, **fit_kwargs)
    assert velo.total_steps == expected
    accumulation = optimizer_kwargs.get("gradient_accumulation_steps", 1)
    assert velo.diagnostics()["iteration"] == 12 // accumulation


def test_a_fit_from_initial_epoch_sets_the_steps_that_run():
    """fit(epochs=4, initial_epoch=2) on a VeLO that has not trained: 2 epochs of 4 batches run."""
    x, y = _data()
    velo = VeLO(weights=THETA)
    model = _compiled(velo, attach=False)
    model.fit(x, y, batch_size=BATCH, epochs=4, initial_epoch=2, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    assert velo.total_steps == 8 and velo.diagnostics()["iteration"] == 8
    assert infer_total_steps({"epochs": 4, "steps": 4}, first_epoch=2) == 8


def test_total_steps_assigned_is_honoured_before_training_and_refused_after():
    x, y = _data()
    velo = VeLO(weights=THETA)
    model = _compiled(velo, attach=False)
    velo.total_steps = 20  # before fit: the horizon, not an inferred 8
    assert velo.horizon.total_steps == 20
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    assert velo.total_steps == 20 and velo.diagnostics()["iteration"] == 8
    with pytest.raises(ValueError, match=r"extend_total_steps"):
        velo.total_steps = 100  # after updates: refused, never silently ignored
    assert velo.total_steps == 20
    with pytest.raises(ValueError, match="total_steps"):
        VeLO(weights=THETA).total_steps = 0


def test_unknown_dataset_length_needs_total_steps():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        infer_total_steps({"epochs": 2, "steps": None})


def test_running_past_total_steps_warns_once():
    x, y = _data()
    model = _compiled(VeLO(total_steps=4, weights=THETA))
    with pytest.warns(RuntimeWarning, match="told total_steps=4") as record:
        model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0)
    assert sum("told total_steps" in str(w.message) for w in record) == 1


# ------------------------------------------------------------ non-finite


def test_a_nan_batch_is_skipped_and_changes_nothing():
    x, y = _data(32)
    x_bad = x.copy()
    x_bad[BATCH] = np.nan  # second batch
    velo = VeLO(total_steps=8, weights=THETA)
    model = _compiled(velo)

    class Snapshot(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.model  # noqa: B018
            if batch == 0:
                self.after_first = (_weights(self.model), velo.velo_state())

    snap = Snapshot()
    with pytest.warns(RuntimeWarning, match="because the training loss was NaN .* BatchNormalization") as record:
        model.fit(x_bad, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[snap])
    skips = [w for w in record if "VeLO skipped" in str(w.message)]
    assert len(skips) == 1 and skips[0].filename == __file__  # once, at the user's fit line
    weights_before, state_before = snap.after_first
    for a, b in zip(_weights(model), weights_before):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(keras.tree.flatten(velo.velo_state()), keras.tree.flatten(state_before)):
        if a is not None:
            np.testing.assert_array_equal(a, b)
    assert velo.skipped_steps == 1


def test_a_nan_batch_leaves_batchnorm_statistics_as_they_were():
    """Keras updates moving statistics in the forward pass; a skipped step puts them back."""
    x, y = _data(32)
    x_bad = x.copy()
    x_bad[BATCH:] = np.nan  # the second batch is all NaN
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.BatchNormalization(),
                              keras.layers.Dense(1)])
    model.compile(optimizer=VeLO(total_steps=8, weights=THETA), loss="mse", jit_compile=JIT)
    model.fit(x[:BATCH], y[:BATCH], batch_size=BATCH, epochs=1, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    statistics = [ops.convert_to_numpy(v.value) for v in model.layers[1].non_trainable_variables]
    with pytest.warns(RuntimeWarning, match="VeLO skipped an update"):
        model.fit(x_bad[BATCH:], y[BATCH:], batch_size=BATCH, epochs=1, verbose=0,
                  callbacks=[keras_velo.VeLOCallback()])
    for variable, before in zip(model.layers[1].non_trainable_variables, statistics):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable.value), before)
    assert np.isfinite(model.predict(x, verbose=0)).all()


def test_many_consecutive_skips_raise():
    x, y = _data(64)
    model = _compiled(VeLO(total_steps=8, weights=THETA, max_consecutive_skips=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(NonFiniteTrainingError, match="3 consecutive updates"):
            model.fit(x * np.nan, y, batch_size=BATCH, epochs=2, verbose=0)


def test_eager_apply_skips_non_finite_loss():
    velo = VeLO(total_steps=8, weights=THETA, max_consecutive_skips=2)
    variables = [keras.Variable(np.ones((3, 2), "float32"))]
    grads = [np.full((3, 2), 0.1, "float32")]
    velo.apply(grads, variables, loss=1.0)
    before = ops.convert_to_numpy(variables[0].value)
    state = velo.velo_state()
    with pytest.warns(RuntimeWarning, match="because the training loss was NaN") as record:
        velo.apply(grads, variables, loss=float("nan"))
    skips = [w for w in record if "VeLO skipped" in str(w.message)]
    assert len(skips) == 1 and skips[0].filename == __file__  # once (PyTorch warned twice), at this line
    np.testing.assert_array_equal(ops.convert_to_numpy(variables[0].value), before)
    assert int(velo.velo_state().iteration) == int(state.iteration)
    with pytest.raises(NonFiniteTrainingError, match="because a gradient was NaN"):
        velo.apply([np.full((3, 2), np.inf, "float32")], variables, loss=1.0)


def test_a_non_finite_update_is_skipped_with_its_real_cause():
    """Finite loss and gradients, but a step multiplier that turned NaN (a schedule, say)."""
    velo = VeLO(total_steps=8, weights=THETA)
    variables = [keras.Variable(np.ones((3, 2), "float32")), keras.Variable(np.zeros((2,), "float32"))]
    grads = [np.full((3, 2), 0.1, "float32"), np.full((2,), 0.1, "float32")]
    velo.apply(grads, variables, loss=1.0)
    before, state = [ops.convert_to_numpy(v.value) for v in variables], velo.velo_state()
    velo.learning_rate.assign(float("nan"))
    with pytest.warns(RuntimeWarning, match="VeLO's own update was not finite.*accumulators took in"):
        velo.apply(grads, variables, loss=1.0)
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(ops.convert_to_numpy(v.value), b)
    after = velo.velo_state()
    assert int(after.iteration) == int(state.iteration)
    kept = [after.loss_buffer] + [(t.lstm_hidden, t.lstm_cell) for t in after.tensors]
    was = [state.loss_buffer] + [(t.lstm_hidden, t.lstm_cell) for t in state.tensors]
    for a, b in zip(keras.tree.flatten(kept), keras.tree.flatten(was)):
        np.testing.assert_array_equal(a, b)
    assert all(np.isfinite(a).all() for a in keras.tree.flatten(after) if a is not None)
    assert velo.skipped_steps == 1


# ----------------------------------------------------- saving and resuming


def test_save_load_and_resume_like_an_uninterrupted_run(tmp_path):
    x, y = _data()
    straight = _compiled(VeLO(total_steps=8, weights=THETA))
    straight.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)

    first = _compiled(VeLO(total_steps=8, weights=THETA))
    first.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "model.keras"
    first.save(path)
    resumed = keras.saving.load_model(path)  # nothing else to call: the callback feeds it
    assert isinstance(resumed.optimizer, VeLO)
    assert resumed.optimizer.diagnostics()["iteration"] == 4
    resumed.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                callbacks=[keras_velo.VeLOCallback()])

    for a, b in zip(_weights(resumed), _weights(straight)):
        if BACKEND in ("jax", "tensorflow"):
            np.testing.assert_array_equal(a, b)
        else:  # torch: eager kernels may reassociate; stated tolerance
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    state_a = keras.tree.flatten(resumed.optimizer.velo_state())
    state_b = keras.tree.flatten(straight.optimizer.velo_state())
    for a, b in zip(state_a, state_b):
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_bundled_weights_travel_by_name(tmp_path, monkeypatch):
    """A .keras file with weights="bundled" holds a fingerprint, not 9.3 MB; resume stays exact."""
    x, y = _data()
    straight = _compiled(VeLO(total_steps=8, weights="bundled"))
    straight.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
    first = _compiled(VeLO(total_steps=8, weights="bundled"))
    first.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    first.save(tmp_path / "bundled.keras")
    by_value = _compiled(VeLO(total_steps=8, weights=THETA))
    by_value.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    by_value.save(tmp_path / "by_value.keras")
    assert (tmp_path / "bundled.keras").stat().st_size < 1_000_000 < (tmp_path / "by_value.keras").stat().st_size

    resumed = keras.saving.load_model(tmp_path / "bundled.keras")
    resumed.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    for a, b in zip(_weights(resumed), _weights(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    # "bundled" has become another theta since the save (a later keras-velo): the restored VeLO
    # starts from it, and loading puts back the shipped theta the file names by fingerprint.
    resolve = keras_velo.training.optimizer.resolve_saved_weights

    def other_version(weights, seed=0):
        theta, description, error = resolve(weights, seed=seed)
        theta = {k: dict(v) if isinstance(v, dict) else v for k, v in theta.items()}
        theta["rnn_params"]["rnn/linear"] = {"w": theta["rnn_params"]["rnn/linear"]["w"] + 1.0,
                                             "b": theta["rnn_params"]["rnn/linear"]["b"]}
        return theta, description, error

    monkeypatch.setattr(keras_velo.training.optimizer, "resolve_saved_weights", other_version)
    resumed = keras.saving.load_model(tmp_path / "bundled.keras")
    resumed.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    for a, b in zip(_weights(resumed), _weights(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    resumed.save(tmp_path / "again.keras")  # still by name: the theta it holds is shipped
    assert (tmp_path / "again.keras").stat().st_size < 1_000_000

    # Saved with weights this version does not ship: an error that says so.
    monkeypatch.setattr(keras_velo.weights.theta_by_name, "shipped_fingerprints", lambda: {})
    with pytest.raises(Exception, match="another version of keras-velo"):
        keras.saving.load_model(tmp_path / "bundled.keras")


class _Interrupt(keras.callbacks.Callback):
    """Raises KeyboardInterrupt after batch `batch` of epoch `epoch` (a kill, as BackupAndRestore sees it)."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise KeyboardInterrupt


def _fit_interrupted_then_resumed(tmp_path, save_freq, velo_first):
    """3 epochs of 4 batches, killed after the 2nd batch of epoch 2, then resumed in a new process' way.

    Returns the resumed model, its VeLO and the warnings the resumed fit raised.
    """
    x, y = _data()

    def callbacks(*extra):
        backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)
        return ([keras_velo.VeLOCallback(), backup] if velo_first
                else [backup, keras_velo.VeLOCallback()]) + list(extra)

    first = _compiled(VeLO(weights=THETA), attach=False)
    with pytest.raises(KeyboardInterrupt):
        first.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                  callbacks=callbacks(_Interrupt(epoch=1, batch=1)))
    velo = VeLO(weights=THETA)
    resumed = _compiled(velo, attach=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always", RuntimeWarning)
        resumed.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0, callbacks=callbacks())
    return resumed, velo, [str(w.message) for w in record if issubclass(w.category, RuntimeWarning)]


def test_backup_and_restore_at_epoch_ends_resumes_exactly(tmp_path):
    """BackupAndRestore before VeLOCallback: the restored horizon is kept (this order used to raise)."""
    x, y = _data()
    straight = _compiled(VeLO(weights=THETA), attach=False)
    straight.fit(x, y, batch_size=BATCH, epochs=3, shuffle=False, verbose=0,
                 callbacks=[keras_velo.VeLOCallback()])
    resumed, velo, messages = _fit_interrupted_then_resumed(tmp_path, "epoch", velo_first=False)
    assert messages == []
    assert velo.total_steps == 12 and velo.diagnostics()["iteration"] == 12
    for a, b in zip(_weights(resumed), _weights(straight)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("velo_first", [True, False], ids=["velo-callback-first", "backup-first"])
def test_a_mid_epoch_backup_replay_extends_the_horizon(tmp_path, velo_first):
    """Keras replays the interrupted epoch from its first batch: 2 batches run twice.

    VeLO is told: total_steps grows from 12 to 14 and the fit ends exactly
    at its horizon (no run past it), with one warning naming the replay.
    """
    _, velo, messages = _fit_interrupted_then_resumed(tmp_path, 1, velo_first)
    assert velo.total_steps == 14
    assert velo.diagnostics()["iteration"] == 14
    assert velo.diagnostics()["fraction_trained"] == pytest.approx(13 / 14)  # the last update's
    assert len(messages) == 1, messages
    assert "resumed from a backup made 2 batches into epoch 2" in messages[0]
    assert "total_steps grew by 2 to 14" in messages[0]


def test_extend_total_steps():
    velo = VeLO(total_steps=8, weights=THETA)
    assert velo.extend_total_steps(3) and velo.total_steps == 11 and velo.horizon.velo_steps == 11
    small = VeLO(total_steps=8, weights=THETA, max_training_steps=10)
    assert not small.extend_total_steps(3)  # 11 > 10 would need accumulation planned at build
    assert small.total_steps == 8
    with pytest.raises(ValueError, match="extra_steps"):
        velo.extend_total_steps(0)


def test_theta_travels_with_the_saved_model(tmp_path, monkeypatch):
    """A model trained from a local checkpoint loads where that path is missing."""
    import shutil

    local = tmp_path / "my_theta"
    shutil.copytree(golden_data.GOLDEN_DIR / "velo_perturbed_theta", local)
    x, y = _data()
    model = _compiled(VeLO(total_steps=8, weights=str(local)))
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    shutil.rmtree(local)
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    w = loaded.optimizer.theta["rnn_params"]["rnn/linear"]["w"]
    np.testing.assert_array_equal(w, golden_data.theta("velo_perturbed_theta")["rnn_params"]["rnn/linear"]["w"])


# ------------------------------------------------------------ Keras features


@pytest.mark.parametrize(
    "optimizer_kwargs",
    [
        {"clipnorm": 0.1},
        {"clipvalue": 0.01},
        {"global_clipnorm": 0.1},
        {"use_ema": True, "ema_overwrite_frequency": 2},
        {"gradient_accumulation_steps": 2},
        {"loss_scale_factor": 64.0},
        {"learning_rate": keras.optimizers.schedules.ExponentialDecay(1.0, 4, 0.5)},
    ],
    ids=["clipnorm", "clipvalue", "global_clipnorm", "ema", "grad_accumulation", "loss_scale_factor", "lr_schedule"],
)
def test_keras_optimizer_features_keep_working(optimizer_kwargs):
    x, y = _data()
    velo = VeLO(total_steps=8, weights=THETA, **optimizer_kwargs)
    model = _compiled(velo)
    recorder = _RecordFedLoss(velo)
    before = _weights(model)
    model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[recorder])
    after = _weights(model)
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.array_equal(a, b) for a, b in zip(after, before))
    # The loss VeLO sees is the plain batch loss, never a scaled one.
    assert max(recorder.fed) < 10.0


def test_clipvalue_reaches_velo():
    """Clipping happens before VeLO: with tiny clip values the accumulators stay tiny."""
    x, y = _data()
    velo = VeLO(total_steps=8, weights=THETA, clipvalue=1e-6)
    model = _compiled(velo)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    rms = max(float(np.max(t.accumulators.rms)) for t in velo.velo_state().tensors)
    assert rms <= 1e-12


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        x, y = _data()
        velo = VeLO(total_steps=8, weights=THETA)
        model = _compiled(velo, jit_compile=XLA)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        recorder = _RecordFedLoss(velo)
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0, callbacks=[recorder])
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert max(recorder.fed) < 10.0  # unscaled (the loss scale starts at 32768)
    assert all(np.all(np.isfinite(w)) for w in _weights(model))
    assert velo.diagnostics()["iteration"] > 0
    for tensor in velo.velo_state().tensors:
        assert tensor.accumulators.momentum.dtype == np.float32


def test_updates_dropped_by_the_loss_scale_optimizer_are_reported():
    """Keras' LossScaleOptimizer drops steps whose scaled gradients overflow; VeLO never sees them."""
    x, y = _data()
    velo = VeLO(total_steps=8, weights=THETA)
    optimizer = keras.optimizers.LossScaleOptimizer(velo, initial_scale=float("inf"))  # every step overflows
    model = _compiled(optimizer, attach=False)
    with pytest.warns(RuntimeWarning, match=r"never reached VeLO: the loss-scale optimizer") as record:
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    dropped = 8 - velo.diagnostics()["iteration"]
    assert dropped > 0
    message = next(str(w.message) for w in record if "never reached VeLO" in str(w.message))
    assert message.startswith(f"{dropped} of this fit's 8 updates")


def test_steps_per_execution_that_does_not_divide_the_epoch_warns_nothing():
    """4 batches an epoch in chunks of 3: Keras reports the last chunk as ending on "batch 5"."""
    if BACKEND == "torch":
        pytest.skip("steps_per_execution > 1 is not supported by Keras on torch")
    x, y = _data()
    velo = VeLO(weights=THETA)
    model = _model()
    model.compile(optimizer=velo, loss="mse", jit_compile=JIT, steps_per_execution=3)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model.fit(x, y, batch_size=BATCH, epochs=3, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    assert not [str(w.message) for w in record if "VeLO" in str(w.message)]
    assert velo.total_steps == 12 and velo.diagnostics()["iteration"] == 12


@pytest.mark.parametrize("weights", [THETA, "bundled"], ids=["theta-by-value", "shipped-by-fingerprint"])
def test_a_restart_from_a_weights_only_checkpoint_continues_the_run(tmp_path, weights):
    """load_weights right after compile (VeLO not built yet) restores VeLO's state at its build."""
    x, y = _data()
    path = str(tmp_path / "checkpoint.weights.h5")

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    def fit(model, callbacks=(), **kwargs):
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0,
                  callbacks=[keras_velo.VeLOCallback(), *callbacks], **kwargs)
        return model

    uninterrupted = fit(_compiled(VeLO(weights=weights), attach=False))
    fit(_compiled(VeLO(weights=weights), attach=False),
        [keras.callbacks.ModelCheckpoint(path, save_weights_only=True), StopAfterFirstEpoch()])
    restarted = _compiled(VeLO(weights=weights), attach=False)
    restarted.load_weights(path)  # Adam would warn and drop its state; VeLO keeps it for its build
    fit(restarted, initial_epoch=1)
    assert restarted.optimizer.total_steps == uninterrupted.optimizer.total_steps == 8
    assert restarted.optimizer.diagnostics()["iteration"] == 8
    for a, b in zip(_weights(uninterrupted), _weights(restarted)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_bfloat16_variables_keep_float32_state():
    x, y = _data()
    velo = VeLO(total_steps=8, weights=THETA)
    model = _compiled(velo, dtype="bfloat16")
    assert all(keras.backend.standardize_dtype(v.dtype) == "bfloat16" for v in model.trainable_variables)
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert all(t.accumulators.momentum.dtype == np.float32 for t in velo.velo_state().tensors)
    assert all(np.all(np.isfinite(w)) for w in _weights(model))


@pytest.mark.backends("tensorflow")
def test_fit_traces_the_update_once_on_tensorflow(monkeypatch):
    """VeLO's state exists before Keras traces the train function, so it is traced once.

    Keras on TensorFlow builds the optimizer inside the first trace, and a
    `tf.function` that creates variables is traced again: twice VeLO's
    tracing (seconds on any real model). `VeLOCallback.on_train_begin`
    builds it first.
    """
    traces = []
    update_step = VeLO._velo_update_step

    def counted(self, *args, **kwargs):
        traces.append(1)
        return update_step(self, *args, **kwargs)

    monkeypatch.setattr(VeLO, "_velo_update_step", counted)
    x, y = _data()
    model = _compiled()
    model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    assert len(traces) == 1


@pytest.mark.backends("tensorflow")
@pytest.mark.parametrize("jit_compile", [False, True])  # XLA: the gradient's static shape is unknown
def test_sparse_embedding_gradients(jit_compile):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 50, size=(64, 5))
    targets = rng.normal(size=(64, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(50, 4), keras.layers.Flatten(), keras.layers.Dense(1)]
    )
    velo = VeLO(total_steps=8, weights=THETA)
    model.compile(optimizer=velo, loss="mse", jit_compile=jit_compile)
    keras_velo.attach(model)
    before = _weights(model)[0]
    history = model.fit(tokens, targets, batch_size=BATCH, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert not np.array_equal(_weights(model)[0], before)


# ------------------------------------------------------------ time budget & logs


def test_time_budget_sets_the_fraction_and_stops_training(monkeypatch):
    import types

    x, y = _data()
    velo = VeLO(total_steps=1000, weights=THETA, time_budget=2.0)
    model = _compiled(velo)
    ticks = iter(np.arange(0.0, 1e6, 0.05))  # every reading of the clock: 50 ms later
    monkeypatch.setattr(keras_velo.training.callbacks, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    fractions = []

    class Fraction(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model  # noqa: B018
            fractions.append(velo.diagnostics()["fraction_trained"])

    history = model.fit(x, y, batch_size=BATCH, epochs=10_000, verbose=0, callbacks=[Fraction()])
    assert len(history.history["loss"]) < 10_000  # stopped by the budget
    assert 0.5 < fractions[-1] <= 1.0
    assert all(b > a for a, b in zip(fractions, fractions[1:]))


def test_monitor_logs_reach_history_and_tensorboard(tmp_path):
    x, y = _data()
    velo = VeLO(total_steps=8, weights=THETA)
    model = _compiled(velo)
    monitor = keras_velo.VeLOMonitor(per_tensor=True, loss_features=True)
    board = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    history = model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, callbacks=[monitor, board])
    logs = history.history
    assert logs["velo/fraction_trained"] == [pytest.approx(3 / 8), pytest.approx(7 / 8)]
    assert logs["velo/iteration"] == [4, 8]
    paths = [v.path for v in model.trainable_variables]
    assert all(f"velo/lr_mult/{p}" in logs for p in paths)
    assert all(f"velo/loss_feature_{i}" in logs for i in range(9))
    assert not any(k.startswith("_velo") for k in logs)
    import tensorflow as tf

    tags = set()
    for event_file in tmp_path.rglob("events.out.tfevents*"):
        for event in tf.compat.v1.train.summary_iterator(str(event_file)):
            tags.update(v.tag for v in event.summary.value)
    assert any("velo/fraction_trained" in t for t in tags), tags


def test_monitor_keeps_the_progress_line_short(capsys):
    x, y = _data()
    model = _compiled()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=2, callbacks=[keras_velo.VeLOMonitor()])
    epoch_line = max(capsys.readouterr().out.splitlines(), key=len)
    assert "velo/lr_mult_mean" in epoch_line and "velo/lr_mult/" not in epoch_line
    assert len(epoch_line) < 300, epoch_line


def test_data_running_out_says_the_schedule_did_not_finish():
    import tensorflow as tf

    x, y = _data()
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)  # 4 batches, no repeat
    velo = VeLO(weights=THETA)
    model = _compiled(velo, attach=False)
    with pytest.warns(RuntimeWarning, match=r"schedule did not finish") as record:
        model.fit(data, steps_per_epoch=3, epochs=4, verbose=0, callbacks=[keras_velo.VeLOCallback()])
    message = next(str(w.message) for w in record if "did not finish" in str(w.message))
    assert "of the 12 batches it planned" in message and "total_steps=12" in message
    # the whole schedule ran: no warning
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _compiled(VeLO(weights=THETA), attach=False).fit(
            data.repeat(), steps_per_epoch=3, epochs=4, verbose=0,
            callbacks=[keras_velo.VeLOCallback()])
    assert not [w for w in record if "did not finish" in str(w.message)]


def test_an_adam_sized_learning_rate_warns():
    with pytest.warns(UserWarning, match=r"1,000-fold.*not Adam's learning rate"):
        VeLO(total_steps=8, weights=THETA, learning_rate=1e-3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        VeLO(total_steps=8, weights=THETA, learning_rate=0.5)  # a damping: no warning


def test_a_mixed_float16_model_saves_shipped_weights_by_name(tmp_path, monkeypatch):
    """The loss-scale wrapper wrote VeLO's variables again, theta by value: 9.4 MB."""
    x, y = _data()
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        model = _compiled(VeLO(total_steps=8, weights="bundled"), jit_compile=XLA)
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        model.optimizer.dynamic_scale.assign(1024.0)  # the wrapper's own state must come back
        model.save(tmp_path / "new.keras")
        keras_save = keras.optimizers.LossScaleOptimizer._keras_saving[0]
        with monkeypatch.context() as patch:  # a file saved before the change still loads
            patch.setattr(keras.optimizers.LossScaleOptimizer, "save_own_variables", keras_save)
            model.save(tmp_path / "old.keras")
        restored = {name: keras.saving.load_model(tmp_path / f"{name}.keras") for name in ("new", "old")}
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    assert (tmp_path / "new.keras").stat().st_size < 1_000_000
    assert (tmp_path / "old.keras").stat().st_size > 9_000_000
    for loaded in restored.values():
        assert isinstance(loaded.optimizer, keras.optimizers.LossScaleOptimizer)
        assert len(loaded.optimizer.variables) == len(model.optimizer.variables)
        for saved, back in zip(model.optimizer.variables, loaded.optimizer.variables):
            np.testing.assert_array_equal(ops.convert_to_numpy(back.value),
                                          ops.convert_to_numpy(saved.value), err_msg=saved.path)
