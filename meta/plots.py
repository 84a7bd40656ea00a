"""A run's curves as PNGs: the training meta-loss, and the meta-validation score."""

import numpy as np


def plot_meta_loss(records, path, title="meta-training"):
    """Plots `meta_loss` (and its running mean) against the iteration; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records
               if r.get("kind") != "validation" and np.isfinite(r.get("meta_loss", np.nan))]
    figure, axis = plt.subplots(figsize=(7, 4))
    if records:
        iterations = np.array([r["iteration"] for r in records])
        losses = np.array([r["meta_loss"] for r in records])
        axis.plot(iterations, losses, ".", alpha=0.35, label="per iteration")
        window = max(1, min(25, len(losses) // 5))
        if window > 1:
            smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
            axis.plot(iterations[window - 1:], smooth, "-", label=f"running mean ({window})")
    axis.set_xlabel("meta-iteration")
    axis.set_ylabel("meta-loss (training loss / initial loss)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def validation_records(records):
    """The meta-validation records of a run's metrics, in order."""
    return [r for r in records if r.get("kind") == "validation"]


def plot_meta_validation(records, path, title="meta-validation"):
    """The meta-validation score (final and mean normalised loss, ± 1 standard error)
    against meta-iterations and training minutes, the starting theta's score as a
    dashed reference line; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = validation_records(records)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for axis, x_key, label in ((axes[0], "after_iteration", "meta-iteration"),
                               (axes[1], "training_minutes", "training minutes")):
        if records:
            x = np.array([r[x_key] for r in records], np.float64)
            for key, colour in (("final", "C0"), ("mean", "C1")):
                value = np.array([r["meta_valid"][key] for r in records])
                error = np.array([r["meta_valid"][f"{key}_se"] for r in records])
                axis.plot(x, value, "o-", color=colour, label=f"{key} normalised loss")
                axis.fill_between(x, value - error, value + error, color=colour, alpha=0.2)
                axis.axhline(value[0], color=colour, linestyle="--", linewidth=1,
                             label=f"start ({key})")
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("training loss / initial loss (mean over tasks)")
    axes[0].legend(loc="best", fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
