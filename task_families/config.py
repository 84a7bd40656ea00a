"""The frozen, JSON-serializable description of one task.

Every family defines a subclass of `TaskConfig` (a frozen dataclass) with its
own architecture fields. The fields shared by all families are:

* `dataset`: a name from `task_families.datasets.DATASETS` (or `tfds:<name>`),
* `batch_size`: examples per training batch,
* `init_seed`: seeds every initializer of the model, so the same config
  builds the same initial weights on a given backend.

`config.to_dict()` gives plain JSON types (tuples become lists) plus the
`family` name; `type(config).from_dict(d)` rebuilds an equal config and
`task_families.config_from_dict(d)` picks the class from `d["family"]`.
"""

import dataclasses
import hashlib
import json
from typing import ClassVar


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    family: ClassVar[str] = ""

    dataset: str
    batch_size: int
    init_seed: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, list):  # keep configs hashable and frozen
                object.__setattr__(self, field.name, tuple(value))
        _check_positive_int(self, "batch_size")
        if not isinstance(self.init_seed, int) or self.init_seed < 0:
            raise ValueError(f"{type(self).__name__}: init_seed must be an int >= 0, got {self.init_seed!r}.")
        from task_families import datasets

        datasets.check_dataset(self.dataset, self.modalities())
        self.validate()

    def modalities(self):
        """The kinds of data the family reads: a tuple of "image", "vector", "text", "table"."""
        raise NotImplementedError

    def validate(self):
        """Family-specific checks; raise ValueError quoting the offending value."""

    def forward_flops(self):
        """Multiply-adds x 2 of one forward pass on one example (analytic estimate)."""
        raise NotImplementedError

    def flops_per_step(self):
        """Training step cost: forward + backward (~3x forward) over the batch."""
        return 3 * self.forward_flops() * self.batch_size

    def to_dict(self):
        out = {"family": self.family}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        family = data.pop("family", cls.family)
        if family != cls.family:
            raise ValueError(f"{cls.__name__}.from_dict got family {family!r}, expected {cls.family!r}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields are {sorted(known)}.")
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def key(self):
        """A short stable hash of the config, equal for equal configs on any machine."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def _check_positive_int(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{type(config).__name__}: {name} must be a positive int, got {value!r}.")


def check_positive_ints(config, *names):
    """Raise ValueError naming the field if any field (int or tuple of ints) is not positive."""
    for name in names:
        value = getattr(config, name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(
                    f"{type(config).__name__}: {name} must hold positive ints, got {value!r}."
                )


def check_non_negative_int(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{type(config).__name__}: {name} must be an int >= 0, got {value!r}.")


def check_choice(config, name, choices):
    value = getattr(config, name)
    if value not in choices:
        raise ValueError(
            f"{type(config).__name__}: unknown {name} {value!r}; choose one of {sorted(choices)}."
        )


