"""The floor under VeLO's update on this machine: bytes and flops per parameter, against Adam's.

What is derived (see "The floor" in benchmarks/RESULTS.md)
---------------------------------------------------------
VeLO's data dependencies need three passes over a tensor's elements, each
ending in a reduction the next one needs: (A) sums of the old state and
of g² (the LSTM's means, the factored second moments), (B) the centred
sums of the old momenta and the 30 MLP inputs' mean squares (from the new
state), (C) the MLP, the step and the new state. Each pass reads p, g, the
3 momenta and rms; C writes them back: 23 floats, `VELO_BYTES` per
parameter. Its arithmetic, `VELO_FLOPS` per parameter, is dominated by the
MLP's first layer (18 per-element inputs x 4 units). Adam reads p, g, m, v and writes
p, m, v (`ADAM_BYTES`) for ~12 flops.

What is measured
----------------
In one process, on the backend in `KERAS_BACKEND` (JAX or PyTorch, each
compiling its element-wise loops: `jax.jit`, `torch.compile`): the memory
bandwidth of a sum over a large array (read once; writes are counted at
the same rate), and the throughput of 148 fused multiply-adds per element
in 4 independent chains (what the MLP's first layer is made of). The floor of each
update is the larger of bytes / bandwidth and flops / throughput, for the
parameter counts of `benchmarks/velo_update.py`'s and `fit_models.py`'s
models.

Usage
-----
    KERAS_BACKEND=jax python benchmarks/update_floor.py
"""

import os
import sys
import time

VELO_BYTES = 23 * 4
ADAM_BYTES = 7 * 4
# Per element of a factored tensor (most parameters): pass A ~10 (p², sums,
# g²); pass B ~76 (new state ~13, the 18 element inputs' squares from it
# ~37, their sums 18, centred sums 8); pass C ~256 (new state again 13, the
# 18 element inputs 19, first layer 18 x 4 multiply-adds 144 plus the
# row and lane tables' partial sums 8, the 4x4 and 4x2 layers with biases
# and ReLUs 66, step 6). Two rsqrt and one exp per element come on top.
VELO_FLOPS = 350
ADAM_FLOPS = 12
MODELS = {
    "MLP 784-1024-256-10": 1_068_810,
    "MobileNetV2 (32x32)": 2_236_682,
    "ResNet-50 (32x32)": 23_555_082,
}
SIZE = 23_555_082
CHAIN = 150


def best_of(run, repeats=5):
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _chain(x):
    """`CHAIN` multiply-adds per element in 4 independent chains, as the MLP's
    first layer accumulates its 4 hidden units."""
    units = [x, x + 1.0, x + 2.0, x + 3.0]
    for i in range(CHAIN // 4):
        units = [u * 1.0001 + x for u in units]
    return (units[0] + units[1]) + (units[2] + units[3])


def measure_jax():
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(jax.random.normal(jax.random.PRNGKey(0), (SIZE,)))
    read = jax.jit(jnp.sum)
    chain = jax.jit(_chain)
    return (best_of(lambda: read(x).block_until_ready()),
            best_of(lambda: chain(x).block_until_ready()))


def measure_torch():
    import torch

    x = torch.randn(SIZE)
    chain = torch.compile(_chain)
    return best_of(lambda: torch.sum(x)), best_of(lambda: chain(x))


def main():
    backend = os.environ.get("KERAS_BACKEND", "jax")
    if backend not in ("jax", "torch"):
        sys.exit("KERAS_BACKEND must be jax or torch")
    read_s, chain_s = measure_jax() if backend == "jax" else measure_torch()
    bandwidth = 4 * SIZE / read_s  # bytes/s, a sum reading every element once
    throughput = 2 * (CHAIN // 4) * 4 * SIZE / chain_s  # flop/s
    print(f"{backend}: reading {bandwidth / 1e9:.1f} GB/s, fused multiply-adds "
          f"{throughput / 1e9:.1f} GFLOP/s")
    print(f"per parameter: VeLO {VELO_BYTES} B and ~{VELO_FLOPS} flops, "
          f"Adam {ADAM_BYTES} B and ~{ADAM_FLOPS} flops "
          f"({VELO_BYTES / ADAM_BYTES:.1f}x the bytes, {VELO_FLOPS / ADAM_FLOPS:.0f}x the flops)")
    print(f"{'model':22} {'params':>11} {'VeLO floor ms':>14} {'bound':>8} {'Adam floor ms':>14} "
          f"{'ratio':>6}")
    for name, params in MODELS.items():
        velo_memory, velo_compute = params * VELO_BYTES / bandwidth, params * VELO_FLOPS / throughput
        adam = max(params * ADAM_BYTES / bandwidth, params * ADAM_FLOPS / throughput)
        velo = max(velo_memory, velo_compute)
        bound = "compute" if velo_compute > velo_memory else "memory"
        print(f"{name:22} {params:>11,} {1e3 * velo:>14.1f} {bound:>8} {1e3 * adam:>14.1f} "
              f"{velo / adam:>6.1f}")


if __name__ == "__main__":
    main()
