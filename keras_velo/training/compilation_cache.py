"""Compiled programs kept on disk, so that a second run of the same model skips compiling.

`enable_compilation_cache()` turns on the backend's persistent cache for
this process (and, through the environment, the processes it starts):

* **JAX**: XLA's persistent compilation cache (`jax_compilation_cache_dir`).
  `fit`'s train step with VeLO inside, `jax.jit(optimizer.stateless_apply)`
  and meta-training's programs come back from disk in a new process
  instead of compiling again (`benchmarks/compilation_cache.py`).
  Programs that compile in under `min_compile_seconds` are not stored.
* **PyTorch**: inductor's caches (`TORCHINDUCTOR_CACHE_DIR`, set to
  `<root>/torchinductor`), which keep the generated C++/Triton kernels and
  compiled graphs of VeLO's update (`keras_velo.packed.torch_compile`).
* **TensorFlow**: nothing (returns None): TensorFlow's XLA cache can only be
  set before TensorFlow starts (`TF_XLA_FLAGS`).

The folder is `$KERAS_VELO_CACHE_DIR` if set, else `~/.cache/keras_velo`,
with one subfolder per backend; deleting it is always safe. keras-velo's
own entry points (the examples, `python -m evaluation`, `python -m
meta.train` / `meta.evaluate`) call this; in your own script call it once,
before the first `fit`:

>>> import keras_velo
>>> keras_velo.enable_compilation_cache()
PosixPath('/home/me/.cache/keras_velo/jax')
"""

import os
import pathlib

ENVIRONMENT_DIRECTORY = "KERAS_VELO_CACHE_DIR"
DEFAULT_DIRECTORY = pathlib.Path.home() / ".cache" / "keras_velo"


def cache_root():
    """The cache's root folder: `$KERAS_VELO_CACHE_DIR`, else `~/.cache/keras_velo`."""
    return pathlib.Path(os.environ.get(ENVIRONMENT_DIRECTORY, DEFAULT_DIRECTORY))


def jax_cache_directory():
    """JAX's folder: `$JAX_COMPILATION_CACHE_DIR` if set, else `<root>/jax`."""
    return pathlib.Path(os.environ.get("JAX_COMPILATION_CACHE_DIR", cache_root() / "jax"))


def enable_compilation_cache(min_compile_seconds=1.0):
    """Turns on the current backend's persistent compilation cache; returns its folder.

    Returns None on TensorFlow (see the module's docstring).
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        directory = jax_cache_directory()
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["JAX_COMPILATION_CACHE_DIR"] = str(directory)
        jax.config.update("jax_compilation_cache_dir", str(directory))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
        return directory
    if backend == "torch":
        # Set whatever the environment says: importing torch may already
        # have written inductor's default (a folder under /tmp) there.
        directory = cache_root() / "torchinductor"
        directory.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
        return directory
    return None
