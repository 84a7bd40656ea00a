"""`python -m meta.train`: meta-train VeLO's weights with evolution strategies, on Ray.

    python -m meta.train --config smoke --out runs/smoke
    python -m meta.train --config cpu --out runs/cpu --init bundled        # hours
    python -m meta.train --config cpu --out runs/cpu --resume              # after a kill
    python -m meta.train --config gpu --out runs/gpu --address auto        # a Ray cluster

Writes into `--out`:

* `theta/`: the current theta as an official-format checkpoint (`params` +
  `config.gin`), loadable as `keras_velo.VeLO(weights="DIR/theta")` on
  every backend; rewritten at every checkpoint;
* `metrics.jsonl`: one JSON record per meta-iteration (`iteration`,
  `meta_loss`, `gradient_norm`, `wall_time_s`, ...);
* `meta_loss.png`: the meta-loss curve;
* `run_state.pkl` and `run_config.json`: what `--resume` needs to continue
  exactly as an uninterrupted run would (theta, Adam's state, the members'
  inner training states and episode starts, and the iteration; every random
  draw -- perturbations included, so they are regenerated rather than
  stored -- is a function of the seed, the iteration and the member; about
  3x theta's size, small enough to commit). Iterations after the last
  checkpoint are redone on resume.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import pickle
import sys
import time

import numpy as np

RUN_STATE = "run_state.pkl"
RUN_CONFIG = "run_config.json"
METRICS = "metrics.jsonl"
PLOT = "meta_loss.png"


def initial_theta(init, seed=0):
    """Theta to start from: "bundled", "random" (seeded) or a checkpoint path."""
    from keras_velo.pretrained import resolve_weights

    if init == "random":
        return resolve_weights(None, seed=seed)
    return resolve_weights(init)


def save_run_state(out, learner, particles):
    """Atomically writes `out/run_state.pkl`."""
    path = pathlib.Path(out) / RUN_STATE
    temporary = path.with_suffix(".tmp")
    state = {
        "iteration": learner.iteration,
        "theta_vector": learner.theta_vector,
        "optimizer_state": learner.optimizer_state,
        "episode_starts": learner.episode_starts,
        "particles": particles,
    }
    with open(temporary, "wb") as file:
        pickle.dump(state, file, protocol=pickle.HIGHEST_PROTOCOL)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def load_run_state(out):
    with open(pathlib.Path(out) / RUN_STATE, "rb") as file:
        return pickle.load(file)


def write_theta(out, layout, theta_vector, iteration, config_name):
    from keras_velo.checkpoint import write_checkpoint

    directory = pathlib.Path(out) / "theta"
    directory.mkdir(parents=True, exist_ok=True)
    theta = layout.to_theta(np.asarray(theta_vector, np.float32))
    return write_checkpoint(f"{directory}{os.sep}", theta, gen_id=f"keras_velo_meta_{config_name}", step=iteration)


def read_metrics(out):
    path = pathlib.Path(out) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(out, iteration):
    """Keeps the records of iterations before `iteration` (the resumed run redoes the rest)."""
    kept = [r for r in read_metrics(out) if r["iteration"] < iteration]
    path = pathlib.Path(out) / METRICS
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


# Neither changes a run's results: a run may be resumed with more iterations
# or on another number of workers.
RESUMABLE_CHANGES = ("iterations", "workers")


def _config_record(config, init):
    fixed = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps({"config": fixed, "init": init}))


def train(config, out, init="bundled", resume=False, address=None, progress=True):
    """Runs `config` into directory `out`; returns the final `MetaLearner`."""
    from meta.learner import MetaLearner
    from meta.plots import plot_meta_loss
    from meta.theta_vector import ThetaLayout
    from meta.workers import make_pool

    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = _config_record(config, init)
    config_path = out / RUN_CONFIG
    if resume:
        if not (out / RUN_STATE).exists():
            raise FileNotFoundError(
                f"--resume: no {RUN_STATE} in {out}; start the run without --resume first."
            )
        saved = json.loads(config_path.read_text())
        if saved != record:
            raise ValueError(
                f"--resume: {out} holds a run of another configuration ({saved}); "
                "use the same --config, --init and overrides, or a new --out."
            )
    elif (out / RUN_STATE).exists():
        raise FileExistsError(
            f"{out} already holds a meta-training run; pass --resume to continue it "
            "or choose a new --out."
        )
    config_path.write_text(json.dumps(record, indent=1))

    theta, description = initial_theta(init, config.seed)
    layout = ThetaLayout.of(theta)
    learner = MetaLearner.start(config, layout.to_vector(theta))
    runner_arguments = (
        layout, config.distribution, config.seed, config.sigma,
        config.unroll_truncation, config.max_loss_ratio,
    )
    pool = make_pool(runner_arguments, config.workers, address)
    try:
        if resume:
            state = load_run_state(out)
            learner.iteration = state["iteration"]
            learner.theta_vector = state["theta_vector"]
            learner.optimizer_state = state["optimizer_state"]
            learner.episode_starts = state["episode_starts"]
            learner.regenerate_accumulated()
            pool.set_particles(state["particles"])
            truncate_metrics(out, learner.iteration)
        else:
            truncate_metrics(out, 0)
        _log(f"meta-training {config.name}: {config.estimator}, {config.members} members, "
             f"{config.workers or 'no'} Ray workers, from {description}, "
             f"iterations {learner.iteration}..{config.iterations}")
        bar = _progress(config.iterations, learner.iteration, progress)
        started = time.perf_counter()
        with open(out / METRICS, "a") as metrics:
            while learner.iteration < config.iterations:
                result = learner.step(pool)
                result["elapsed_s"] = time.perf_counter() - started
                metrics.write(json.dumps(result) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(meta_loss=f"{result['meta_loss']:.4f}")
                done = learner.iteration == config.iterations
                if done or learner.iteration % config.checkpoint_every == 0:
                    write_theta(out, layout, learner.theta_vector, learner.iteration, config.name)
                    save_run_state(out, learner, pool.get_particles())
                    plot_meta_loss(read_metrics(out), out / PLOT, title=f"meta-training: {config.name}")
        bar.close()
    finally:
        pool.close()
    _log(f"wrote {out / 'theta'} (iteration {learner.iteration}), {out / METRICS}, {out / PLOT}")
    return learner


def _log(message):
    print(message, file=sys.stderr, flush=True)


def _progress(total, initial, enabled):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="meta-iterations", disable=not enabled,
                file=sys.stderr, dynamic_ncols=True)


def parse_args(argv=None):
    from meta.configs import PRESETS

    parser = argparse.ArgumentParser(prog="python -m meta.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, choices=sorted(PRESETS), help="a named preset")
    parser.add_argument("--out", required=True, help="run directory")
    parser.add_argument("--iterations", type=int, help="meta-iterations in all (overrides the preset)")
    parser.add_argument("--workers", type=int, help="Ray workers; 0 runs without Ray")
    parser.add_argument("--members", type=int, help="antithetic pairs per iteration")
    parser.add_argument("--seed", type=int, help="the run's seed")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--init", default="bundled", help="bundled | random | PATH of a checkpoint")
    parser.add_argument("--address", help="join the Ray cluster at this address ('auto' or host:port)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def config_from_args(args):
    from meta.configs import get_preset

    config = get_preset(args.config)
    overrides = {k: getattr(args, k) for k in ("iterations", "workers", "members", "seed")
                 if getattr(args, k) is not None}
    return dataclasses.replace(config, **overrides) if overrides else config


def main(argv=None):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    args = parse_args(argv)
    config = config_from_args(args)
    train(config, args.out, init=args.init, resume=args.resume, address=args.address,
          progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
