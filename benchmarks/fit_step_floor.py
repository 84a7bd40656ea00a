"""The least a VeLO `fit` step can cost on small models, against Adam's measured step (JAX).

What is derived
---------------
A `fit` step is the model's forward and backward pass plus the update.
VeLO's update has two parts no implementation can skip:

* **theta, read every step.** The LSTM's `[1024, 2048]` weight, the
  control head `[512, 256]`, the two input mixes `[30, 512]` and the bank
  of 256 MLPs (`[256, 159]`): about 2.3 million floats, 9.2 MB, go through
  the matmuls of every update whatever the model's size (VeLO runs its
  hypernetwork each step; the reference does). At the machine's memory
  bandwidth that is a fixed time per step.
* **the per-parameter work**: 3 passes, 92 bytes and ~350 flops per
  parameter (`update_floor.py`), the larger of bytes / bandwidth and
  flops / throughput.

The floor of VeLO's step is then Adam's measured step, less Adam's own
isolated update (measured), plus those two floors: what VeLO's step would
cost if its update ran at this machine's limits and nothing else differed.
Its ratio to Adam's step is the best ratio any implementation of VeLO can
reach on this machine. Also printed: VeLO's measured step and isolated
update, its hypernetwork alone (jitted), and for the quickstart the least
time 1,000 steps add to a run.

Usage
-----
    python benchmarks/fit_step_floor.py
    python benchmarks/fit_step_floor.py --models mlp2,quickstart,gpt2_hub --steps 200
"""

import argparse
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from update_floor import VELO_BYTES, VELO_FLOPS, SIZE, CHAIN, measure_jax  # noqa: E402

QUICKSTART_STEPS = 1000


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def theta_floats_read(theta):
    """Floats of theta an update reads: everything but the initial LSTM state and the dead mix layer."""
    import numpy as np

    from keras_velo.maths.theta import flatten_theta

    return sum(int(np.size(value)) for path, value in flatten_theta(theta).items()
               if path[0] != "lstm_init_state" and path[:2] != ("rnn_params", "linear"))


