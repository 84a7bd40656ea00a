"""Plots of a scored study, as PNG files (matplotlib, Agg backend). Nothing here computes a score."""

import math

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def performance_profiles(path, panels, max_tau=4.0):
    """One panel per `(title, taus, {algorithm: rho})` in `panels`; rho against tau."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for ax, (title, taus, profiles) in zip(axes[0], panels):
        for algorithm, rho in sorted(profiles.items()):
            ax.step(taus, rho, where="post", label=algorithm)
        ax.set(title=title, xlabel="tau (ratio to the fastest)", ylabel="fraction of workloads",
               xlim=(1, max_tau), ylim=(-0.02, 1.02))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def loss_curves(path, curves, clock_label, metric_label):
    """A grid of panels, one per workload: `curves[workload][algorithm] = (x, median y)`."""
    plt = _pyplot()
    workloads = sorted(curves)
    columns = min(4, len(workloads))
    rows = math.ceil(len(workloads) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.2 * rows), squeeze=False)
    for ax, workload in zip(axes.flat, workloads):
        for algorithm, (x, y) in sorted(curves[workload].items()):
            ax.plot(x, y, label=algorithm, lw=1.2)
        ax.set(title=workload, xlabel=clock_label, ylabel=metric_label)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(workloads):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def speedup_distribution(path, speedups):
    """Sorted speed-ups over tuned Adam per algorithm (log scale), VeLOdrome's headline plot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for algorithm, by_workload in sorted(speedups.items()):
        values = np.sort(np.array(list(by_workload.values()), float))[::-1]
        shown = np.clip(values, 1e-2, 1e2)
        ax.plot(np.arange(1, len(values) + 1) / len(values), shown, marker="o", label=algorithm)
    for level in (1, 4, 16):
        ax.axhline(level, color="grey", lw=0.6, ls="--")
    ax.set(yscale="log", xlabel="fraction of workloads", ylabel="speed-up over tuned Adam (clipped to 1e-2..1e2)",
           title="VeLOdrome view: steps tuned Adam needs / steps used")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
