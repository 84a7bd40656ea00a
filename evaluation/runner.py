"""The clock: trains one (workload, submission, trial) and appends its log, one JSON line per record.

A run's log (`runs/<workload>/<submission>/trial<k>.jsonl`) holds:

* a `start` record: workload, submission, trial, budgets, task config;
* `train` records every `log_every` steps: the mean training loss of the
  steps since the last one and its EMA (0.95, the VeLOdrome smoothing);
* `eval` records every `eval_every` steps, at step 0, and once when the
  wall-clock budget is first crossed: step, training seconds, the mean
  training loss since the last evaluation, validation loss (and accuracy);
* an `end` record: status ("finished" or "diverged": a non-finite
  training loss), steps, training seconds.

Training seconds count `next(batches)` and `train_on_batch` (compilation
included, AlgoPerf's rule) and exclude evaluation. The log is written to
`<name>.jsonl.partial` and renamed only after its `end` record, so an
interrupted run is never mistaken for a finished one: `run_trial` skips
runs whose final log exists and restarts runs that left only a partial one.

Trial `k` builds the task with `init_seed = config.init_seed + 7919 * k`
and draws batches with seed `k`.
"""

import json
import math
import os
import pathlib
import time

EMA_DECAY = 0.95
MAX_STEPS_FACTOR = 20  # a wall-clock run never exceeds 20 x the step budget


def run_path(out_dir, workload_name, submission_name, trial):
    return pathlib.Path(out_dir) / "runs" / workload_name / submission_name / f"trial{trial}.jsonl"


def trial_config(config, trial):
    return config.replace(init_seed=config.init_seed + 7919 * trial)


def run_trial(workload, submission, trial, out_dir, on_step=None, clock=time.perf_counter):
    """Train one run and write its log; returns "skipped" if it had finished before, else its status.

    `on_step(step, train_seconds)` is called after every training step
    (progress bars). `clock` measures training seconds (tests pass a fake
    one, so that the stop rules are checked whatever the machine's speed).
    """
    final = run_path(out_dir, workload.name, submission.name, trial)
    if final.exists():
        return "skipped"
    final.parent.mkdir(parents=True, exist_ok=True)
    partial = final.with_name(final.name + ".partial")
    with open(partial, "w") as log:  # "w": a half-written log from a killed run is discarded
        status = _train(workload, submission, trial, log, on_step, clock)
    os.replace(partial, final)
    return status


def _write(log, record):
    log.write(json.dumps(record) + "\n")
    log.flush()


def _train(workload, submission, trial, log, on_step, clock):
    from keras_velo import find_velo
    from task_families import build_task
    from task_families.cost import compile_for_training

    config = trial_config(workload.config, trial)
    _write(log, {
        "type": "start", "workload": workload.name, "submission": submission.name,
        "algorithm": submission.algorithm, "kind": submission.kind, "conditions": list(submission.conditions),
        "prompt_fraction": submission.prompt_fraction, "trial": trial, "num_steps": workload.num_steps,
        "max_seconds": workload.max_seconds, "step_multiplier": submission.step_multiplier,
        "config": config.to_dict(),
    })
    task = build_task(config)
    optimizer = submission.make_optimizer(workload)
    model = compile_for_training(task, optimizer)
    velo = find_velo(optimizer)
    time_budget = velo.time_budget if velo is not None else None
    batches = task.train_batches(seed=trial)

    def evaluate(step, seconds, train_loss):
        record = {"type": "eval", "step": step, "train_seconds": seconds, "train_loss": train_loss}
        record.update({f"validation_{k}": v for k, v in task.evaluate(model).items()})
        _write(log, record)

    evaluate(0, 0.0, None)
    step, seconds, ema = 0, 0.0, None
    log_losses, eval_losses = [], []
    crossed_time, status = False, "finished"
    step_budget = workload.num_steps * submission.step_multiplier
    while not _done(submission.stop, step, seconds, workload, step_budget):
        start = clock()
        if time_budget is not None:
            velo.set_training_seconds(seconds)
        x, y = next(batches)
        loss = float(model.train_on_batch(x, y, return_dict=True)["loss"])
        seconds += clock() - start
        step += 1
        if on_step is not None:
            on_step(step, seconds)
        if not math.isfinite(loss):
            status = "diverged"
            _write(log, {"type": "train", "step": step, "train_seconds": seconds, "train_loss": None,
                         "train_loss_ema": None})
            break
        ema = loss if ema is None else EMA_DECAY * ema + (1 - EMA_DECAY) * loss
        log_losses.append(loss)
        eval_losses.append(loss)
        if step % workload.log_every == 0:
            _write(log, {"type": "train", "step": step, "train_seconds": seconds,
                         "train_loss": sum(log_losses) / len(log_losses), "train_loss_ema": ema})
            log_losses = []
        first_time_over = seconds >= workload.max_seconds and not crossed_time
        crossed_time = crossed_time or first_time_over
        if step % workload.eval_every == 0 or first_time_over or _done(
            submission.stop, step, seconds, workload, step_budget
        ):
            evaluate(step, seconds, sum(eval_losses) / len(eval_losses))
            eval_losses = []
    _write(log, {"type": "end", "status": status, "steps": step, "train_seconds": seconds})
    return status


def _done(stop, step, seconds, workload, step_budget):
    steps_spent = step >= step_budget
    time_spent = seconds >= workload.max_seconds or step >= MAX_STEPS_FACTOR * workload.num_steps
    if stop == "steps":
        return steps_spent
    if stop == "time":
        return time_spent
    return steps_spent and time_spent
