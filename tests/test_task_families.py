"""Generic tests over the task-family registry: every family gets every test."""

import json
import math

import keras
import numpy as np
import pytest
from keras import ops

from task_families import FAMILIES, build_task, config_from_dict, sample_within_budget
from task_families import datasets, images, text
from task_families.cost import estimate_step_seconds, measure_step_seconds
from task_families.image_cnn import ImageCNNConfig
from task_families.image_mlp import ImageMLPConfig
from task_families.residual_net import ResidualNetConfig
from task_families.tabular import TabularConfig
from task_families.transformer_lm import TransformerLMConfig
from task_families.vit import ViTConfig

FAMILY_NAMES = sorted(FAMILIES)
needs_fashion = pytest.mark.skipif(not datasets.has_fashion_mnist(), reason="apt-get install dataset-fashion-mnist")

# `sample(0).key()` per family: a hash of the sampled config's JSON. If a
# sampler changes, these change, and so must the suite versions (see suites.py).
# transformer_lm's changed once without a new suite version: its config gained
# `norm_position` (default "pre", the model it always built; see
# test_transformer_lm_configs_from_before_norm_position_build_the_same_model).
PINNED_SAMPLE_KEYS = {
    "image_mlp": "822d5d8e4d64",
    "image_cnn": "48336db6139b",
    "resnet": "f9af71139918",
    "transformer_lm": "0fa955da691a",
    "rnn_lm": "cbd2ca87e836",
    "autoencoder": "95735449e7ff",
    "vae": "e2697d2fe61e",
    "residual_net": "f2c678ae4102",
    "vit": "8092b1fef595",
    "gpt_lm": "f7148b693ec4",
    "tabular": "f9db8eadb79f",
}


