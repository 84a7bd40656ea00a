"""Resolving the optimizer's `weights=` argument to a theta.

`weights` may be:

* `None`: the reference random init, `init_theta(seed)`.
* a name from `PUBLISHED_WEIGHTS` (`"velo"`): Google's published checkpoint,
  downloaded once over HTTPS and cached under `cache_dir()`.
* a name from `BUNDLED_WEIGHTS`: weights shipped inside the keras-velo
  package. `"bundled"`: the best theta measured (the model card,
  `meta/MODEL_CARD.md`); `"bootstrap"`: keras-velo's hand-set theta, a
  normalised-momentum rule with a warm-up/decay schedule, not meta-trained
  (built by `python -m meta.bootstrap_theta`; see `meta/bootstrap_theta.py`),
  which was `"bundled"` until a theta passed the ship gate.
* a path (str or os.PathLike) to a checkpoint directory holding `params`, or
  to the `params` file itself.
* a dict: an in-memory theta (spec §3), validated and copied to float32.

Example:

    >>> theta, description = resolve_weights(None, seed=0)
    >>> description
    'random init (seed=0)'
    >>> theta, description = resolve_weights("velo")  # downloads on first use
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import pathlib
import sys
import tempfile
import urllib.request
from collections.abc import Mapping

import numpy as np

from keras_velo.maths.theta import (
    CheckpointError,
    flatten_theta,
    init_theta,
    unflatten_theta,
    validate_theta,
)
from keras_velo.weights.checkpoint import (
    PARAMS_FILENAME,
    _create_temp_beside,
    read_checkpoint,
)

_CHUNK_BYTES = 1 << 20


class WeightsUnavailableError(CheckpointError):
    """Published weights are neither cached nor downloadable (e.g. no internet)."""


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """A checkpoint published by learned_optimization, fetched over HTTPS.

    Attributes:
        name: the `weights=` name, e.g. "velo".
        checkpoint_name: the folder name under `pretrained_lopts/`; also the
            cache sub-folder.
        url: HTTPS URL of the `params` file.
        num_bytes: exact size of the `params` file, checked on every load.
    """

    name: str
    checkpoint_name: str
    url: str
    num_bytes: int

    def cache_path(self) -> pathlib.Path:
        """Where the file is cached: `cache_dir()/<checkpoint_name>/params`."""
        return cache_dir() / self.checkpoint_name / PARAMS_FILENAME


@dataclasses.dataclass(frozen=True)
class BundledWeights:
    """A checkpoint shipped as package data inside the keras-velo package.

    Attributes:
        name: the `weights=` name, e.g. "bundled".
        resource: path of the checkpoint file (`params`, or gzip-compressed
            `params.gz`) relative to `package`.
        package: the importable package holding it.
        description: what the weights are, for logs and `get_config`.
    """

    name: str
    resource: str
    package: str = "keras_velo"
    description: str = ""

    def path(self):
        """The file as an importlib.resources Traversable."""
        import importlib.resources

        return importlib.resources.files(self.package).joinpath(self.resource)


_VELO_CHECKPOINT = "aug12_continue_on_bigger_2xbs_200kstep_bigproblem_v2_5620"

PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    "velo": PublishedWeights(
        name="velo",
        checkpoint_name=_VELO_CHECKPOINT,
        url=(
            "https://storage.googleapis.com/gresearch/learned_optimization/"
            f"pretrained_lopts/{_VELO_CHECKPOINT}/params"
        ),
        num_bytes=9_282_564,
    ),
}
"""Published checkpoints by `weights=` name. "velo" is the default pretrained VeLO."""

_BOOTSTRAP_DESCRIPTION = (
    "keras-velo bootstrap theta: hand-set normalised-momentum rule with a "
    "training-fraction schedule, not meta-trained"
)

BUNDLED_WEIGHTS: dict[str, BundledWeights] = {
    "bundled": BundledWeights(
        name="bundled",
        resource="weights/bootstrap/params.gz",
        description=_BOOTSTRAP_DESCRIPTION,
    ),
    "bootstrap": BundledWeights(
        name="bootstrap",
        resource="weights/bootstrap/params.gz",
        description=_BOOTSTRAP_DESCRIPTION,
    ),
}
"""Checkpoints shipped inside the package by `weights=` name; adding one is an
entry here plus the package-data file (pyproject.toml `package-data`).
"bundled" is what `meta.ship_gate` last let through; "bootstrap" is rebuilt
byte for byte by `python -m meta.bootstrap_theta --out keras_velo/weights/bootstrap`.
A model saved with any of them holds its fingerprint and loads with it
(`theta_by_name`) whatever the names point at later."""

BUNDLED_NAME = "bundled"


def _known_names() -> list[str]:
    return sorted(set(PUBLISHED_WEIGHTS) | set(BUNDLED_WEIGHTS) | {BUNDLED_NAME})


def _writable(directory: pathlib.Path) -> bool:
    """Whether `directory` exists and is writable, or could be created."""
    probe = directory
    while not probe.exists():
        if probe.parent == probe:
            return False
        probe = probe.parent
    return probe.is_dir() and os.access(probe, os.W_OK | os.X_OK)


def cache_dir() -> pathlib.Path:
    """Cache folder for downloaded weights: `<keras home>/keras_velo`.

    Keras home follows the Keras convention: `$KERAS_HOME` if set, else
    `~/.keras`; if that cannot be written, `/tmp/.keras`. Nothing is created.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    home_path = pathlib.Path(os.path.expanduser(home))
    if not _writable(home_path):
        tmp_root = "/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()
        home_path = pathlib.Path(tmp_root) / ".keras"
    return home_path / "keras_velo"


