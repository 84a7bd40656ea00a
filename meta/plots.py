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
    """The meta-validation scores (final and mean normalised loss, ± 1 standard error) of
    each held-out set (`meta_valid`, and `ood_valid` where scored) against meta-iterations
    and training minutes, the starting theta's scores as dashed reference lines;
    returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = validation_records(records)
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    curves = [("meta_valid", "final", "C0"), ("meta_valid", "mean", "C1"),
              ("ood_valid", "final", "C2"), ("ood_valid", "mean", "C3")]
    for axis, x_key, label in ((axes[0], "after_iteration", "meta-iteration"),
                               (axes[1], "training_minutes", "training minutes")):
        for set_key, key, colour in curves:
            scored = [r for r in records if set_key in r]
            if not scored:
                continue
            name = "in-distribution" if set_key == "meta_valid" else "out-of-distribution"
            x = np.array([r[x_key] for r in scored], np.float64)
            value = np.array([r[set_key][key] for r in scored])
            error = np.array([r[set_key][f"{key}_se"] for r in scored])
            axis.plot(x, value, "o-", color=colour, label=f"{name}: {key}")
            axis.fill_between(x, value - error, value + error, color=colour, alpha=0.15)
            axis.axhline(value[0], color=colour, linestyle="--", linewidth=1)
        axis.set_xlabel(label)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("training loss / initial loss (mean over tasks)")
    axes[0].legend(loc="best", fontsize=8)
    figure.suptitle(title + " (dashed: the start)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
