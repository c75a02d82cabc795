"""Per-epoch plot of a method's extra loss terms (nnU-Net's own progress.png stays as it is)."""
from typing import Dict, List

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_extra_progress(values: Dict[str, List[float]], png_path: str, title: str = "") -> None:
    """Draw one panel per logged quantity against the epoch and save it as PNG.

    Args:
        values: ``{name: [value per epoch]}``; lists may differ in length (the shortest is used).
        png_path: where to write the figure.
        title: figure title (the trainer's name).
    """
    n_epochs = min(len(v) for v in values.values()) if values else 0
    if n_epochs == 0:
        return
    fig, axes = plt.subplots(len(values), 1, figsize=(10, 2.6 * len(values)), sharex=True, squeeze=False)
    epochs = list(range(n_epochs))
    for ax, (name, series) in zip(axes[:, 0], values.items()):
        ax.plot(epochs, series[:n_epochs], marker="." if n_epochs < 30 else None)
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png_path, dpi=80)
    plt.close(fig)
