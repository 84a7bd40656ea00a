"""`keras_velo.enable_compilation_cache()`: a second process reads VeLO's compiled update from disk.

Two fresh processes jit the same VeLO update (`stateless_apply` on a small
tree) with the cache in a temporary folder: the first writes programs
there, the second finds every program it needs and writes nothing new.
No timing: the cache's own files say whether it was read.
"""

import os
import pathlib
import subprocess
import sys

import pytest

pytestmark = pytest.mark.backends("jax")

CHILD = """
import keras, numpy as np, jax
import keras_velo
directory = keras_velo.enable_compilation_cache(min_compile_seconds=0.0)
variables = [keras.Variable(np.ones(s, np.float32)) for s in [(32, 16), (16,), (3, 3, 4, 8)]]
optimizer = keras_velo.VeLO(total_steps=10, weights="bundled")
optimizer.build(variables)
grads = [np.full(v.shape, 0.1, np.float32) for v in variables]
values = jax.jit(optimizer.stateless_apply)(
    [v.value for v in optimizer.variables], grads, [v.value for v in variables], loss=1.0)
print(directory)
"""


def _run_child(cache):
    env = dict(os.environ, KERAS_BACKEND="jax", KERAS_VELO_CACHE_DIR=str(cache))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    result = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return pathlib.Path(result.stdout.strip().splitlines()[-1])


def _entries(directory):
    return {p.name for p in directory.rglob("*") if p.is_file()}


def test_a_second_process_reuses_the_compiled_update(tmp_path):
    directory = _run_child(tmp_path)
    assert directory == tmp_path / "jax"
    first = _entries(directory)
    assert first, "the first process stored no compiled program"
    _run_child(tmp_path)
    assert _entries(directory) == first, "the second process compiled something again"


def test_the_folder_follows_the_environment(tmp_path, monkeypatch):
    from keras_velo.training import compilation_cache

    monkeypatch.setenv("KERAS_VELO_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert compilation_cache.jax_cache_directory() == tmp_path / "jax"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert compilation_cache.jax_cache_directory() == tmp_path / "elsewhere"
