"""VeLO's learned weights (theta) as files: reading, writing and naming them.

The official checkpoint format (`checkpoint`: msgpack, the reference's
`params` files, read and written atomically), the `weights=` argument's
names (`pretrained`: Google's published checkpoint, downloaded once and
cached, and the weights keras-velo ships in `bundled/`), and saving the
bundled weights by name rather than by value (`theta_by_name`). theta's
structure itself is maths (`keras_velo.maths.theta`).

Imports: `keras_velo.maths`, numpy, msgpack and the standard library. Used
by the Keras optimizer (`keras_velo.training`) and meta-training (`meta/`)
(`tests/test_architecture.py` checks).
"""
