"""VeLO under `tf.distribute.MirroredStrategy` (2 logical CPUs, TensorFlow).

Each replica hands VeLO its share of the loss; VeLO sums gradients and
shares across replicas and updates once, so two replicas match one device
up to float32 reduction order, in `fit` and in a custom loop. Runs in a
subprocess because logical devices are fixed when TensorFlow starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import golden_data


@pytest.mark.slow
@pytest.mark.backends("tensorflow")
def test_mirrored_strategy_matches_one_device():
    script = Path(__file__).with_name("tf_distribute_script.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run(
        [sys.executable, str(script), str(golden_data.GOLDEN_DIR / "velo_perturbed_theta")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    for run in ("fit", "loop"):
        assert report[f"{run}_change"] > 1e-3, report  # training moved the weights
        assert report[f"{run}_diff"] <= 1e-4 * report[f"{run}_change"], report
    assert report["loss_diff"] <= 1e-5, report
    # the same updates in both loops (fit's loss is the same global mean)
    assert report["loop_vs_fit"] <= 1e-4 * report["fit_change"], report
