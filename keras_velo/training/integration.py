"""`attach(model)`: VeLO fed in every `fit` and `train_on_batch` of one model, without callbacks.

The Keras way in is the callback, `model.fit(..., callbacks=[
keras_velo.VeLOCallback()])`. `attach` is for code that calls `fit` or
`train_on_batch` where you cannot add a callback (a training script you
do not own, a benchmark harness): it installs the loss-feeding train step
on the instance at once (`keras_velo.training.train_step`) and makes that
instance's `fit` add a `VeLOCallback` when none is given.

```python
model.compile(optimizer=keras_velo.VeLO(), loss="sparse_categorical_crossentropy")
keras_velo.attach(model)
model.fit(x, y, epochs=3)            # as if callbacks=[keras_velo.VeLOCallback()]
model.train_on_batch(x[:32], y[:32]) # the loss reaches VeLO too
```

It patches one instance, so it is not saved: after
`keras.saving.load_model`, call it again (or pass the callback). A model
that is recompiled with another optimizer trains as Keras would.
"""

import inspect
import types

from keras_velo.training.callbacks import VeLOCallback
from keras_velo.training.optimizer import find_velo
from keras_velo.training.train_step import feed_loss_to_velo


def attach(model):
    """Makes every `fit` and `train_on_batch` of `model` feed VeLO; returns `model`.

    `model` must be compiled with VeLO. Idempotent. Models that override
    `train_step` themselves must pass the loss instead:
    `self.optimizer.apply(grads, variables, loss=loss)`.
    """
    velo = find_velo(getattr(model, "optimizer", None))
    if velo is None:
        raise ValueError(
            "keras_velo.attach(model) needs a model compiled with a VeLO "
            "optimizer: call model.compile(optimizer=keras_velo.VeLO(...), "
            f"loss=...) first (found optimizer={getattr(model, 'optimizer', None)!r})."
        )
    feed_loss_to_velo(model)
    if not getattr(model, "_keras_velo_attached", False):
        model.fit = types.MethodType(_fit_with_velo_callback(type(model).fit), model)
        model._keras_velo_attached = True
    return model


def _fit_with_velo_callback(keras_fit):
    """`fit` with a `VeLOCallback` put first among the callbacks unless one is there."""
    signature = inspect.signature(keras_fit)

    def fit(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        callbacks = list(bound.arguments.get("callbacks") or [])
        if not any(isinstance(c, VeLOCallback) for c in callbacks):
            callbacks.insert(0, VeLOCallback())
        bound.arguments["callbacks"] = callbacks
        return keras_fit(*bound.args, **bound.kwargs)

    return fit
