"""The fixed suites and the meta-training / held-out split."""

import pytest

from task_families import FAMILIES, build_task
from task_families.registry import FIRST_FAMILIES
from task_families.suites import (
    HELD_OUT_SUITE,
    SUITES,
    SuiteTask,
    get_suite,
    is_held_out,
    sample_meta_training_task,
)


def test_suites_are_versioned_and_cover_the_first_families():
    # Published suites never change: the families added later are not in them.
    assert {"tiny-v1", "canonical-cpu-v1"} <= set(SUITES)
    for name, suite in SUITES.items():
        assert name.rsplit("-", 1)[1].startswith("v") and suite.name == name
        assert {t.config.family for t in suite.tasks} == set(FIRST_FAMILIES)
        for t in suite.tasks:
            assert t.num_steps > 0 and t.max_seconds > 0 and 0 < t.eval_every <= t.num_steps


def test_canonical_tasks_are_fixed_samples_of_their_family():
    for t in get_suite("canonical-cpu-v1").tasks:
        assert t.config == FAMILIES[t.config.family].sample(t.sample_seed)


def test_suite_tasks_round_trip_through_json():
    import json

    for t in get_suite("canonical-cpu-v1").tasks:
        assert SuiteTask.from_dict(json.loads(json.dumps(t.to_dict()))) == t


def test_meta_training_never_samples_held_out_tasks():
    held_out = get_suite(HELD_OUT_SUITE).tasks
    assert all(is_held_out(t.config) for t in held_out)
    assert all(is_held_out(t.config.replace(init_seed=123)) for t in held_out)  # same task, other init
    raw = [sample_meta_training_task(seed, reject_held_out=False) for seed in range(5000)]
    assert sum(map(is_held_out, raw)) > 0, "the raw distribution must contain held-out tasks for this test to bite"
    sampled = [sample_meta_training_task(seed) for seed in range(5000)]
    assert not any(map(is_held_out, sampled))
    assert sampled[:10] == [sample_meta_training_task(seed) for seed in range(10)]
    assert len({c.family for c in sampled}) == len(FAMILIES)


def test_meta_training_budget_and_family_filters():
    for seed in range(20):
        config = sample_meta_training_task(seed, families=["vae"], max_flops_per_step=2e7)
        assert config.family == "vae" and config.flops_per_step() <= 2e7


def test_unknown_suite_and_task_names():
    with pytest.raises(ValueError, match="Unknown suite 'canonical'"):
        get_suite("canonical")
    with pytest.raises(KeyError, match="no task 'nope'"):
        get_suite("tiny-v1").task("nope")


def test_tiny_suite_trains_on_this_backend():
    import keras

    for t in get_suite("tiny-v1").tasks:
        task = build_task(t.config)
        task.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=task.loss, jit_compile=False)
        batches = task.train_batches(0)
        for _ in range(3):
            logs = task.model.train_on_batch(*next(batches), return_dict=True)
        assert logs["loss"] == logs["loss"]  # finite, not NaN
