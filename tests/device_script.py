"""Runs a multi-device test script in a fresh process and returns its JSON report.

The number of devices (JAX host devices, TensorFlow logical CPUs) is fixed
when a backend starts, so each multi-device test runs its script in a
process of its own; the script prints its report as JSON on its last line.
"""

import json
import os
import subprocess
import sys
from pathlib import Path


def run_device_script(name, *args, timeout=900):
    """The report of `tests/<name>` run with `args` (fails with its stderr if it fails)."""
    script = Path(__file__).with_name(name)
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, str(script), *(str(a) for a in args)],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(root)},
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
