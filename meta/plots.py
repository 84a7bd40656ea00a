"""The meta-loss curve of a run, as a PNG."""

import numpy as np


def plot_meta_loss(records, path, title="meta-training"):
    """Plots `meta_loss` (and its running mean) against the iteration; returns `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in records if np.isfinite(r.get("meta_loss", np.nan))]
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
