"""`python -m meta.train`: meta-train VeLO's weights, judged on a held-out meta-validation set.

    python -m meta.train --config smoke --out runs/smoke
    python -m meta.train --config cpu --out runs/cpu --init bundled        # hours
    python -m meta.train --config cpu --out runs/cpu --resume              # after a kill
    python -m meta.train --config cpu --out runs/mine --family mytasks:make_task --minutes 10
    python -m meta.train --config gpu --out runs/gpu --address auto        # a Ray cluster

Writes into `--out`:

* `theta/`: the current theta as an official-format checkpoint (`params` +
  `config.gin`), loadable as `keras_velo.VeLO(weights="DIR/theta")` on
  every backend; rewritten at every checkpoint (large: keep it out of git,
  `python -m meta.evaluate --run DIR --export PATH` rebuilds it);
* `metrics.jsonl`: one JSON record per meta-iteration (`iteration`,
  `meta_loss`, `gradient_norm`, `wall_time_s`, ...) and one per
  meta-validation (`"kind": "validation"`, `after_iteration`,
  `training_minutes`, `meta_valid`: the score of `meta.validation`);
* `meta_valid.png` (the meta-validation curve, the starting theta's score
  as a reference line: how a run is judged) and `meta_loss.png`;
* `run_state.npz` and `run_config.json`: what `--resume` needs, compact:
  the iteration, z (the run's coordinates, `meta.subspace`), Adam's state
  and each member's episode start (perturbations are regenerated, theta0
  is `--init`, checked by fingerprint); for a subspace of d coordinates
  about 12 d bytes;
* `particles.pkl`: the members' inner training states (large: keep it out
  of git). With it, `--resume` continues bit for bit as an uninterrupted
  run would; without it (a run committed without its particles) members
  start new episodes where the run resumes.

Iterations after the last checkpoint are redone on resume.
"""

import argparse
import dataclasses
import json
import os
import pathlib
import pickle
import sys
import time
import types

import numpy as np

RUN_STATE = "run_state.npz"
PARTICLES = "particles.pkl"
RUN_CONFIG = "run_config.json"
METRICS = "metrics.jsonl"
LOSS_PLOT = "meta_loss.png"
VALID_PLOT = "meta_valid.png"
# None changes a run's results: a run may be resumed with more iterations,
# a longer time budget, on another number of workers, validated more or less
# often, or under another name (a comparison's variant continued as the
# preset it became).
# The out-of-distribution set does not change what the run learns either.
RESUMABLE_CHANGES = ("name", "iterations", "minutes", "workers", "validate_every",
                     "validate_every_minutes", "ood_validation")


STEP_SCALED = "-step:"  # "<shipped weights>-step:S", e.g. "bootstrap-step:0.1"
FROM_RUN = "run:"
HAND_SET = "bootstrap:"  # "bootstrap:name=value,...": the bootstrap theta with other constants


def hand_set_constants(text):
    """`{field: value}` of `meta.bootstrap_theta.BootstrapConstants` from "name=value,name=value".

    >>> hand_set_constants("settled_vector_damping=0.3,settled_vector_weight_decay=false")
    {'settled_vector_damping': 0.3, 'settled_vector_weight_decay': False}
    """
    from meta.bootstrap_theta import DEFAULT_CONSTANTS

    constants = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        default = getattr(DEFAULT_CONSTANTS, name, None)
        if default is None or isinstance(default, tuple) or not value:
            raise ValueError(f"--init {HAND_SET}{text}: {item!r} is not name=value of a number or flag of "
                             "meta.bootstrap_theta.BootstrapConstants.")
        if isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"--init {HAND_SET}{text}: {name} takes true or false, got {value!r}.")
            constants[name] = value.lower() in ("true", "1")
        else:
            constants[name] = type(default)(value)
    return constants


