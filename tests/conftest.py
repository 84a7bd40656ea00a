"""Shared test set-up: one pytest process per Keras backend.

The backend is fixed at the first `import keras`, so `.ci/run` starts one
pytest process per value of `KERAS_BACKEND`; this file defaults it to JAX.
`@pytest.mark.backends("jax")` limits a test to the named backends.
"""

import os
import pathlib
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
# Tests never download: a tfds download attempt here hangs for minutes.
os.environ["KERAS_VELO_TFDS_DOWNLOAD"] = "0"
# VeLO on PyTorch compiles its update (~25 s per model): the suite runs it
# eagerly, except tests/test_torch_compile.py, which compares the two.
os.environ.setdefault("KERAS_VELO_TORCH_COMPILE", "0")
# Entry points the tests start (the evaluation CLI, meta-training) turn on
# the compilation cache: keep it out of the user's ~/.cache.
os.environ.setdefault(
    "KERAS_VELO_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "keras_velo_test_cache")
)
# Meta-training's Adam references (meta.adam_reference) of the tests' tiny
# tasks stay out of the committed meta/references/.
os.environ.setdefault(
    "KERAS_VELO_REFERENCE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "keras_velo_test_references")
)

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DIR = pathlib.Path(
    os.environ.get("KERAS_VELO_SHARED", REPO_ROOT.parent / "shared")
)
GOLDEN_DIR = SHARED_DIR / "golden"


def pytest_report_header(config):
    return f"KERAS_BACKEND={os.environ['KERAS_BACKEND']}, golden data: {GOLDEN_DIR}"


def pytest_collection_modifyitems(config, items):
    backend = os.environ["KERAS_BACKEND"]
    for item in items:
        marker = item.get_closest_marker("backends")
        if marker is not None and backend not in marker.args:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"runs only under {marker.args}, not {backend}"
                )
            )


@pytest.fixture(scope="session")
def golden_dir():
    """The reference golden data; missing data is an error, never a skip."""
    if not (GOLDEN_DIR / "index.json").exists():
        raise FileNotFoundError(
            f"Golden data not found at {GOLDEN_DIR}. Check out the project's "
            "shared/ folder beside the repository, or set KERAS_VELO_SHARED."
        )
    return GOLDEN_DIR