def _plain_json(value):
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain_json(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain_json(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_registry_has_every_family():
    assert set(FAMILIES) == {"image_mlp", "image_cnn", "resnet", "transformer_lm", "rnn_lm", "autoencoder", "vae",
                             "residual_net", "vit", "gpt_lm", "tabular"}
    for name, family in FAMILIES.items():
        assert family.name == name == family.config_type.family


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_sampling_is_deterministic_varied_and_json_round_trips(name):
    family = FAMILIES[name]
    configs = [family.sample(seed) for seed in range(30)]
    assert configs == [family.sample(seed) for seed in range(30)]
    assert len(set(configs)) >= 25, "the sampler should explore its space"
    for config in configs:
        data = json.loads(json.dumps(config.to_dict()))
        assert _plain_json(data) and data["family"] == name
        assert type(config).from_dict(data) == config
        assert config_from_dict(data) == config
        assert config.flops_per_step() > 0
    with pytest.raises(dataclass_frozen_error()):
        configs[0].batch_size = 1


def dataclass_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_samples_are_the_same_on_every_machine(name):
    assert FAMILIES[name].sample(0).key() == PINNED_SAMPLE_KEYS[name]


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_same_config_builds_same_weights_and_first_loss(name):
    config = FAMILIES[name].smallest()
    first, second = build_task(config), build_task(config)
    for a, b in zip(first.model.weights, second.model.weights):
        np.testing.assert_array_equal(ops.convert_to_numpy(a.value), ops.convert_to_numpy(b.value))
    x, y = next(first.train_batches(seed=3))
    x2, y2 = next(second.train_batches(seed=3))
    np.testing.assert_array_equal(x, x2)
    loss = float(ops.convert_to_numpy(first.loss(y, first.model(x))))
    assert np.isfinite(loss)
    assert loss == float(ops.convert_to_numpy(second.loss(y2, second.model(x2))))
    other = build_task(config.replace(init_seed=1))
    differs = any(
        not np.array_equal(ops.convert_to_numpy(a.value), ops.convert_to_numpy(b.value))
        for a, b in zip(first.model.trainable_weights, other.model.trainable_weights)
    )
    assert differs, "init_seed must change the initial weights"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_batches_follow_the_seed_and_eval_is_fixed(name):
    task = build_task(FAMILIES[name].smallest())
    a, b, c = task.train_batches(0), task.train_batches(0), task.train_batches(1)
    for _ in range(3):
        (xa, ya), (xb, yb), (xc, _) = next(a), next(b), next(c)
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert xa.shape[0] == task.config.batch_size
    assert not np.array_equal(xa, xc)
    first = [x for x, _ in task.eval_batches()]
    second = [x for x, _ in task.eval_batches()]
    assert len(first) >= 1 and all(np.array_equal(p, q) for p, q in zip(first, second))
    assert task.model.output_shape[0] is None and task.num_params > 0


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_sampled_task_builds_on_this_backend(name):
    task = build_task(FAMILIES[name].sample(0))
    assert isinstance(task.model, keras.Model) and task.model.built
    assert task.num_params == sum(math.prod(w.shape) for w in task.model.trainable_weights)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_a_few_adam_steps_lower_the_loss(name):
    task = build_task(FAMILIES[name].smallest())
    task.model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=task.loss, jit_compile=False)
    before = task.evaluate(max_examples=256)["loss"]
    batches = task.train_batches(seed=0)
    for _ in range(40):
        task.model.train_on_batch(*next(batches))
    after = task.evaluate(max_examples=256)["loss"]
    assert np.isfinite(after) and after < before - 0.02 * abs(before), (before, after)


def test_cost_estimate_ranks_measured_step_times():
    """Configs spanning ~3 orders of magnitude of FLOPs: the estimate must rank their step times."""
    configs = [
        ImageMLPConfig(dataset="digits", batch_size=32, init_seed=0, image_size=8, hidden_sizes=(16,)),
        ImageMLPConfig(dataset="digits", batch_size=128, init_seed=0, image_size=16, hidden_sizes=(512, 512)),
        ImageCNNConfig(dataset="digits", batch_size=64, init_seed=0, image_size=16, conv_channels=(32, 64),
                       pooling="none"),
        TransformerLMConfig(dataset="python_stdlib", batch_size=32, init_seed=0, sequence_length=64,
                            model_dim=128, num_heads=4, num_layers=2),
    ]
    estimates = [estimate_step_seconds(c) for c in configs]
    measured = [measure_step_seconds(build_task(c), keras.optimizers.Adam(1e-3), steps=5)[0] for c in configs]
    assert estimates == sorted(estimates)
    assert measured[-1] > 3 * measured[0], measured
    ranks_est, ranks_measured = np.argsort(estimates), np.argsort(measured)
    agreement = np.corrcoef(np.argsort(ranks_est), np.argsort(ranks_measured))[0, 1]
    assert agreement >= 0.7, (estimates, measured)


def test_sample_within_budget_respects_the_budget():
    budget = 5e6
    for seed in range(5):
        config = sample_within_budget("image_mlp", seed, budget)
        assert config.flops_per_step() <= budget
        assert config == sample_within_budget("image_mlp", seed, budget)
    with pytest.raises(ValueError, match="No resnet config"):
        sample_within_budget("resnet", 0, 1.0, max_tries=5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: config_from_dict({"family": "perceptron"}), "Unknown task family 'perceptron'"),
        (lambda: ImageMLPConfig(dataset="digits", batch_size=32, init_seed=0, hidden_sizes=(64, -3)),
         "hidden_sizes must hold positive ints"),
        (lambda: ImageMLPConfig(dataset="imagenet", batch_size=32, init_seed=0), "Unknown dataset 'imagenet'"),
        (lambda: ImageMLPConfig(dataset="python_stdlib", batch_size=32, init_seed=0), "holds text data"),
        (lambda: ImageMLPConfig(dataset="digits", batch_size=0, init_seed=0), "batch_size must be a positive int"),
        (lambda: ImageMLPConfig(dataset="digits", batch_size=8, init_seed=0, activation="sigmoidish"),
         "unknown activation 'sigmoidish'"),
        (lambda: ImageMLPConfig(dataset="mnist1d", batch_size=8, init_seed=0, image_size=8), "image_size must be None"),
        (lambda: TransformerLMConfig(dataset="python_stdlib", batch_size=8, init_seed=0, model_dim=30, num_heads=4),
         "divisible by num_heads"),
        (lambda: ImageMLPConfig.from_dict({"dataset": "digits", "batch_size": 8, "init_seed": 0, "widths": [3]}),
         "unknown field"),
        (lambda: ImageCNNConfig.from_dict({"family": "image_mlp", "dataset": "digits"}), "expected 'image_cnn'"),
        (lambda: FAMILIES["vae"].sample(-1), "seed must be an int >= 0"),
        (lambda: ViTConfig(dataset="digits", batch_size=8, init_seed=0, image_size=8, patch_size=3),
         "multiple of patch_size"),
        (lambda: ViTConfig(dataset="digits", batch_size=8, init_seed=0, norm_position="middle"),
         "unknown norm_position 'middle'"),
        (lambda: TransformerLMConfig(dataset="python_stdlib", batch_size=8, init_seed=0, norm_position="sandwich"),
         "unknown norm_position 'sandwich'"),
        (lambda: ResidualNetConfig(dataset="digits", batch_size=8, init_seed=0, num_blocks=0),
         "num_blocks must hold positive ints"),
        (lambda: TabularConfig(dataset="digits", batch_size=8, init_seed=0), "this family reads \\['table'\\]"),
    ],
)
def test_bad_configs_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_build_task_rejects_non_configs():
    with pytest.raises(TypeError, match="TaskConfig"):
        build_task("image_mlp")