def initial_theta(init, seed=0):
    """`(theta, description)` to start from.

    `init`: a shipped name ("bundled", "bootstrap"), "random" (seeded),
    "velo", a checkpoint path, "<shipped name>-step:S" (those weights with
    the step-size head scaled by S: every tensor's steps S times as large;
    the known answer's damage, or a start below the bootstrap's step),
    "bootstrap:name=value,..." (the hand-set theta with other constants,
    `meta.bootstrap_theta.BootstrapConstants`: a start point rebuilt from
    the code, no file), or "run:DIR" (the current theta of the
    meta-training run in DIR, rebuilt from its compact state).
    """
    from keras_velo.weights.pretrained import BUNDLED_WEIGHTS, resolve_weights

    if init == "random":
        return resolve_weights(None, seed=seed)
    if init.startswith(HAND_SET):
        from meta.bootstrap_theta import bootstrap_theta

        constants = hand_set_constants(init[len(HAND_SET):])
        return bootstrap_theta(**constants), "the bootstrap theta with " + ", ".join(
            f"{k}={v}" for k, v in constants.items())
    name, step_scaled, scale = init.partition(STEP_SCALED)
    if step_scaled and name in BUNDLED_WEIGHTS:
        scale = float(scale)
        theta, description = resolve_weights(name)
        head = theta["rnn_params"]["step_size"]
        theta["rnn_params"]["step_size"] = {k: v * np.float32(scale) for k, v in head.items()}
        return theta, f"{description}, step-size head x {scale:g}"
    if init.startswith(FROM_RUN):
        directory = init[len(FROM_RUN):]
        _, subspace, z, iteration = load_run(directory)
        return subspace.theta(z), f"the theta of run {directory} at iteration {iteration}"
    return resolve_weights(init)


def build_subspace(config, init, fingerprint=None):
    """`(ThetaSubspace, description of theta0)` of a run.

    `fingerprint`: the `theta0_sha256` a run recorded. Runs recorded
    "bundled" when it named the bootstrap theta; if `init` resolves to
    another theta now, its "bootstrap" reading is used when that matches.
    """
    from meta.subspace import ThetaSubspace

    theta0, description = initial_theta(init, config.seed)
    subspace = ThetaSubspace(config.subspace, theta0)
    if fingerprint is not None and subspace.fingerprint != fingerprint and "bundled" in init:
        theta0, older = initial_theta(init.replace("bundled", "bootstrap"), config.seed)
        older_subspace = ThetaSubspace(config.subspace, theta0)
        if older_subspace.fingerprint == fingerprint:
            return older_subspace, f"{older} (recorded as {init!r})"
    return subspace, description


# ------------------------------------------------------------------ run files


