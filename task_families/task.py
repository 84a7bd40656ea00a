"""A built task: a Keras model, its loss, and seeded batches of real data."""

import math

import numpy as np

EVAL_BATCH_SIZE = 256
MAX_EVAL_EXAMPLES = 2048


class Task:
    """What `task_families.build_task(config)` returns.

    Attributes:
        config: the `TaskConfig` it was built from.
        model: a built `keras.Model` (weights initialised from `config.init_seed`).
        loss: a Keras loss (callable `loss(y_true, y_pred) -> scalar`), the
            quantity optimizers minimise.
        metrics: Keras metric names worth compiling (e.g. accuracy); may be empty.
        num_params: trainable parameter count.
        flops_per_step: analytic training-step cost (see `TaskConfig.flops_per_step`).

    Example:
        >>> task = build_task(FAMILIES["image_mlp"].smallest())
        >>> x, y = next(task.train_batches(seed=0))
        >>> float(task.loss(y, task.model(x)))  # doctest: +SKIP
    """

    def __init__(self, config, model, loss, data, metrics=(), eval_batch_size=EVAL_BATCH_SIZE):
        self.config = config
        self.model = model
        self.loss = loss
        self.metrics = list(metrics)
        self._data = data
        self._eval_batch_size = eval_batch_size

    @property
    def num_params(self):
        return int(sum(math.prod(w.shape) for w in self.model.trainable_weights))

    @property
    def flops_per_step(self):
        return self.config.flops_per_step()

    def train_batches(self, seed):
        """Infinite iterator of `(x, y)` numpy training batches; order set by `seed`."""
        return self._data.train_batches(seed, self.config.batch_size)

    def eval_batches(self, max_examples=MAX_EVAL_EXAMPLES):
        """Finite, deterministic iterator of `(x, y)` batches from the held-out split."""
        return self._data.eval_batches(self._eval_batch_size, max_examples)

    def evaluate(self, model=None, max_examples=MAX_EVAL_EXAMPLES):
        """Mean loss (and accuracy for classifiers) over `eval_batches()`, as floats.

        A compiled model is evaluated with `test_on_batch` (its compiled loss
        and metrics: fast, and the loss is what training minimises); an
        uncompiled one eagerly with `task.loss`.
        """
        from keras import ops

        model = model or self.model
        compiled = getattr(model, "compiled", False) and model.loss is not None
        totals, count = {}, 0
        for x, y in self.eval_batches(max_examples):
            if compiled:
                values = model.test_on_batch(x, y, return_dict=True)
            else:
                prediction = model(x, training=False)
                values = {"loss": ops.convert_to_numpy(self.loss(y, prediction))}
                if "accuracy" in self.metrics:
                    hits = np.argmax(ops.convert_to_numpy(prediction), -1) == y
                    values["accuracy"] = hits.mean()
            for name, value in values.items():
                totals[name] = totals.get(name, 0.0) + float(value) * len(x)
            count += len(x)
        return {name: total / count for name, total in totals.items()}

    def __repr__(self):
        return f"Task({self.config!r}, params={self.num_params})"
