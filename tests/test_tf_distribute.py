"""VeLO under `tf.distribute.MirroredStrategy` (2 logical CPUs, TensorFlow).

Each replica hands VeLO its share of the loss; VeLO sums gradients and
shares across replicas and updates once, so two replicas match one device
up to float32 reduction order, in `fit` and in a custom loop. Runs in a
subprocess because logical devices are fixed when TensorFlow starts.
"""

import pytest

import golden_data
from device_script import run_device_script


@pytest.mark.slow
@pytest.mark.backends("tensorflow")
def test_mirrored_strategy_matches_one_device():
    report = run_device_script("tf_distribute_script.py", golden_data.GOLDEN_DIR / "velo_perturbed_theta")
    assert report["replicas"] == 2
    for run in ("fit", "loop"):
        assert report[f"{run}_change"] > 1e-3, report  # training moved the weights
        assert report[f"{run}_diff"] <= 1e-4 * report[f"{run}_change"], report
    assert report["loss_diff"] <= 1e-5, report
    # the same updates in both loops (fit's loss is the same global mean)
    assert report["loop_vs_fit"] <= 1e-4 * report["fit_change"], report
