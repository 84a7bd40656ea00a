"""VeLO against Adam on several (host) devices: state bytes per device, collectives, step time.

What is measured
----------------
JAX only (`keras.distribution`). For each device count (`--devices`, 1, 2
and 4 by default; XLA's host platform split into that many CPU devices, in
one child process per count, since the count is fixed when JAX starts),
an MLP 64-512-512-10 (`--width`) is trained with `model.fit` under

* `DataParallel` over all devices (the batch split, parameters replicated);
* `ModelParallel` on a ("batch", "model") mesh of 1x2 (2 devices) or 2x2
  (4 devices), every Dense kernel laid out `(None, "model")` and its bias
  `("model",)`;
* one device (no distribution) for the count 1;

once with `keras.optimizers.Adam(1e-3)` and once with `keras_velo.VeLO`
(`weights="bundled"`), back to back. For each run:

* state bytes on device 0: the optimizer variables' shards on the first
  device (all of each variable where it is replicated), and the fraction
  of the whole state that is; VeLO's theta (9.28 MB, the same on every
  device by design) left out;
* the compiled train step's collectives (XLA's optimised HLO, dumped with
  `--xla_dump_to`): how many of each kind and the bytes of the largest
  one's result; parameter- or state-sized ones are what model parallelism
  must avoid;
* step time: a `fit` call over `--steps` batches after the first (which
  compiles), divided by the steps, median of 3 calls, and its ratio to
  Adam's in the same configuration.

The host "devices" share 2 CPU cores here, so the step times say what the
program costs, not what real accelerators would gain; the bytes and the
collectives are exact.

Usage
-----
    python benchmarks/multi_device.py                  # 1, 2, 4 devices
    python benchmarks/multi_device.py --devices 4 --json out.json
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

COLLECTIVES = ("all-gather", "all-reduce", "all-to-all", "collective-permute", "reduce-scatter")
DTYPE_BYTES = {"f32": 4, "s32": 4, "u32": 4, "f16": 2, "bf16": 2, "pred": 1, "s8": 1, "u8": 1,
               "f64": 8, "s64": 8, "u64": 8}
_COLLECTIVE = re.compile(
    r"=\s*(?P<result>.*?)\s(?P<op>" + "|".join(COLLECTIVES) + r")(?:-start)?\("
)
_ARRAY = re.compile(r"(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")


def log(message):
    print(message, file=sys.stderr, flush=True)


def collectives_in_hlo(text):
    """`{kind: [result bytes, ...]}` for every collective in an HLO module's text."""
    found = {kind: [] for kind in COLLECTIVES}
    for line in text.splitlines():
        match = _COLLECTIVE.search(line)
        if match is None:
            continue
        sizes = [0]
        for array in _ARRAY.finditer(match["result"]):
            count = 1
            for dim in filter(None, array["dims"].split(",")):
                count *= int(dim)
            sizes.append(count * DTYPE_BYTES.get(array["dtype"], 4))
        found[match["op"]].append(max(sizes))
    return found


def _train_step_hlo(dump_dir, seen):
    """The optimised HLO of the newest train step dumped to `dump_dir` (files not in `seen`)."""
    new = sorted(
        name for name in os.listdir(dump_dir)
        if name not in seen and "train" in name and name.endswith("after_optimizations.txt")
    )
    if not new:
        return ""
    with open(os.path.join(dump_dir, new[-1])) as handle:
        return handle.read()


