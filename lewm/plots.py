"""PNG plots (viewable offline, unlike `dvc plots show` HTML, which loads its chart library from the web)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from lewm.io import atomic_file


def save_figure(fig: plt.Figure, path: str | Path) -> None:
    """Save and close `fig` atomically as PNG."""
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)


def plot_training_curves(train: pd.DataFrame, val: pd.DataFrame, path: str | Path) -> None:
    """Prediction loss, SIGReg, collapse diagnostics and latent straightness over training."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    panels = [
        ("prediction loss", [("train/pred_loss", train), ("val/pred_loss", val)], True),
        ("SIGReg", [("train/sigreg_loss", train), ("val/sigreg_loss", val)], True),
        ("effective rank (val)", [("val/effective_rank", val)], False),
        ("latent straightness (val)", [("val/straightness", val)], False),
    ]
    for ax, (title, series, log_scale) in zip(axes, panels, strict=True):
        for column, frame in series:
            if column in frame and len(frame):
                ax.plot(frame["step"], frame[column], marker="." if frame is val else None, label=column)
        ax.set_title(title)
        ax.set_xlabel("step")
        if log_scale:
            ax.set_yscale("log")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
