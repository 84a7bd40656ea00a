"""Byte-level text corpora that ship with Python, for the language-model families.

* `python_stdlib`: the CPython standard library's own `.py` sources (PSF
  licence), read from `sysconfig.get_paths()["stdlib"]`; test suites,
  `idlelib`, `site-packages` and `lib2to3` data are left out; files are
  concatenated in sorted path order and cut at `max_bytes`, so the corpus is
  the same on machines with the same Python minor version (it changes a
  little between versions: the study records `sys.version`).

Tokens are raw bytes (vocabulary 256); no tokenizer to train or ship.
"""

import functools
import pathlib
import sys
import sysconfig

import numpy as np

VOCAB_SIZE = 256
_EXCLUDED_PARTS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__"}


@functools.lru_cache(maxsize=2)
def python_stdlib_bytes(max_bytes=4_000_000):
    """The stdlib corpus as bytes (at most `max_bytes`)."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    chunks, total = [], 0
    for path in sorted(root.rglob("*.py")):
        if _EXCLUDED_PARTS & set(path.relative_to(root).parts):
            continue
        data = path.read_bytes()
        chunks.append(data)
        total += len(data)
        if total >= max_bytes:
            break
    if not chunks:
        raise FileNotFoundError(f"No Python sources found under {root}; is the stdlib installed?")
    return b"".join(chunks)[:max_bytes]


def split_tokens(corpus, split, eval_fraction=0.05):
    """`uint8 [n]` tokens of the train (first 95%) or test (last 5%) part of `corpus`."""
    tokens = np.frombuffer(corpus, np.uint8)
    cut = int(len(tokens) * (1.0 - eval_fraction))
    return tokens[:cut] if split == "train" else tokens[cut:]


def corpus_description():
    return f"CPython {sys.version.split()[0]} standard library sources"
