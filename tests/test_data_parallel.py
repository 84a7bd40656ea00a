"""VeLO under `keras.distribution.DataParallel` on JAX (4 fake CPU devices).

Per-tensor statistics must be over whole tensors, so the result matches a
single device up to float32 reduction order. Runs in a subprocess because
the device count is fixed when JAX starts.
"""

import pytest

import golden_data
from device_script import run_device_script


@pytest.mark.slow
@pytest.mark.backends("jax")
def test_data_parallel_matches_one_device():
    report = run_device_script("data_parallel_script.py", golden_data.GOLDEN_DIR / "velo_perturbed_theta")
    assert report["devices"] == 4
    assert report["max_abs_change"] > 1e-3  # training moved the weights
    assert report["max_abs_diff"] <= 1e-4 * report["max_abs_change"], report
