"""JAX's persistent compilation cache for meta-training's processes.

Compiling an inner training step costs more than running a truncation of
it on a CPU (5-10 s a forward step, 30-80 s with its backward pass, per
architecture and process), and every Ray worker, every resumed run and
every `python -m meta.evaluate` compiles the same programs again. JAX keeps
compiled programs on disk and reuses them across processes: a second
meta-validation of the `cpu` set takes 87 s instead of 193 s in a new
process. The cache is `keras_velo.enable_compilation_cache`'s (on JAX,
`$JAX_COMPILATION_CACHE_DIR` if set, else `~/.cache/keras_velo/jax`).
"""

from keras_velo.compilation_cache import enable_compilation_cache, jax_cache_directory


def cache_directory():
    return jax_cache_directory()


def enable():
    """Turns the cache on in this process (and, through the environment, in its children)."""
    return enable_compilation_cache(min_compile_seconds=1.0)