def _alternatives(entry: PublishedWeights) -> str:
    return (
        "Alternatives: download the file on a machine with internet access and "
        f"put it at {entry.cache_path()} (or pass its path as "
        'weights="/path/to/params"); use weights="bundled" (the weights that ship '
        "with keras-velo, see its model card); or use weights=None for randomly "
        "initialised weights."
    )


def _check_cached_size(entry: PublishedWeights, path: pathlib.Path) -> None:
    found = path.stat().st_size
    if found != entry.num_bytes:
        raise CheckpointError(
            f"Cached weights file {path} has {found} bytes, expected "
            f"{entry.num_bytes} bytes for '{entry.name}' ({entry.checkpoint_name}); "
            "it is incomplete or not the published file. Delete it so that it "
            "is downloaded again."
        )


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _download(entry: PublishedWeights, path: pathlib.Path, timeout: float) -> dict:
    """Stream `entry.url` into a temp file beside `path`, check it, rename it into place."""
    unavailable = (
        f"The VeLO weights '{entry.name}' could not be downloaded from {entry.url} "
        f"(they would be cached at {path})"
    )
    mb = entry.num_bytes / 1e6
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = _create_temp_beside(path)
    except OSError as error:
        raise WeightsUnavailableError(f"{unavailable}: {error}. {_alternatives(entry)}") from error
    received = 0
    try:
        with os.fdopen(fd, "wb") as tmp:
            print(f"keras_velo: downloading '{entry.name}' weights ({mb:.1f} MB) "
                  f"from {entry.url}", file=sys.stderr, flush=True)
            with urllib.request.urlopen(entry.url, timeout=timeout) as response:
                next_report = 10
                while received <= entry.num_bytes:
                    chunk = response.read(_CHUNK_BYTES)
                    if not chunk:
                        break
                    tmp.write(chunk)
                    received += len(chunk)
                    percent = 100 * received // entry.num_bytes
                    if percent >= next_report and received <= entry.num_bytes:
                        print(f"keras_velo:   {percent}% "
                              f"({received / 1e6:.1f} / {mb:.1f} MB)",
                              file=sys.stderr, flush=True)
                        next_report = (percent // 10 + 1) * 10
    except (OSError, http.client.HTTPException, ValueError) as error:
        # URLError, HTTPError, timeouts and connection resets are OSErrors;
        # IncompleteRead and other protocol errors are HTTPExceptions.
        _remove_quietly(tmp_name)
        raise WeightsUnavailableError(
            f"{unavailable}: {type(error).__name__}: {error}. {_alternatives(entry)}"
        ) from error
    except BaseException:
        _remove_quietly(tmp_name)
        raise
    if received != entry.num_bytes:
        _remove_quietly(tmp_name)
        raise WeightsUnavailableError(
            f"{unavailable}: the download gave {received} bytes"
            f"{' or more' if received > entry.num_bytes else ''}, expected "
            f"{entry.num_bytes} bytes; nothing was cached. Try again. "
            f"{_alternatives(entry)}"
        )
    try:
        theta = read_checkpoint(tmp_name)
    except CheckpointError as error:
        _remove_quietly(tmp_name)
        raise CheckpointError(
            f"The file downloaded from {entry.url} is not a valid VeLO checkpoint; "
            f"nothing was cached. {error}"
        ) from error
    os.replace(tmp_name, path)
    print(f"keras_velo: cached at {path}", file=sys.stderr, flush=True)
    return theta


def load_published_weights(name: str, *, download: bool = True, timeout: float = 60.0) -> dict:
    """Theta of a published checkpoint, from the cache or downloaded once.

    The cached file `PUBLISHED_WEIGHTS[name].cache_path()` must have exactly
    the published size, then it is read with `read_checkpoint`. If it is not
    cached and `download` is true, it is fetched with `urllib` (progress on
    stderr), checked, and atomically moved into the cache.

    Raises:
        ValueError: `name` is not in `PUBLISHED_WEIGHTS`.
        WeightsUnavailableError: not cached and the download failed or was
            not allowed; the message lists the alternatives.
        CheckpointError: the cached file has the wrong size or is invalid.

    Example:
        >>> theta = load_published_weights("velo")
        >>> theta["rnn_params"]["rnn/linear"]["w"].shape
        (1024, 2048)
    """
    if name not in PUBLISHED_WEIGHTS:
        raise ValueError(
            f"Unknown published weights {name!r}; known names: {sorted(PUBLISHED_WEIGHTS)}."
        )
    entry = PUBLISHED_WEIGHTS[name]
    path = entry.cache_path()
    if path.is_file():
        _check_cached_size(entry, path)
        return read_checkpoint(path)
    if not download:
        raise WeightsUnavailableError(
            f"The VeLO weights '{name}' are not cached at {path} and download=False "
            f"(they are published at {entry.url}). {_alternatives(entry)}"
        )
    return _download(entry, path, timeout)


def _load_bundled(name: str) -> dict:
    if name not in BUNDLED_WEIGHTS:
        raise CheckpointError(
            f"weights={name!r}: no bundled weights of that name are shipped with this "
            f"keras-velo (shipped: {sorted(BUNDLED_WEIGHTS)}). "
            f'Use weights="velo" (downloads the published VeLO checkpoint), a path '
            'to a checkpoint (weights="/path/to/params"), or weights=None for '
            "randomly initialised weights."
        )
    import importlib.resources

    entry = BUNDLED_WEIGHTS[name]
    try:
        with importlib.resources.as_file(entry.path()) as file:
            return read_checkpoint(file)
    except FileNotFoundError as error:  # e.g. an install that left out package data
        raise CheckpointError(
            f"weights={name!r}: the bundled file {entry.resource!r} is missing from "
            f"the installed package {entry.package!r} ({error}); reinstall keras-velo."
        ) from error


def resolve_weights(weights, *, seed: int = 0) -> tuple[dict, str]:
    """Turn the `weights=` argument into `(theta, description)`.

    Names are looked up before paths, so a local folder called "velo" must be
    passed as "./velo".

    Args:
        weights: None, a name in `PUBLISHED_WEIGHTS` or "bundled", a path to a
            checkpoint directory or `params` file, or an in-memory theta dict.
        seed: seed of the random init, used only when `weights` is None.

    Returns:
        theta (nested dict of float32 numpy arrays, spec §3) and a short
        description for logs and `get_config`, e.g. "random init (seed=0)".

    Raises:
        ValueError: an unknown name or a path that does not exist.
        CheckpointError: the checkpoint or theta is invalid or unavailable.
        TypeError: `weights` has an unsupported type.

    Example:
        >>> theta, description = resolve_weights("shared/golden/velo_random_theta")
        >>> description
        'checkpoint shared/golden/velo_random_theta'
    """
    if weights is None:
        return init_theta(seed), f"random init (seed={seed})"
    if isinstance(weights, Mapping):
        validate_theta(weights, source="in-memory theta")
        flat = flatten_theta(weights)
        copied = {path: np.array(leaf, dtype=np.float32, copy=True) for path, leaf in flat.items()}
        return unflatten_theta(copied), "in-memory theta"
    if isinstance(weights, str) and weights in PUBLISHED_WEIGHTS:
        entry = PUBLISHED_WEIGHTS[weights]
        return (load_published_weights(weights),
                f"published weights '{weights}' ({entry.checkpoint_name})")
    if isinstance(weights, str) and (weights in BUNDLED_WEIGHTS or weights == BUNDLED_NAME):
        theta = _load_bundled(weights)
        about = BUNDLED_WEIGHTS[weights].description
        return theta, f"bundled weights '{weights}'" + (f" ({about})" if about else "")
    if isinstance(weights, (str, os.PathLike)):
        if os.path.exists(weights):
            return read_checkpoint(weights), f"checkpoint {os.fspath(weights)}"
        raise ValueError(
            f"weights={os.fspath(weights)!r} is neither a known weights name nor an "
            f"existing path. Known names: {_known_names()}. A path must point to a "
            f"checkpoint directory holding '{PARAMS_FILENAME}' or to the "
            f"'{PARAMS_FILENAME}' file itself; use weights=None for random weights."
        )
    raise TypeError(
        "weights must be None, a weights name, a checkpoint path or a theta dict, "
        f"got {type(weights).__name__}: {weights!r:.80}"
    )


def resolve_saved_weights(weights, *, seed: int = 0):
    """`resolve_weights` for an optimizer being restored from a save; never downloads.

    A restored VeLO gets theta back with its saved variables, so loading it
    here only matters if those are missing. Returns `(theta, description,
    None)`, or `(None, description, error)` when it cannot be loaded
    offline; the caller raises `error` only if nothing restores theta
    before the first update.
    """
    try:
        if isinstance(weights, str) and weights in PUBLISHED_WEIGHTS:
            return load_published_weights(weights, download=False), weights, None
        theta, description = resolve_weights(weights, seed=seed)
        return theta, description, None
    except (CheckpointError, ValueError, OSError) as error:
        return None, f"not loaded ({weights!r}): {error}", error
