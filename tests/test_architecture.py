"""keras_velo's parts import one way, and nothing a user imported before is lost.

The parts (`keras_velo/README.md`, "How it is built"): `maths` (VeLO per
tensor, theta's structure) <- `packed` (the packed layout) <- `training`
(the Keras shell); `weights` (theta's files) builds on `maths` and serves
`training` and `meta/`. The import graph is read from the source with
`ast` (function-local imports included), so the test needs no backend.
"""

import ast
import importlib
import pathlib

import pytest

import keras_velo

pytestmark = pytest.mark.backends("jax")

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "keras_velo"

# Which parts each part may import (itself included).
ALLOWED = {
    "maths": {"maths"},
    "packed": {"maths", "packed"},
    "weights": {"maths", "weights"},
    "training": {"maths", "packed", "weights", "training"},
}

# The public names of keras_velo as of the layout change; none may be lost.
PUBLIC_NAMES = {
    "CheckpointError", "NonFiniteTrainingError", "PUBLISHED_WEIGHTS", "StepDiagnostics",
    "TensorState", "ThetaError", "VeLO", "VeLOCallback", "VeLOMonitor", "VeLOState",
    "WeightsUnavailableError", "attach", "callbacks", "enable_compilation_cache",
    "find_velo", "init_state", "init_theta", "plan_horizon", "prefab_update",
    "read_checkpoint", "resolve_weights", "tensor_states", "validate_theta",
    "velo_update", "write_checkpoint",
}


def imported_modules(path):
    """Absolute module names `path` imports (`from a.b import c` gives `a.b` and `a.b.c`)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def part_of(module):
    """The part a `keras_velo...` module name belongs to: a part's name, "" for the package, or None."""
    pieces = module.split(".")
    if pieces[0] != "keras_velo":
        return None
    if len(pieces) == 1:
        return ""
    return pieces[1] if pieces[1] in ALLOWED else None


def part_modules():
    for part in ALLOWED:
        for path in sorted((PACKAGE / part).glob("*.py")):
            yield part, path


def test_every_module_of_keras_velo_belongs_to_a_part():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert loose == ["__init__.py"], (
        f"keras_velo/ should hold only its namespace; move {loose} into a part"
    )
    for part in ALLOWED:
        docstring = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text()))
        assert docstring and "Imports:" in docstring, f"keras_velo/{part} must say what it may import"


@pytest.mark.parametrize("part, path", list(part_modules()), ids=lambda x: getattr(x, "name", x))
def test_imports_flow_one_way(part, path):
    for module in imported_modules(path):
        target = part_of(module)
        assert target != "", (
            f"{path.relative_to(ROOT)} imports the public namespace `keras_velo` "
            "(import from the part that defines the name)"
        )
        if target is not None:
            assert target in ALLOWED[part], (
                f"{path.relative_to(ROOT)} ({part}) imports {module} ({target}); "
                f"{part} may import only {sorted(ALLOWED[part])}"
            )


def test_the_checker_sees_a_wrong_way_import(tmp_path):
    wrong = tmp_path / "wrong.py"
    wrong.write_text("def f():\n    from keras_velo.training.optimizer import VeLO\n")
    assert "keras_velo.training.optimizer" in imported_modules(wrong)
    assert part_of("keras_velo.training.optimizer") not in ALLOWED["packed"]


def test_no_public_name_is_lost():
    assert set(keras_velo.__all__) == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(keras_velo, name) is not None
    callbacks = importlib.import_module("keras_velo.callbacks")  # public: no warning
    assert callbacks.VeLOCallback is keras_velo.VeLOCallback
