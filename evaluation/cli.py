"""Command line: `python -m evaluation run ...` trains a study, `python -m evaluation report DIR` scores it.

    python -m evaluation run --suite tiny-v1 --submissions baselines,velo --trials 2 --out studies/tiny
    python -m evaluation run ... --shard 0/4        # this machine does runs 0, 4, 8, ...
    python -m evaluation run ... --workers 2        # two local processes (shards 0/2 and 1/2)
    python -m evaluation report studies/tiny        # studies/tiny/report/report.md + PNGs

Runs are resumable: rerun the same command after an interruption and
finished runs are skipped; a run that was cut off restarts from scratch.
"""

import argparse
import os
import shlex
import subprocess
import sys

WORKER_ENV = "KERAS_VELO_STUDY_WORKER"


def _parser():
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="train every run of a study (resumable)")
    run.add_argument("--suite", default="tiny-v1", help="a suite from task_families.suites (default tiny-v1)")
    run.add_argument("--workloads", help="comma-separated task names of the suite (default: all)")
    run.add_argument("--submissions", default="baselines,velo",
                     help="comma-separated names or groups: baselines, velo, velo-sensitivity, adam-grid, all")
    run.add_argument("--trials", type=int, default=3)
    run.add_argument("--out", required=True, help="study directory (created; reused to resume)")
    run.add_argument("--shard", default="0/1", help="i/n: run only runs i, i+n, i+2n, ... of the study")
    run.add_argument("--workers", type=int, default=1, help="local processes, each taking one shard")
    run.add_argument("--time-scale", type=float, default=1.0,
                     help="multiply every wall-clock budget (slower or faster machine than the reference)")
    run.add_argument("--velo-weights", default="bundled", help="VeLO weights: bundled, velo or a checkpoint path")
    run.add_argument("--no-progress", action="store_true")
    report = commands.add_parser("report", help="score a study directory: markdown tables and PNG plots")
    report.add_argument("out", help="the study directory")
    return parser


def _run(args, argv):
    from evaluation.study import execute, parse_shard, plan_runs, shard, write_study_header
    from evaluation.submissions import select_submissions
    from evaluation.workloads import workloads_from_suite

    if args.trials < 1:
        raise SystemExit(f"--trials must be >= 1, got {args.trials}.")
    submissions = select_submissions(args.submissions, args.velo_weights)
    names = args.workloads.split(",") if args.workloads else None
    workloads = workloads_from_suite(args.suite, args.time_scale, names)
    index, count = parse_shard(args.shard)
    if not os.environ.get(WORKER_ENV):  # workers spawned by --workers: their parent recorded the command
        write_study_header(args.out, "python -m evaluation " + shlex.join(argv), args.suite, submissions,
                           args.trials)
    if args.workers > 1:
        return _spawn_workers(args, argv)
    runs = shard(plan_runs(workloads, submissions, args.trials), index, count)
    counts = execute(runs, args.out, progress=not args.no_progress, position=index if count > 1 else 0)
    print(f"shard {index}/{count}: {counts}", flush=True)
    return 0


def _spawn_workers(args, argv):
    base = [a for a in argv]
    for flag in ("--workers", "--shard"):
        while flag in base:
            i = base.index(flag)
            del base[i : i + 2]
        base = [a for a in base if not a.startswith(flag + "=")]
    processes = [
        subprocess.Popen([sys.executable, "-m", "evaluation", *base, "--shard", f"{i}/{args.workers}"],
                         env={**os.environ, WORKER_ENV: "1"})
        for i in range(args.workers)
    ]
    codes = [p.wait() for p in processes]
    return max(codes)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            import keras_velo

            # Repeated trials and shards compile the same programs: reuse them.
            keras_velo.enable_compilation_cache()
            return _run(args, argv)
        from evaluation.report import build_report

        path = build_report(args.out)
        print(f"report: {path}")
        return 0
    except (ValueError, FileNotFoundError, KeyError) as error:
        parser.exit(2, f"error: {error}\n")
