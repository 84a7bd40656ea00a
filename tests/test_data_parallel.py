"""VeLO under `keras.distribution.DataParallel` on JAX (4 fake CPU devices).

Per-tensor statistics must be over whole tensors, so the result matches a
single device up to float32 reduction order. Runs in a subprocess because
the device count is fixed when JAX starts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import golden_data


@pytest.mark.slow
@pytest.mark.backends("jax")
def test_data_parallel_matches_one_device():
    script = Path(__file__).with_name("data_parallel_script.py")
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
    assert report["devices"] == 4
    assert report["max_abs_change"] > 1e-3  # training moved the weights
    assert report["max_abs_diff"] <= 1e-4 * report["max_abs_change"], report