def _distribution(kind, devices):
    import keras

    if kind == "one":
        return None
    if kind == "data":
        return keras.distribution.DataParallel(devices=devices)
    shape = (1, 2) if len(devices) == 2 else (len(devices) // 2, 2)
    mesh = keras.distribution.DeviceMesh(shape, ["batch", "model"], devices=devices)
    layout_map = keras.distribution.LayoutMap(mesh)
    layout_map[".*dense.*kernel"] = (None, "model")
    layout_map[".*dense.*bias"] = ("model",)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")


def _state_bytes(optimizer, device):
    """(bytes of the optimizer's variables on `device`, bytes of all of them), theta left out.

    VeLO's theta (its 9.28 MB of weights) is the same on every device by
    design; what must shard is the state that grows with the model.
    """
    on_device = whole = 0
    for variable in optimizer.variables:
        if "theta_" in variable.path:
            continue
        value = variable.value
        whole += value.nbytes
        on_device += sum(s.data.nbytes for s in value.addressable_shards if s.device == device)
    return on_device, whole


def _run(kind, optimizer_name, devices, width, steps, batch, dump_dir):
    import jax
    import keras
    import numpy as np

    import keras_velo

    keras.distribution.set_distribution(_distribution(kind, devices))
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch * (steps + 1), 64)).astype("float32")
    y = rng.integers(0, 10, len(x))
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(width, activation="relu", name="dense_a"),
        keras.layers.Dense(width, activation="relu", name="dense_b"),
        keras.layers.Dense(10, name="dense_out"),
    ])
    if optimizer_name == "adam":
        optimizer, callbacks = keras.optimizers.Adam(1e-3), []
    else:
        optimizer = keras_velo.VeLO(total_steps=3 * steps + 1, weights="bundled")
        callbacks = [keras_velo.VeLOCallback()]
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    seen = set(os.listdir(dump_dir))
    model.fit(x[:batch], y[:batch], batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
    hlo = _train_step_hlo(dump_dir, seen)

    times = []
    for _ in range(3):  # a whole fit of `steps` batches (it ends synchronised), median of 3
        start = time.perf_counter()
        model.fit(x[batch:], y[batch:], batch_size=batch, epochs=1, verbose=0, callbacks=callbacks)
        times.append((time.perf_counter() - start) / steps)
    on_device, whole = _state_bytes(model.optimizer, devices[0])
    keras.distribution.set_distribution(None)
    collectives = collectives_in_hlo(hlo)
    return {
        "distribution": kind, "optimizer": optimizer_name, "devices": len(devices),
        "state_bytes_device0": on_device, "state_bytes_whole": whole,
        "step_seconds": statistics.median(times),
        "collectives": {k: len(v) for k, v in collectives.items() if v},
        "largest_collective_bytes": max((b for v in collectives.values() for b in v), default=0),
        "hlo_found": bool(hlo),
    }


def child(args):
    import jax

    devices = jax.devices()
    assert len(devices) == args.child, (len(devices), args.child)
    kinds = ["one"] if args.child == 1 else ["data", "model"]
    rows = []
    for kind in kinds:
        for name in ("adam", "velo"):
            log(f"  {args.child} device(s), {kind}, {name}")
            rows.append(_run(kind, name, devices, args.width, args.steps, args.batch_size,
                             args.dump_dir))
    print(json.dumps(rows))


def _table(rows):
    lines = [
        "| devices | distribution | optimizer | state on device 0 (no theta) | of the whole | collectives "
        "(count by kind) | largest collective | step ms | step / Adam's |",
        "|---:|---|---|---:|---:|---|---:|---:|---:|",
    ]
    adam = {(r["devices"], r["distribution"]): r for r in rows if r["optimizer"] == "adam"}
    for r in rows:
        base = adam[(r["devices"], r["distribution"])]
        kinds = ", ".join(f"{k} {n}" for k, n in r["collectives"].items()) or "none"
        lines.append(
            f"| {r['devices']} | {r['distribution']} | {r['optimizer']} "
            f"| {r['state_bytes_device0'] / 1e6:.2f} MB "
            f"| {r['state_bytes_device0'] / r['state_bytes_whole']:.0%} | {kinds} "
            f"| {r['largest_collective_bytes'] / 1e3:.1f} kB | {1e3 * r['step_seconds']:.1f} "
            f"| {r['step_seconds'] / base['step_seconds']:.2f} |"
        )
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", default="1,2,4", help="host device counts, comma-separated")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dump-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    rows = []
    for count in (int(n) for n in args.devices.split(",")):
        with tempfile.TemporaryDirectory() as dump_dir:
            log(f"{count} device(s): a child process")
            env = {
                **os.environ, "KERAS_BACKEND": "jax",
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={count} "
                             f"--xla_dump_to={dump_dir} --xla_dump_hlo_module_re=.*train.*",
            }
            command = [sys.executable, __file__, "--child", str(count), "--dump-dir", dump_dir,
                       "--width", str(args.width), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size)]
            result = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
            rows += json.loads(result.stdout.strip().splitlines()[-1])
    print(_table(rows))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
