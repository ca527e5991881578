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
    """Prediction loss, the model's other loss terms (SIGReg for LeWM, six for PLDM), collapse diagnostics
    and latent straightness over training."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    others = [column.removeprefix("train/") for column in train.columns if column.startswith("train/")
              and column.endswith("_loss") and column not in ("train/pred_loss", "train/total_loss")]
    panels = [
        ("prediction loss", [("train/pred_loss", train), ("val/pred_loss", val)], True),
        ("other loss terms", [(f"{split}/{term}", frame) for term in others
                              for split, frame in (("train", train), ("val", val))], True),
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
        if ax.has_data():  # a model with one loss term leaves "other loss terms" empty
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, path)
