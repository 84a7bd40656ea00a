"""Baseline schedules and submissions: the published defaults, VeLO's prompt rule."""

import math

import numpy as np
import pytest
from keras import ops

from evaluation import schedules
from evaluation.study import parse_shard, plan_runs, shard
from evaluation.submissions import GROUPS, make_submissions, select_submissions
from evaluation.workloads import workloads_from_suite


def test_warmup_cosine_shape():
    peak, hint = 5e-3, 1000  # S = 750, warm-up 37.5 steps
    value = schedules.warmup_cosine_value
    assert value(0, peak, hint) == pytest.approx(peak / 37.5)
    assert value(37.5, peak, hint) == pytest.approx(peak)
    assert value(750, peak, hint) == pytest.approx(1e-4 * peak)
    assert value(5000, peak, hint) == pytest.approx(1e-4 * peak)
    middle = 37.5 + (750 - 37.5) / 2
    assert value(middle, peak, hint) == pytest.approx(1e-4 * peak + (peak - 1e-4 * peak) / 2)


def test_warmup_linear_decay_shape():
    value = schedules.warmup_linear_decay_value
    assert value(50, 5e-2, 1000) == pytest.approx(5e-2)
    assert value(1000, 5e-2, 1000) == pytest.approx(1e-3)
    assert value(3000, 5e-2, 1000) == pytest.approx(1e-3)


@pytest.mark.parametrize(
    "schedule, reference",
    [(schedules.WarmupCosine, schedules.warmup_cosine_value),
     (schedules.WarmupLinearDecay, schedules.warmup_linear_decay_value)],
)
def test_keras_schedules_match_their_maths(schedule, reference):
    keras_schedule = schedule(1e-2, 400)
    for step in (0, 3, 14, 15, 100, 299, 300, 399, 400, 1000):
        got = float(ops.convert_to_numpy(keras_schedule(step)))
        # float32: relative 1e-5, plus 1e-8 absolute where cos is near -1 (the floor is 1e-6)
        assert got == pytest.approx(reference(step, 1e-2, 400), rel=1e-5, abs=1e-8)
    assert schedule.from_config(keras_schedule.get_config()).get_config() == keras_schedule.get_config()


def test_baselines_have_the_published_defaults():
    workload = workloads_from_suite("canonical-cpu-v1", names=["mlp-mnist1d"])[0]
    subs = make_submissions()
    expected_peaks = {"adam": 5e-3, "nadam": 1e-2, "nadamw": 1e-2, "heavy_ball": 5e-2, "nesterov": 5e-2}
    for name, peak in expected_peaks.items():
        optimizer = subs[name].make_optimizer(workload)
        schedule = optimizer._learning_rate
        assert schedule.peak == peak and schedule.step_hint == workload.num_steps
        assert set(subs[name].conditions) == {"steps", "time"} and subs[name].stop == "both"
    assert subs["nadamw"].make_optimizer(workload).weight_decay == 4e-3
    assert subs["adam"].make_optimizer(workload).weight_decay is None
    assert subs["nesterov"].make_optimizer(workload).nesterov and subs["heavy_ball"].make_optimizer(workload).momentum == 0.9


def test_the_alternatives_a_user_would_pick_are_baselines_at_keras_defaults():
    import keras

    workload = workloads_from_suite("canonical-cpu-v1", names=["mlp-mnist1d"])[0]
    subs = make_submissions()
    assert GROUPS["alternatives"] == ("adamw_cosine", "schedule_free_adamw", "muon")
    assert set(GROUPS["alternatives"]) < set(GROUPS["baselines"])
    expected = {"adamw_cosine": keras.optimizers.AdamW, "schedule_free_adamw": keras.optimizers.ScheduleFreeAdamW,
                "muon": keras.optimizers.Muon}
    for name, keras_class in expected.items():
        assert subs[name].kind == "baseline" and subs[name].stop == "both"
        assert set(subs[name].conditions) == {"steps", "time"}
        assert isinstance(subs[name].make_optimizer(workload), keras_class)
    schedule = subs["adamw_cosine"].make_optimizer(workload)._learning_rate
    assert schedule.warmup_steps + schedule.decay_steps == workload.num_steps  # decays over the step budget
    assert float(subs["schedule_free_adamw"].make_optimizer(workload).learning_rate) == pytest.approx(2.5e-3)


def test_the_alternatives_grids_are_submissions_scored_through_their_tuned_view():
    workload = workloads_from_suite("canonical-cpu-v1", names=["mlp-mnist1d"])[0]
    subs = make_submissions()
    assert GROUPS["alternatives-grid"] == ("adamw_cosine-lr0.0003", "adamw_cosine-lr0.003",
                                           "schedule_free_adamw-lr0.0008", "schedule_free_adamw-lr0.0075",
                                           "muon-lr0.0003", "muon-lr0.003")
    point = subs["schedule_free_adamw-lr0.0075"]
    assert point.kind == "alternative_grid" and point.algorithm == "ScheduleFreeAdamW lr=0.0075"
    assert set(point.conditions) == {"steps", "time"} and point.stop == "both"
    assert float(point.make_optimizer(workload).learning_rate) == pytest.approx(7.5e-3)
    schedule = subs["adamw_cosine-lr0.003"].make_optimizer(workload)._learning_rate
    assert schedule.warmup_target == pytest.approx(3e-3)


def test_velo_prompt_rule():
    workload = workloads_from_suite("canonical-cpu-v1", names=["mlp-mnist1d"])[0]
    subs = make_submissions()
    assert subs["velo-100"].make_optimizer(workload).total_steps == workload.num_steps
    assert subs["velo-75"].make_optimizer(workload).total_steps == round(0.75 * workload.num_steps)
    timed = subs["velo-time-75"].make_optimizer(workload)
    assert timed.time_budget == pytest.approx(0.75 * workload.max_seconds)
    assert subs["velo-100"].algorithm == subs["velo-time-100"].algorithm == "VeLO 100%"
    assert subs["velo-50"].kind == "velo_prompt" and subs["velo-75"].kind == "velo"


def test_selecting_submissions():
    chosen = select_submissions("baselines,velo-50,adam")
    assert [s.name for s in chosen] == list(GROUPS["baselines"]) + ["velo-50"]
    assert len(select_submissions("all")) == len(make_submissions())
    with pytest.raises(ValueError, match="Unknown submission 'adamw'"):
        select_submissions("adamw")


def test_plan_and_shards_partition_the_study():
    workloads = workloads_from_suite("tiny-v1")
    subs = select_submissions("adam,velo-100,adam-grid")
    runs = plan_runs(workloads, subs, trials=3)
    assert len(runs) == len(workloads) * (2 * 3 + 6 * 1)  # the grid runs one trial per rate
    parts = [shard(runs, i, 4) for i in range(4)]
    labels = [r.label for part in parts for r in part]
    assert sorted(labels) == sorted(r.label for r in runs) and len(set(labels)) == len(labels)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x", "1/0", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)
    assert math.isclose(workloads_from_suite("tiny-v1", time_scale=2.0)[0].max_seconds, 2 * workloads[0].max_seconds)
    np.testing.assert_array_less(0, [w.log_every for w in workloads])
