"""What a task costs: an analytic step-time estimate, and a measurement to check it against.

`estimate_step_seconds(config)` turns the config's analytic FLOPs per
training step into seconds on the reference machine (2 CPU cores, JAX,
Adam): a fixed per-step overhead (dispatch, batch transfer) plus FLOPs at
an effective throughput. The two constants were fitted to
`benchmarks/task_step_time.py` on the canonical suite (README, "Task
families"); the estimate is for ranking and budgeting samples, not a
promise to the millisecond.
"""

import time

import numpy as np

STEP_OVERHEAD_SECONDS = 0.8e-3
EFFECTIVE_FLOPS_PER_SECOND = 1.0e10


def estimate_step_seconds(config):
    """Estimated seconds per training step of `config` on the reference CPU."""
    return STEP_OVERHEAD_SECONDS + config.flops_per_step() / EFFECTIVE_FLOPS_PER_SECOND


def compile_for_training(task, optimizer, jit_compile="auto"):
    """`task.model.compile` with the task's loss and metrics; VeLO is attached so it receives the loss."""
    from keras_velo import attach, find_velo

    task.model.compile(optimizer=optimizer, loss=task.loss, metrics=task.metrics, jit_compile=jit_compile)
    if find_velo(optimizer) is not None:
        attach(task.model)
    return task.model


def measure_step_seconds(task, optimizer, steps=20, warmup=3, seed=0, jit_compile="auto"):
    """Median wall seconds of `model.train_on_batch` over `steps` steps, after `warmup` (compile) steps.

    Returns `(median_seconds, first_step_seconds)`; the first includes tracing and compilation.
    """
    model = compile_for_training(task, optimizer, jit_compile)
    batches = task.train_batches(seed)
    start = time.perf_counter()
    model.train_on_batch(*next(batches))
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        model.train_on_batch(*next(batches))
    times = []
    for _ in range(steps):
        x, y = next(batches)
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), first
