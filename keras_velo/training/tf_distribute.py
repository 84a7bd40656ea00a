"""VeLO under a `tf.distribute` strategy (`MirroredStrategy` and the like).

Keras' TensorFlow `fit` runs the train step once per replica, each on its
share of the batch, and hands each replica its loss divided by the number
of replicas. Adam then updates every variable on its own
(`extended.update`). VeLO updates all tensors at once (one packed state, a
maximum across tensors), so in a replica context it:

* keeps each replica's loss share in a per-thread slot (`PerThread`),
  never in VeLO's loss variable, which all replicas share;
* sums gradients and loss shares across the replicas: the global batch's
  mean gradient and mean loss, exactly what one device would see;
* runs its update once, in cross-replica context (`merge_call`), on the
  first replica's copy of the variables, and writes the new parameters and
  state to every replica's copy.

Outside a strategy (and on JAX and PyTorch) none of this runs.
"""

import threading

import keras


def replica_context():
    """The replica context of a non-default `tf.distribute` strategy, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    return tf.distribute.get_replica_context()


class PerThread:
    """A value per thread (replicas run the train step in threads), `default` until set."""

    def __init__(self, default=None):
        self._default = default
        self._local = threading.local()

    def get(self):
        return getattr(self._local, "value", self._default)

    def set(self, value):
        self._local.value = value

    def __deepcopy__(self, memo):  # a thread-local cannot be copied; its values are transient
        return PerThread(self._default)


def update_once_for_all_replicas(context, update, grads, loss_share):
    """Sums `grads` and `loss_share` over replicas, then runs `update(grads, loss)` once.

    `grads` may hold None (a variable without a gradient); `update` runs in
    cross-replica context and assigns to the (mirrored) variables, which
    writes every replica's copy.
    """
    import tensorflow as tf

    present = [g for g in grads if g is not None]
    summed = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
    loss = context.all_reduce(tf.distribute.ReduceOp.SUM, loss_share)

    def merged(strategy, summed, loss):
        def first(value):
            return strategy.experimental_local_results(value)[0]

        summed = iter([first(g) for g in summed])
        update([None if g is None else next(summed) for g in grads], first(loss))

    context.merge_call(merged, args=(summed, loss))
