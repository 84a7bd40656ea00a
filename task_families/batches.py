"""Seeded batch streams over numpy data: what `task.train_batches(seed)` and `task.eval_batches()` yield.

Two layouts cover every family:

* `ArrayData`: paired examples `(x [n, ...], y [n, ...])`, reshuffled every
  epoch by a generator seeded with the training seed; the last partial
  batch of an epoch is dropped so every step sees `batch_size` examples
  (and compiled steps never see a new shape).
* `TokenData`: one long `uint8` token stream; a training batch is
  `batch_size` windows at seeded random offsets, `x = window[:-1]`,
  `y = window[1:]` (next-byte prediction).

Evaluation is deterministic and finite: the first `max_eval_examples` of
the test split (whole batches of `eval_batch_size`).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_eval: np.ndarray
    y_eval: np.ndarray

    def train_batches(self, seed, batch_size):
        if len(self.x_train) < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self.x_train)} training examples.")
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(self.x_train))
            for start in range(0, len(order) - batch_size + 1, batch_size):
                index = np.sort(order[start : start + batch_size])
                yield self.x_train[index], self.y_train[index]

    def eval_batches(self, eval_batch_size, max_eval_examples):
        count = _whole_batches(len(self.x_eval), eval_batch_size, max_eval_examples)
        for start in range(0, count, eval_batch_size):
            stop = min(start + eval_batch_size, count)
            yield self.x_eval[start:stop], self.y_eval[start:stop]


@dataclasses.dataclass(frozen=True)
class TokenData:
    train_tokens: np.ndarray
    eval_tokens: np.ndarray
    sequence_length: int

    def train_batches(self, seed, batch_size):
        window = self.sequence_length + 1
        if len(self.train_tokens) < window:
            raise ValueError(f"sequence_length {self.sequence_length} exceeds the training text.")
        rng = np.random.default_rng(seed)
        offsets = np.arange(window)
        while True:
            starts = rng.integers(0, len(self.train_tokens) - window + 1, size=batch_size)
            windows = self.train_tokens[starts[:, None] + offsets].astype(np.int32)
            yield windows[:, :-1], windows[:, 1:]

    def eval_batches(self, eval_batch_size, max_eval_examples):
        window = self.sequence_length + 1
        available = len(self.eval_tokens) // window
        count = _whole_batches(available, eval_batch_size, max_eval_examples)
        windows = self.eval_tokens[: count * window].reshape(count, window).astype(np.int32)
        for start in range(0, count, eval_batch_size):
            chunk = windows[start : start + eval_batch_size]
            yield chunk[:, :-1], chunk[:, 1:]


def _whole_batches(available, batch_size, cap):
    """How many evaluation examples to use: whole batches when there is at least one."""
    count = min(available, cap)
    if count >= batch_size:
        count -= count % batch_size
    if count == 0:
        raise ValueError("The evaluation split is empty.")
    return count