def hypernetwork_ms(theta, num_tensors, repeats=200):
    """Milliseconds of VeLO's per-tensor hypernetwork (mix, LSTM, heads, MLP weights), jitted."""
    import jax
    import numpy as np

    from keras_velo.maths.hypernetwork import (
        control_heads,
        lstm_step,
        mix_mlp_weights,
        mix_tensor_features,
    )

    rnn, bank = theta["rnn_params"], theta["ff_mod_stack"]["~"]
    rng = np.random.default_rng(0)
    features = jax.numpy.asarray(rng.normal(size=(num_tensors, 30)).astype("float32"))
    hidden = jax.numpy.asarray(np.tile(np.asarray(theta["lstm_init_state"]["hidden"]), (num_tensors, 1)))
    cell = jax.numpy.asarray(np.tile(np.asarray(theta["lstm_init_state"]["cell"]), (num_tensors, 1)))

    @jax.jit
    def step(rnn, bank, features, hidden, cell):
        hidden, cell = lstm_step(rnn, mix_tensor_features(rnn, features), hidden, cell)
        controls, lr_mult = control_heads(rnn, hidden)
        return mix_mlp_weights(bank, controls), lr_mult, hidden, cell

    rnn = jax.tree.map(jax.numpy.asarray, rnn)
    bank = jax.tree.map(jax.numpy.asarray, bank)
    jax.block_until_ready(step(rnn, bank, features, hidden, cell))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats // 5):
            out = step(rnn, bank, features, hidden, cell)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / (repeats // 5))
    return 1e3 * best


def isolated_update_ms(optimizer, shapes, with_loss, updates=100):
    from update_profile import jitted_update, time_updates

    step, optimizer_values, trainable_values, grads = jitted_update(optimizer, shapes, with_loss)
    seconds, _, _ = time_updates(step, optimizer_values, trainable_values, grads, updates)
    return 1e3 * seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="mlp2,quickstart",
                        help="comma-separated names of fit_models.py (quickstart: examples/quickstart.py's MLP, batch 128)")
    parser.add_argument("--steps", type=int, default=300, help="steps timed per fit pass")
    args = parser.parse_args(argv)
    import fit_models
    import keras

    import keras_velo
    from keras_velo.weights.pretrained import resolve_weights

    theta, _ = resolve_weights("bundled", seed=0)
    log("measuring the machine (memory bandwidth, multiply-add throughput)")
    read_s, chain_s = measure_jax()
    bandwidth = 4 * SIZE / read_s
    throughput = 2 * (CHAIN // 4) * 4 * SIZE / chain_s
    theta_bytes = 4 * theta_floats_read(theta)
    theta_floor_ms = 1e3 * theta_bytes / bandwidth
    print(f"this machine: reading {bandwidth / 1e9:.1f} GB/s, multiply-adds {throughput / 1e9:.0f} GFLOP/s; "
          f"theta read per update {theta_bytes / 1e6:.1f} MB -> at least {theta_floor_ms:.3f} ms a step")

    rows = []
    for name in args.models.split(","):
        log(f"{name}: Adam's and VeLO's fit steps")
        adam = fit_models.measure(name, "adam", 64, args.steps)
        velo = fit_models.measure(name, "velo", 64, args.steps)
        params, tensors = adam["params"], adam["tensors"]
        shapes = [tuple(v.shape) for v in fit_models.build_model(name)[0].trainable_variables]
        log(f"{name}: isolated updates and the hypernetwork")
        adam_update = isolated_update_ms(keras.optimizers.Adam(1e-3), shapes, False)
        velo_update = isolated_update_ms(keras_velo.VeLO(total_steps=1000, weights="bundled"), shapes, True)
        hyper = hypernetwork_ms(theta, tensors)
        per_parameter_ms = 1e3 * params * max(VELO_BYTES / bandwidth, VELO_FLOPS / throughput)
        floor = adam["step_ms"] - adam_update + theta_floor_ms + per_parameter_ms
        rows.append(dict(name=name, params=params, tensors=tensors, adam_step=adam["step_ms"],
                         velo_step=velo["step_ms"], adam_update=adam_update, velo_update=velo_update,
                         hyper=hyper, per_parameter=per_parameter_ms, floor=floor))

    print(f"\n{'model':12} {'params':>8} {'N':>3} | {'Adam step':>9} {'Adam upd':>8} | "
          f"{'theta floor':>11} {'per-param floor':>15} {'VeLO floor step':>15} {'floor/Adam':>10} | "
          f"{'VeLO step':>9} {'/Adam':>6} {'VeLO upd':>8} {'hypernet':>8}   (ms)")
    for r in rows:
        print(f"{r['name']:12} {r['params']:>8,} {r['tensors']:>3} | {r['adam_step']:>9.3f} "
              f"{r['adam_update']:>8.3f} | {theta_floor_ms:>11.3f} {r['per_parameter']:>15.3f} "
              f"{r['floor']:>15.3f} {r['floor'] / r['adam_step']:>9.2f}x | {r['velo_step']:>9.3f} "
              f"{r['velo_step'] / r['adam_step']:>5.2f}x {r['velo_update']:>8.3f} {r['hyper']:>8.3f}")
    for r in rows:
        if r["name"] == "quickstart":
            extra = QUICKSTART_STEPS * (r["floor"] - r["adam_step"]) / 1e3
            print(f"\nquickstart: {QUICKSTART_STEPS:,} VeLO steps at the floor add at least {extra:.2f} s "
                  f"to Adam's run (measured now: "
                  f"{QUICKSTART_STEPS * (r['velo_step'] - r['adam_step']) / 1e3:.2f} s)")


if __name__ == "__main__":
    main()
