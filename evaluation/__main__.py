import os
import sys

# Like every entry point of this repository: JAX unless KERAS_BACKEND says otherwise.
os.environ.setdefault("KERAS_BACKEND", "jax")

from evaluation.cli import main  # noqa: E402

sys.exit(main())
