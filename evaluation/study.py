"""A study: every (workload, submission, trial) run of a suite, resumable and shardable."""

import dataclasses
import json
import pathlib
import platform
import sys

from evaluation.runner import run_path, run_trial


@dataclasses.dataclass(frozen=True)
class RunSpec:
    workload: object
    submission: object
    trial: int

    @property
    def label(self):
        return f"{self.workload.name}/{self.submission.name}/trial{self.trial}"


def plan_runs(workloads, submissions, trials):
    """Every run of the study in a fixed order (workload, submission, trial); `submission.max_trials` caps trials."""
    return [
        RunSpec(w, s, t)
        for w in workloads
        for s in submissions
        for t in range(min(trials, s.max_trials or trials))
    ]


def parse_shard(text):
    """"i/n" -> (i, n) with 0 <= i < n."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like 'i/n' (e.g. 0/4), got {text!r}.") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need 0 <= i < n.")
    return index, count


def shard(runs, index, count):
    """Runs `index, index + count, ...`: interleaved, so shards get similar mixes of workloads."""
    return runs[index::count]


def write_study_header(out_dir, command, suite, submissions, trials):
    """Record what the study is; a resumed study must match its suite, trials and backend.

    Every distinct command that ran against the directory is kept, in order.
    """
    import keras

    path = pathlib.Path(out_dir) / "study.json"
    header = {
        "commands": [command], "suite": suite, "submissions": [s.name for s in submissions], "trials": trials,
        "backend": keras.backend.backend(), "keras": keras.__version__, "python": sys.version.split()[0],
        "machine": f"{platform.machine()}, {_cpu_count()} CPUs",
    }
    if path.exists():
        previous = json.loads(path.read_text())
        for key in ("suite", "trials", "backend"):
            if previous.get(key) != header[key]:
                raise ValueError(
                    f"{out_dir} holds a study with {key}={previous.get(key)!r}, not {header[key]!r}; "
                    "use another --out directory."
                )
        header["submissions"] = sorted(set(previous["submissions"]) | set(header["submissions"]))
        header["commands"] = previous.get("commands", []) + [c for c in header["commands"]
                                                             if c not in previous.get("commands", [])]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(header, indent=1))


def _cpu_count():
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def execute(runs, out_dir, progress=True, position=0):
    """Run every not-yet-finished run in `runs`; returns `{status: count}`."""
    from tqdm.auto import tqdm

    counts = {}
    pending = [r for r in runs if not run_path(out_dir, r.workload.name, r.submission.name, r.trial).exists()]
    counts["skipped"] = len(runs) - len(pending)
    bar = tqdm(total=len(pending), desc=f"shard {position}", position=position, disable=not progress,
               unit="run", dynamic_ncols=True)
    for spec in pending:
        bar.set_postfix_str(spec.label)
        status = run_trial(spec.workload, spec.submission, spec.trial, out_dir)
        counts[status] = counts.get(status, 0) + 1
        _release_memory()
        bar.update(1)
    bar.close()
    return counts


def _release_memory():
    """Drop the finished run's model, optimizer and compiled functions (without this a long study grows ~70 MB per run)."""
    import gc

    import keras

    keras.backend.clear_session()
    if keras.backend.backend() == "jax":
        import jax

        jax.clear_caches()
    gc.collect()
