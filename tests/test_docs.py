"""Every file a guide names exists: markdown links and backticked project paths.

The READMEs, `docs/` and the study folders' notes point to code, results
and scripts; after a file moves, a guide naming its old place fails here.
"""

import pathlib
import re

import pytest

pytestmark = pytest.mark.backends("jax")  # reads text only: once is enough

ROOT = pathlib.Path(__file__).resolve().parents[1]
FOLDERS = ("keras_velo", "meta", "evaluation", "examples", "tests", "benchmarks",
           "task_families", "docs")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PROJECT_PATH = re.compile(r"`((?:" + "|".join(FOLDERS) + r")/[\w./-]*)`")


def guides():
    """The project's markdown files (the top level and its folders; not a virtualenv)."""
    found = set(ROOT.glob("*.md"))
    for folder in FOLDERS:
        found.update((ROOT / folder).rglob("*.md"))
    return sorted(found)


def named_paths(guide):
    """`(as written, candidate locations)` of every relative link and project path in `guide`."""
    text = guide.read_text()
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:|#", target):
            continue
        yield target, [guide.parent / target.split("#")[0]]
    for target in PROJECT_PATH.findall(text):
        if any(c in target for c in "{*<"):  # a pattern, not a file
            continue
        target = target.rstrip("/.")
        yield target, [ROOT / target, guide.parent / target]


def test_every_path_a_guide_names_exists():
    missing = [
        f"{guide.relative_to(ROOT)}: {written}"
        for guide in guides()
        for written, candidates in named_paths(guide)
        if not any(c.exists() for c in candidates)
    ]
    assert not missing, "guides name files that do not exist:\n" + "\n".join(missing)


def test_the_checker_sees_a_missing_file(tmp_path):
    guide = tmp_path / "README.md"
    guide.write_text("See [the notes](notes.md) and `meta/no_such_module.py`.\n")
    assert [w for w, c in named_paths(guide) if not any(p.exists() for p in c)] == [
        "notes.md", "meta/no_such_module.py"]
