"""The module paths keras-velo had before its subpackages, kept working with a warning.

Until version 0.2, keras_velo's modules sat side by side
(`keras_velo.update`, `keras_velo.checkpoint`, ...). They now live in
`maths`, `packed`, `weights` and `training`. `import keras_velo.update` or
`from keras_velo.checkpoint import read_checkpoint` still works: a finder
on `sys.meta_path` answers the old name with a module that forwards every
attribute to the new one, and warns once (`FutureWarning`) with the
new path. The public names are best imported from `keras_velo` itself.
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

MOVED_MODULES = {
    f"keras_velo.{name}": f"keras_velo.{package}.{name}"
    for package, names in {
        "maths": ("accumulators", "hypernetwork", "loss_features", "parameter_mlp",
                  "tensor_features", "theta"),
        "packed": ("packing", "prefab", "region_step", "segments", "state_view",
                   "structured_cond", "torch_compile", "update"),
        "weights": ("checkpoint", "pretrained", "theta_by_name"),
        "training": ("arguments", "compilation_cache", "health",
                     "integration", "jax_fit_state", "optimizer", "state_variables",
                     "train_step"),
    }.items()
    for name in names
}
"""Old module path -> where it lives now (`keras_velo.callbacks` stays public)."""


def moved_message(old, new):
    return (
        f"`{old}` has moved to `{new}` (keras-velo 0.2 laid keras_velo out as "
        f"subpackages); import from `{new}`, or the public names from "
        "`keras_velo` itself. The old path will be removed in a later version."
    )


class _Forwarding(types.ModuleType):
    """A module standing for a moved one: every attribute is read from, and written to, it."""

    def __init__(self, old, target):
        super().__init__(old, target.__doc__)
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name):
        return getattr(self._target, name)

    def __setattr__(self, name, value):
        if name.startswith("__") and name.endswith("__"):  # the import system's own
            object.__setattr__(self, name, value)
        else:
            setattr(self._target, name, value)

    def __dir__(self):
        return dir(self._target)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        new = MOVED_MODULES[spec.name]
        warnings.warn(moved_message(spec.name, new), FutureWarning, stacklevel=_caller_level())
        return _Forwarding(spec.name, importlib.import_module(new))

    def exec_module(self, module):
        pass


def _caller_level():
    """The `stacklevel` of the first frame outside the import machinery."""
    frame, level = sys._getframe(1), 1
    while frame is not None and (
        frame.f_code.co_filename.startswith("<frozen importlib")
        or frame.f_code.co_filename == __file__
    ):
        frame, level = frame.f_back, level + 1
    return level


def install():
    """Puts the finder on `sys.meta_path` (once)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())
