"""Your own task family: meta-train VeLO (or fine-tune a published theta) on your models.

A task family is a function of a seed that returns a compiled Keras model
and its training data:

    def my_family(seed):
        rng = np.random.default_rng(seed)
        width = int(rng.choice([32, 64, 128]))
        init = keras.initializers.GlorotUniform(seed=seed)
        model = keras.Sequential([keras.Input((20,)),
                                  keras.layers.Dense(width, activation="relu", kernel_initializer=init),
                                  keras.layers.Dense(1, kernel_initializer=init)])
        model.compile(loss="mse")
        x, y = make_data(rng)
        return model, (x, y)          # or (model, (x, y), batch_size)

The seed must decide the architecture, its initialisation (give it to the
initializers, as above: an unseeded initializer makes each process, Ray
worker or resumed run see another task) and the data, so that
`my_family(s)` is one task. Wrap it with `UserFamily(my_family)` and
use it wherever meta-training takes a family (`meta.train.meta_train`,
`python -m meta.train --family module:function`): members draw tasks from
it, and the meta-validation set draws held-out seeds from it.

Batches are `batch_size` examples (64 unless the function says), reshuffled
every epoch by the task's data seed, the last partial batch dropped.
"""

import dataclasses
import importlib

import numpy as np

DEFAULT_BATCH_SIZE = 64
_REGISTERED = {}  # name -> UserFamily, in this process


@dataclasses.dataclass(frozen=True)
class UserFamily:
    """A user's task family: `make_task(seed) -> (model, (x, y)[, batch_size])`.

    `name` defaults to the function's `module:qualname` (how
    `python -m meta.train --family` finds it again).
    """

    make_task: object
    name: str = None

    def __post_init__(self):
        if not callable(self.make_task):
            raise TypeError(f"make_task must be a function of a seed, got {self.make_task!r}.")
        if self.name is None:
            name = f"{self.make_task.__module__}:{self.make_task.__qualname__}"
            object.__setattr__(self, "name", name)

    def __str__(self):
        return self.name


def from_spec(spec):
    """`UserFamily` for "module:function" (the function is imported)."""
    module, _, function = str(spec).partition(":")
    if not module or not function:
        raise ValueError(f"a user family is given as 'module:function', got {spec!r}.")
    try:
        make_task = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"cannot import the task family {spec!r} ({error}); is the module on PYTHONPATH?"
        ) from None
    return UserFamily(make_task, str(spec))


def register(family):
    """Makes `family` buildable in this process (`build_user_task`); returns its name."""
    _REGISTERED[family.name] = family
    return family.name


def is_user_family(name):
    return name in _REGISTERED


class _Config:
    """A user task's config: `{"family": name, "seed": seed}`."""

    def __init__(self, data):
        self.data = dict(data)

    def to_dict(self):
        return dict(self.data)


class UserTask:
    """A built user task, with what `meta.functional_task.FunctionalTask` needs.

    Attributes: `config`, `model` (built), `loss(y_true, y_pred) -> scalar`.
    """

    def __init__(self, config):
        import keras

        family = _REGISTERED[config["family"]]
        self.config = _Config(config)
        made = family.make_task(int(config["seed"]))
        if not isinstance(made, tuple) or len(made) not in (2, 3):
            raise ValueError(
                f"task family {family.name} must return (model, (x, y)) or "
                f"(model, (x, y), batch_size), got {type(made).__name__}."
            )
        model, data = made[0], made[1]
        self.batch_size = int(made[2]) if len(made) == 3 else DEFAULT_BATCH_SIZE
        if not isinstance(model, keras.Model):
            raise ValueError(f"task family {family.name} returned {model!r}, not a keras.Model.")
        if getattr(model, "loss", None) is None:
            raise ValueError(
                f"task family {family.name}: compile the model with a loss "
                "(model.compile(loss=...)); meta-training minimises it."
            )
        x, y = (np.asarray(a) for a in data)
        if len(x) != len(y) or len(x) < self.batch_size:
            raise ValueError(
                f"task family {family.name}: need as many targets as inputs and at least "
                f"batch_size={self.batch_size} examples, got {len(x)} and {len(y)}."
            )
        if not model.built:
            model(x[: self.batch_size])
        self.model = model
        self._loss = keras.losses.get(model.loss)
        self._x, self._y = x, y

    def loss(self, y_true, y_pred):
        from keras import ops

        value = self._loss(y_true, y_pred)
        return ops.mean(value) if len(value.shape) else value

    def train_batches(self, seed):
        rng = np.random.default_rng(seed)
        size = self.batch_size
        while True:
            order = rng.permutation(len(self._x))
            for start in range(0, len(order) - size + 1, size):
                index = np.sort(order[start : start + size])
                yield self._x[index], self._y[index]


def build_user_task(config):
    return UserTask(config)