def _atomic_write(path, write):
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as file:
        write(file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def save_run_state(out, learner, particles, training_seconds):
    """Writes `run_state.npz` (compact) and `particles.pkl`, each atomically."""
    import jax

    leaves = jax.tree_util.tree_leaves(learner.optimizer_state)
    members = sorted(learner.episode_starts)
    arrays = {
        "iteration": np.asarray(learner.iteration, np.int64),
        "z": learner.z,
        "episode_members": np.asarray(members, np.int64),
        "episode_starts": np.asarray([learner.episode_starts[m] for m in members], np.int64),
        "training_seconds": np.asarray(training_seconds, np.float64),
        **{f"optimizer_{i}": np.asarray(leaf) for i, leaf in enumerate(leaves)},
    }
    out = pathlib.Path(out)
    _atomic_write(out / PARTICLES, lambda f: pickle.dump(
        {"iteration": learner.iteration, "particles": particles}, f,
        protocol=pickle.HIGHEST_PROTOCOL))
    _atomic_write(out / RUN_STATE, lambda f: np.savez(f, **arrays))


def load_run_state(out, learner):
    """Restores `learner` from `run_state.npz`; returns `(particles or None, training seconds)`."""
    import jax

    with np.load(pathlib.Path(out) / RUN_STATE) as data:
        learner.iteration = int(data["iteration"])
        learner.z = np.asarray(data["z"], np.float32)
        treedef = jax.tree_util.tree_structure(learner.optimizer_state)
        count = treedef.num_leaves
        learner.optimizer_state = jax.tree_util.tree_unflatten(
            treedef, [np.asarray(data[f"optimizer_{i}"]) for i in range(count)])
        learner.episode_starts = dict(zip(data["episode_members"].tolist(),
                                          data["episode_starts"].tolist()))
        seconds = float(data["training_seconds"])
    learner.regenerate_accumulated()
    particles = None
    path = pathlib.Path(out) / PARTICLES
    if path.exists():
        with open(path, "rb") as file:
            saved = pickle.load(file)
        if saved["iteration"] == learner.iteration:
            particles = saved["particles"]
    return particles, seconds


def write_theta(directory, subspace, z, iteration, config_name):
    """Writes theta(z) as an official-format checkpoint in `directory`."""
    from keras_velo.weights.checkpoint import write_checkpoint

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    theta = subspace.theta(np.asarray(z, np.float32))
    return write_checkpoint(f"{directory}{os.sep}", theta, gen_id=f"keras_velo_meta_{config_name}",
                            step=iteration)


def read_metrics(out):
    path = pathlib.Path(out) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(out, iteration):
    """Keeps what happened before `iteration` (the resumed run redoes the rest)."""
    kept = [r for r in read_metrics(out)
            if (r.get("after_iteration", -1) <= iteration if r.get("kind") == "validation"
                else r["iteration"] < iteration)]
    path = pathlib.Path(out) / METRICS
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _config_record(config, init, subspace):
    fixed = {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_CHANGES}
    return json.loads(json.dumps({"config": fixed, "init": init, "subspace_size": subspace.size,
                                  "theta0_sha256": subspace.fingerprint}))


def load_run(out):
    """`(config record, subspace, z, iteration)` of the run in `out` (for evaluation)."""
    from meta.subspace import SubspaceSpec

    out = pathlib.Path(out)
    record = json.loads((out / RUN_CONFIG).read_text())
    spec = SubspaceSpec.from_dict(record["config"]["subspace"])
    config = types.SimpleNamespace(subspace=spec, seed=record["config"]["seed"])
    subspace, _ = build_subspace(config, record["init"], record["theta0_sha256"])
    if subspace.fingerprint != record["theta0_sha256"]:
        raise ValueError(
            f"{out}: its starting theta {record['init']!r} is not the one the run began from "
            "(fingerprint differs); the run's z only makes sense from that theta."
        )
    with np.load(out / RUN_STATE) as data:
        return record, subspace, np.asarray(data["z"], np.float32), int(data["iteration"])


# ------------------------------------------------------------------ training


def train(config, out, init="bundled", resume=False, address=None, progress=True):
    """Runs `config` into directory `out`; returns the final `MetaLearner`."""
    from meta.adam_reference import ensure_references, reference_key
    from meta.learner import ESTIMATORS, MetaLearner
    from meta.objective import MetaObjective
    from meta.plots import plot_meta_loss, plot_meta_validation
    from meta.validation import reference_specs, score, task_references
    from meta.workers import make_pool

    from keras_velo.training.compilation_cache import enable_compilation_cache

    enable_compilation_cache()
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recorded = json.loads((out / RUN_CONFIG).read_text()) if resume and (out / RUN_CONFIG).exists() else {}
    subspace, description = build_subspace(config, init, recorded.get("theta0_sha256"))
    record = _config_record(config, init, subspace)
    config_path = out / RUN_CONFIG
    if resume:
        if not (out / RUN_STATE).exists():
            raise FileNotFoundError(
                f"--resume: no {RUN_STATE} in {out}; start the run without --resume first."
            )
        saved = json.loads(config_path.read_text())
        saved["config"] = {k: v for k, v in saved["config"].items() if k not in RESUMABLE_CHANGES}
        # Runs from before objectives existed trained the area under the curve.
        saved["config"].setdefault("objective", MetaObjective().to_dict())
        if saved != record:
            differing = sorted({*(f"config.{k}" for k in {*saved["config"], *record["config"]}
                                  if saved["config"].get(k) != record["config"].get(k)),
                                *(k for k in {*saved, *record}
                                  if k != "config" and saved.get(k) != record.get(k))})
            raise ValueError(
                f"--resume: {out} holds a run of another configuration or starting theta "
                f"(differing: {', '.join(differing)}); use the same --config, --init and "
                "overrides, or a new --out."
            )
    elif (out / RUN_STATE).exists():
        raise FileExistsError(
            f"{out} already holds a meta-training run; pass --resume to continue it "
            "or choose a new --out."
        )
    config_path.write_text(json.dumps(record, indent=1))

    learner = MetaLearner.start(config, subspace.size)
    arms, gradients = ESTIMATORS[config.estimator]
    runner_arguments = (
        subspace, config.distribution, config.seed, config.sigma,
        config.unroll_truncation, config.max_loss_ratio, arms, gradients, config.objective,
    )
    validation_sets = [(s, s.tasks()) for s in config.validation_sets()]
    pool = make_pool(runner_arguments, config.workers, address)
    training_seconds = 0.0
    try:
        # Adam(1e-3) references: each held-out task's, and each member config's
        # (the longest horizon, seed 0) when the objective compares with Adam.
        specs = [spec for validation_set, tasks in validation_sets
                 if all(isinstance(f, str) for f in validation_set.families)  # not users' own
                 for spec in reference_specs(tasks)]
        member_keys = []
        if config.objective.needs_references:
            configs = config.distribution.pool_configs()
            specs += [(c, config.distribution.max_horizon, 0) for c in configs]
            member_keys = [reference_key(c, config.distribution.max_horizon, 0) for c in configs]
        started = time.perf_counter()
        references = ensure_references(pool, specs)
        _log(f"Adam(1e-3) references: {len(references)} ({time.perf_counter() - started:.0f} s)")
        if member_keys:
            pool.set_references({k: references[k] for k in member_keys})
        if resume:
            particles, training_seconds = load_run_state(out, learner)
            if particles is None:
                _log(f"{out / PARTICLES} is missing or older than the run state: members "
                     "start new episodes here (resumed exactly only with it)")
                learner.episode_starts, learner.accumulated = {}, {}
            else:
                pool.set_particles(particles)
            truncate_metrics(out, learner.iteration)
        else:
            truncate_metrics(out, 0)
        _log(f"meta-training {config.name}: {config.estimator} in {config.subspace.describe()} "
             f"(d = {subspace.size:,}), {config.members} members, "
             f"{config.workers or 'no'} Ray workers, from {description}, iterations "
             f"{learner.iteration}..{config.iterations}"
             + (f", at most {config.minutes:g} training minutes" if config.minutes else ""))

        def validate():
            started = time.perf_counter()
            entry = {"kind": "validation", "after_iteration": learner.iteration,
                     "training_minutes": training_seconds / 60}
            for index, (validation_set, tasks) in enumerate(validation_sets):
                result = score(pool.score(learner.z, tasks), task_references(tasks, references))
                # "meta_valid": the in-distribution set (what every run had); "ood_valid": the other.
                entry["meta_valid" if index == 0 else "ood_valid"] = result
                above = result.get("above_adam") or []
                _log(f"{validation_set.name} after {learner.iteration} iterations "
                     f"({training_seconds / 60:.1f} training minutes): final "
                     f"{result['final']:.4f} ± {result['final_se']:.4f}, mean "
                     f"{result['mean']:.4f} ± {result['mean_se']:.4f} ({len(tasks)} tasks; "
                     f"{len(above)} end > 10% above Adam(1e-3)"
                     + (f": {', '.join(above)}" if above else "") + ")")
            entry["wall_time_s"] = time.perf_counter() - started
            with open(out / METRICS, "a") as file:
                file.write(json.dumps(entry) + "\n")
            sets = ", ".join(s.name for s in config.validation_sets())
            plot_meta_validation(read_metrics(out), out / VALID_PLOT,
                                 title=f"meta-validation ({sets}): {config.name}")

        if not any(r.get("kind") == "validation" and r["after_iteration"] == learner.iteration
                   for r in read_metrics(out)):
            validate()
        bar = _progress(config.iterations, learner.iteration, progress)

        def out_of_time():
            return config.minutes is not None and training_seconds >= 60 * config.minutes

        with open(out / METRICS, "a") as metrics:
            while learner.iteration < config.iterations and not out_of_time():
                started = time.perf_counter()
                result = learner.step(pool)
                training_seconds += time.perf_counter() - started
                result["training_minutes"] = training_seconds / 60
                metrics.write(json.dumps(result) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(meta_loss=f"{result['meta_loss']:.4f}")
                done = learner.iteration == config.iterations or out_of_time()
                if done or learner.iteration % config.checkpoint_every == 0:
                    write_theta(out / "theta", subspace, learner.z, learner.iteration, config.name)
                    save_run_state(out, learner, pool.get_particles(), training_seconds)
                    plot_meta_loss(read_metrics(out), out / LOSS_PLOT,
                                   title=f"meta-training: {config.name}")
                if done or _validation_due(config, learner.iteration, training_seconds,
                                           result["wall_time_s"]):
                    metrics.flush()
                    validate()
        bar.close()
    finally:
        pool.close()
    _log(f"wrote {out / 'theta'} (iteration {learner.iteration}), {out / METRICS}, "
         f"{out / VALID_PLOT}")
    return learner


def _validation_due(config, iteration, training_seconds, last_seconds):
    """Whether the iteration that just ended crossed a validation point."""
    if config.validate_every_minutes is None:
        return iteration % config.validate_every == 0
    period = 60 * config.validate_every_minutes
    return training_seconds // period > (training_seconds - last_seconds) // period


def meta_train(out, family=None, config="cpu", init="bundled", resume=False, progress=True,
               **overrides):
    """Meta-trains from Python; returns the final `MetaLearner`.

    Args:
        out: the run directory.
        family: None (the preset's task families), or your own: a function
            `seed -> (compiled keras model, (x, y))` (see `meta.user_family`),
            a `UserFamily`, or "module:function". Members then train only
            it, and the meta-validation set is drawn from it.
        config: a preset name or a `MetaTrainingConfig`.
        init: the starting theta ("bundled", "velo", "random" or a path).
        **overrides: fields of `MetaTrainingConfig` (`minutes=10`,
            `workers=0`, `learning_rate=...`), or `validation_tasks=N`.

    Example:
        >>> meta_train("runs/mine", family=my_family, minutes=5, workers=0)
    """
    from meta.configs import get_preset

    if isinstance(config, str):
        config = get_preset(config)
    validation_tasks = overrides.pop("validation_tasks", None)
    if family is not None:
        config = for_user_family(config, family, validation_tasks)
    if overrides:
        config = dataclasses.replace(config, **overrides)
    return train(config, out, init=init, resume=resume, progress=progress)


def for_user_family(config, family, validation_tasks=None):
    """`config` with its members and meta-validation drawn from a user's task family."""
    from meta.user_family import UserFamily, from_spec
    from meta.validation import ValidationSet

    if isinstance(family, str):
        family = from_spec(family)
    elif not isinstance(family, UserFamily):
        family = UserFamily(family)
    distribution = dataclasses.replace(config.distribution, families=(family,),
                                       param_scale_range=(1.0, 1.0))
    validation = ValidationSet(
        f"{family.name}-valid", (family,), tasks_per_family=validation_tasks or 8,
        min_horizon=config.distribution.min_horizon,
        max_horizon=min(config.distribution.max_horizon, config.validation.max_horizon),
    )
    return dataclasses.replace(config, name=f"{config.name}-{family.name}",
                               distribution=distribution, validation=validation,
                               ood_validation=None)


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
    parser.add_argument("--minutes", type=float, help="stop after this many training minutes")
    parser.add_argument("--workers", type=int, help="Ray workers; 0 runs without Ray")
    parser.add_argument("--validate-every-minutes", type=float,
                        help="score the held-out sets every this many training minutes (may change on "
                        "--resume; scoring both sets costs minutes on a small machine)")
    parser.add_argument("--members", type=int, help="members per iteration")
    parser.add_argument("--seed", type=int, help="the run's seed")
    parser.add_argument("--estimator", help="pes | es | tbptt | pes+tbptt (overrides the preset)")
    parser.add_argument("--blocks", help="comma-separated blocks of theta to train, or 'all' "
                        "(meta.subspace.BLOCKS)")
    parser.add_argument("--dimension", type=int, help="train a random subspace of this dimension")
    parser.add_argument("--learning-rate", type=float, help="Adam's learning rate on z")
    parser.add_argument("--family", help="your own task family, 'module:function' "
                        "(meta.user_family); members and meta-validation draw from it")
    parser.add_argument("--validation-tasks", type=int, help="meta-validation tasks of --family")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--init", default="bundled", help="bundled | velo | random | PATH of a checkpoint")
    parser.add_argument("--address", help="join the Ray cluster at this address ('auto' or host:port)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def config_from_args(args):
    from meta.configs import get_preset
    from meta.subspace import SubspaceSpec

    config = get_preset(args.config)
    if args.family:
        config = for_user_family(config, args.family, args.validation_tasks)
    overrides = {k: getattr(args, k) for k in
                 ("iterations", "minutes", "workers", "members", "seed", "estimator",
                  "validate_every_minutes")
                 if getattr(args, k) is not None}
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    if args.blocks is not None or args.dimension is not None:
        blocks = tuple(args.blocks.split(",")) if args.blocks else config.subspace.blocks
        overrides["subspace"] = SubspaceSpec(blocks, args.dimension, config.subspace.seed)
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