def test_image_transforms():
    ramp = np.linspace(0, 1, 28 * 28, dtype=np.float32).reshape(1, 28, 28, 1)
    small = images.resize(ramp, 8)
    assert small.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(small.mean(), ramp.mean(), rtol=1e-5)  # area averaging keeps the mean
    assert np.all(np.diff(small[0, :, 0, 0]) > 0)
    matrix = images.area_resize_matrix(8, 16)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=1e-6)
    colour = images.colourise(small, seed=0)
    assert colour.shape == (1, 8, 8, 3) and 0 <= colour.min() and colour.max() <= 1
    assert not np.allclose(colour[..., 0], colour[..., 1])
    assert images.pad(colour, 2).shape == (1, 12, 12, 3)


def test_offline_datasets_are_real():
    x, y = datasets.load_images("digits", "train", 16, 3, 2)
    assert x.shape[1:] == (20, 20, 3) and x.dtype == np.float32 and not x.flags.writeable
    assert set(np.unique(y)) == set(range(10))
    vectors, labels = datasets.load_vectors("mnist1d", "train")
    assert vectors.shape == (4000, 40) and set(np.unique(labels)) == set(range(10))
    tokens = datasets.load_tokens("python_stdlib", "train")
    assert tokens.dtype == np.uint8 and len(tokens) > 1_000_000
    assert b"def " in bytes(tokens[:100_000]) and "standard library" in text.corpus_description()


@needs_fashion
def test_fashion_mnist_views():
    x, y = datasets.load_images("fashion_mnist", "test", 16, 1)
    assert x.shape == (10_000, 16, 16, 1) and np.bincount(y).tolist() == [1000] * 10


@pytest.mark.backends("jax")
def test_tfds_datasets_plug_into_tasks():
    """A `tfds:` dataset name builds a task (tfds mock data stands in for the download)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    config = ImageCNNConfig(dataset="tfds:cifar10", batch_size=8, init_seed=0, image_size=8, channels=3)
    with tfds.testing.mock_data(num_examples=64):
        datasets.load_images.cache_clear()
        task = build_task(config)
    datasets.load_images.cache_clear()
    x, y = next(task.train_batches(0))
    assert x.shape == (8, 8, 8, 3) and np.isfinite(float(ops.convert_to_numpy(task.loss(y, task.model(x)))))


@pytest.mark.parametrize("name", ["image_cnn", "rnn_lm", "autoencoder"])  # not vae: its loss samples noise
def test_compiled_evaluation_matches_eager(name):
    task = build_task(FAMILIES[name].smallest())
    eager = task.evaluate(max_examples=256)
    task.model.compile(optimizer="sgd", loss=task.loss, metrics=task.metrics)
    compiled = task.evaluate(max_examples=256)
    assert compiled.keys() == eager.keys()
    for key in eager:
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5, abs=1e-6)


def test_transformer_lm_configs_from_before_norm_position_build_the_same_model():
    """Logs written before the field existed rebuild the pre-norm model they ran."""
    data = FAMILIES["transformer_lm"].smallest().to_dict()
    old = {k: v for k, v in data.items() if k != "norm_position"}
    assert config_from_dict(old).norm_position == "pre"
    assert config_from_dict(old) == FAMILIES["transformer_lm"].smallest()


def test_norm_placements_build_the_layouts_they_name():
    """Pre-norm ends in a LayerNorm before the head; post-norm normalises the residual stream."""

    def layer_names(model):
        return [type(layer).__name__ for layer in model.layers]

    for config in (FAMILIES["gpt_lm"].smallest(), ViTConfig(dataset="digits", batch_size=8, init_seed=0)):
        pre = build_task(config.replace(norm_position="pre")).model
        post = build_task(config.replace(norm_position="post")).model
        assert layer_names(pre)[-2] == "LayerNormalization" or "LayerNormalization" in layer_names(pre)[-4:-1]
        assert layer_names(post).count("LayerNormalization") == 2 * config.num_layers
        assert layer_names(pre).count("LayerNormalization") == 2 * config.num_layers + 1


def test_residual_net_normalises_inside_the_branch_and_not_before_the_head():
    model = build_task(ResidualNetConfig(dataset="digits", batch_size=8, init_seed=0, num_blocks=3)).model
    names = [type(layer).__name__ for layer in model.layers]
    assert names.count("BatchNormalization") == 2 * 3
    head = names.index("GlobalAveragePooling2D")
    assert names[head - 1] == "Add" and "BatchNormalization" not in names[head:]


def test_tables_are_standardised_and_split_without_overlap():
    for name in ("wine", "diabetes", "friedman1", "friedman2", "iris", "breast_cancer"):
        x_train, y_train = datasets.load_table(name, "train")
        x_test, _ = datasets.load_table(name, "test")
        np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
        np.testing.assert_allclose(x_train.std(axis=0), 1.0, atol=1e-3)
        assert not {tuple(r) for r in x_train} & {tuple(r) for r in x_test}
        regression = datasets.dataset_info(name).num_classes == 0
        assert (y_train.dtype, y_train.ndim) == ((np.float32, 2) if regression else (np.int32, 1))
