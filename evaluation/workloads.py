"""What is trained: a workload is a suite task with its target metric, budgets and cadence.

AlgoPerf's workload = model + data + loss + evaluation metric + budget
(`max_runtime`, `step_hint`). Here the model, data and loss come from a
`task_families` suite task; the budgets are the suite's (`num_steps` is the
step hint and the step budget; `max_seconds` the wall-clock budget on the
reference machine, `--time-scale` in the CLI stretches it on slower ones).
Targets are not fixed in advance: scoring derives them from the runs
(protocol, "Targets").
"""

import dataclasses

from task_families.suites import get_suite

LOG_POINTS = 50  # training-loss log points per step budget (the loss curves)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One workload. `log_every` sets the training-loss curve's resolution, `eval_every` the evaluations."""

    name: str
    suite_task: object
    num_steps: int
    max_seconds: float
    eval_every: int
    log_every: int

    @property
    def config(self):
        return self.suite_task.config


def workloads_from_suite(suite_name, time_scale=1.0, names=None):
    """The suite's tasks as workloads; `names` selects some, `time_scale` multiplies `max_seconds`."""
    suite = get_suite(suite_name)
    tasks = suite.tasks if names is None else tuple(suite.task(n) for n in names)
    return [
        Workload(
            name=t.name,
            suite_task=t,
            num_steps=t.num_steps,
            max_seconds=t.max_seconds * time_scale,
            eval_every=t.eval_every,
            log_every=max(1, min(t.eval_every, t.num_steps // LOG_POINTS)),
        )
        for t in tasks
    ]
