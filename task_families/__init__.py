"""Seeded Keras-model task families for meta-training and evaluating learned optimizers.

    >>> from task_families import FAMILIES, build_task
    >>> config = FAMILIES["image_cnn"].sample(seed=3)      # frozen, JSON-serializable
    >>> task = build_task(config)                           # doctest: +SKIP
    >>> x, y = next(task.train_batches(seed=0))             # doctest: +SKIP
"""

from task_families.registry import FAMILIES, build_task, config_from_dict, sample_within_budget
from task_families.task import Task

__all__ = ["FAMILIES", "Task", "build_task", "config_from_dict", "sample_within_budget"]
