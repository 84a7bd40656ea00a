"""`keras.ops.cond` over nested structures whose leaves may be None."""

import keras
from keras import ops


def structured_cond(predicate, true_fn, false_fn):
    """`ops.cond(predicate, true_fn, false_fn)` for outputs holding None leaves.

    Both functions must return the same structure; None leaves (TensorFlow
    needs tensors) are left out of the conditional and come back as None.
    """
    template = []

    def flat(fn):
        def wrapped():
            out = keras.tree.map_structure(
                lambda x: None if x is None else ops.convert_to_tensor(x), fn()
            )
            if not template:
                template.append(out)
            return [x for x in keras.tree.flatten(out) if x is not None]

        return wrapped

    leaves = iter(ops.cond(predicate, flat(true_fn), flat(false_fn)))
    return keras.tree.map_structure(lambda x: None if x is None else next(leaves), template[0])
