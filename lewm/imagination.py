"""Open-loop imagination and the planning cost's fidelity: where a world model's planning gap comes from.

Planning (lewm/planning.py) encodes ONE observed frame, rolls the predictor out `plan.horizon` action blocks
and scores the last imagined latent by its squared distance to the goal's latent. Two things must hold for
that to steer toward the goal, and this module measures both on held-out TEST episodes:

1. Imagination: starting from a test frame and executing the episode's TRUE action blocks open loop, how
   far do the imagined latents drift from the encodings of the frames that really followed? Read through
   linear probes (ridge, fit on TRAIN frames of the trained encoder, as in lewm/probing.py), in the
   world's physical units (px, rad, ...), per horizon step k (k·frameskip raw steps ahead), against two
   references measured on the same starts:
   - `encoded`: the probe reading the true frame's encoding (what a perfect predictor would give: the
     probe's own error);
   - `copy`: the probe reading the START frame's encoding (a model that predicts no motion).
   Imagination is useful where `imagined` is well below `copy`; `imagined` near `encoded` is perfect. The
   latent error itself is reported as ‖ẑ_k − z_k‖² over ‖z_0 − z_k‖² (1 = no better than copying).
2. Cost fidelity: does the latent distance ‖z − z_goal‖² order frames as the true distance to the goal
   does (the world's `state_cost`: the headline predicate's errors in units of its tolerances)? Spearman
   rank correlation over (a) the frames of each start's window toward its own future frame `horizon`
   blocks later, the pairs planning sees, and (b) random pairs of test frames, where goals are far.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from lewm.checkpoint import ModelMeta
from lewm.config import ImagineConfig, ProbeConfig
from lewm.data.card import wrapped_difference
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world
from lewm.models import WorldModel, check_context_frames
from lewm.plots import save_figure
from lewm.probing import EMBED_BATCH, LinearReadout, embed_frames, encode_frames, split_rows
from lewm.world import Quantity, StateCost

READINGS = ("imagined", "copy", "encoded")
LATENT = "latent"  # the quantity name of the latent error rows


def quantity_error(quantity: Quantity, predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per-row error (N,) in the quantity's units: the Euclidean norm of the difference for positions and
    other vectors; for angles, the norm over the quantity's angles of the difference (radians) between the
    angles recovered from the predicted and the true (sin kθ, cos kθ), wrapped to the period 2π/k of a shape
    with a k-fold symmetry."""
    if not quantity.is_angle:
        return np.linalg.norm(predicted - true, axis=1)
    n = len(quantity.columns)
    angle_pred = np.arctan2(predicted[:, :n], predicted[:, n:]) / quantity.folds
    angle_true = np.arctan2(true[:, :n], true[:, n:]) / quantity.folds
    return np.linalg.norm(wrapped_difference(angle_pred - angle_true, quantity), axis=1)


def window_starts(store: EpisodeStore, span: int, max_starts: int, lead: int = 0) -> np.ndarray:
    """Frame rows of TEST episodes from which `span` more raw steps stay inside the episode (the last row
    has no action) and `lead` raw steps precede them (earlier context frames), evenly subsampled to at most
    `max_starts`."""
    rows = []
    for episode in store.episode_ids("test"):
        episode_rows = store.episode_rows(episode)
        rows.append(np.arange(episode_rows.start + lead, episode_rows.stop - span))
    starts = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    if len(starts) == 0:
        raise ValueError(f"no test episode is longer than {lead + span} raw steps (the imagination window)")
    if len(starts) > max_starts:
        starts = starts[np.linspace(0, len(starts) - 1, max_starts).round().astype(np.int64)]
    return starts


def imagine(model: WorldModel, meta: ModelMeta, store: EpisodeStore, starts: np.ndarray, horizon: int,
            device: str | torch.device, context_frames: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Open-loop rollouts from each start frame under the episode's true action blocks (normalised as in
    training): the imagined latents `(N, horizon, *latent)` and the true encodings `(N, 1 + horizon,
    *latent)` of the start and the frames k·frameskip raw steps later. With `context_frames` C > 1 the
    rollout also sees the C − 1 observed frames every frameskip raw steps before the start and the blocks
    executed between them (planning observes one frame; this measures what more would give); starts need
    (C − 1)·frameskip earlier raw steps in their episode (`window_starts`' `lead`)."""
    check_context_frames(context_frames, meta.history)
    frameskip, lead = meta.frameskip, (context_frames - 1) * meta.frameskip
    offsets = frameskip * np.arange(1 - context_frames, horizon + 1)
    encoded = encode_frames(model, store.frames, device, (starts[:, None] + offsets).ravel())
    encoded = encoded.reshape(len(starts), len(offsets), *encoded.shape[1:])
    actions = meta.action_stats.normalize(store.actions).astype(np.float32)
    action_rows = starts[:, None] + np.arange(-lead, horizon * frameskip)
    blocks = torch.from_numpy(actions[action_rows].reshape(len(starts), context_frames - 1 + horizon, -1))
    imagined = []
    with torch.inference_mode():
        for start in range(0, len(starts), EMBED_BATCH):
            batch = slice(start, start + EMBED_BATCH)
            context = encoded[batch, :context_frames].to(device)
            context_actions = blocks[batch, : context_frames - 1].to(device) if context_frames > 1 else None
            rollout = model.rollout(context, blocks[batch, context_frames - 1:].to(device), context_actions)
            imagined.append(rollout.float().cpu())
    return torch.cat(imagined), encoded[:, context_frames - 1:]


def rank_correlation(latent_distance: np.ndarray, true_distance: np.ndarray) -> float:
    """Spearman's ρ between the two distances (NaN when either is constant)."""
    if np.ptp(latent_distance) == 0 or np.ptp(true_distance) == 0:
        return float("nan")
    return float(spearmanr(latent_distance, true_distance).statistic)


@dataclass
class ImaginationResult:
    """Errors per horizon step × quantity × reading, and the flat metrics derived from them."""

    table: pd.DataFrame
    metrics: dict[str, float]


def run_imagination(
    model: WorldModel,
    meta: ModelMeta,
    store: EpisodeStore,
    cfg: ImagineConfig,
    horizon: int,
    probe_cfg: ProbeConfig,
    device: str | torch.device = "cpu",
) -> ImaginationResult:
    """Measure open-loop imagination `horizon` blocks ahead (planning's horizon) and cost fidelity (module
    docstring) on `store`'s test episodes; the linear probes use the probe stage's frames and ridge α."""
    model = model.to(device).eval()
    readout = fit_readout(model, meta, store, probe_cfg, device)
    starts = window_starts(store, horizon * meta.frameskip, cfg.starts)
    imagined, encoded = imagine(model, meta, store, starts, horizon, device)
    table = imagination_table(readout, store, starts, imagined, encoded, meta.frameskip)
    metrics = _error_metrics(table)
    state_cost = get_world(meta.env).state_cost
    if state_cost is not None:
        flat_encoded = encoded.flatten(2).numpy()
        metrics.update(cost_fidelity(state_cost, store, starts, flat_encoded, meta.frameskip, cfg))
    return ImaginationResult(table, metrics)


def fit_readout(model: WorldModel, meta: ModelMeta, store: EpisodeStore, probe_cfg: ProbeConfig,
                device: str | torch.device) -> LinearReadout:
    """Linear probes of the world's probe targets on the model's TRAIN frame embeddings (the probe stage's
    frames and ridge α)."""
    train_rows = split_rows(store, "train", probe_cfg.max_frames)
    train_z = embed_frames(model, store.frames, device, train_rows)
    targets = get_world(meta.env).probe_targets
    return LinearReadout.fit(train_z, store.states[train_rows], targets, probe_cfg.ridge_alpha)


def imagination_table(readout: LinearReadout, store: EpisodeStore, starts: np.ndarray, imagined: torch.Tensor,
                      encoded: torch.Tensor, frameskip: int) -> pd.DataFrame:
    """Errors per horizon step × quantity × reading (`imagine`'s outputs read by `readout` against the true
    states; the latent error against the true encoding), one row each."""
    flat_imagined, flat_encoded = imagined.flatten(2).numpy(), encoded.flatten(2).numpy()
    rows = []
    for step in range(1, flat_imagined.shape[1] + 1):
        true_states = store.states[starts + step * frameskip]
        readings = {"imagined": flat_imagined[:, step - 1], "copy": flat_encoded[:, 0],
                    "encoded": flat_encoded[:, step]}
        for name, (quantity, _, _) in readout.probes.items():
            truth = quantity.values(true_states)
            for reading, z in readings.items():
                errors = quantity_error(quantity, readout.read(name, z), truth)
                rows.append(_row(step, frameskip, name, reading, errors))
        target = flat_encoded[:, step]
        for reading in ("imagined", "copy"):
            errors = ((readings[reading] - target) ** 2).sum(axis=1)
            rows.append(_row(step, frameskip, LATENT, reading, errors))
    return pd.DataFrame(rows)


def cost_fidelity(state_cost: StateCost, store: EpisodeStore, starts: np.ndarray, encoded: np.ndarray,
                  frameskip: int, cfg: ImagineConfig) -> dict[str, float]:
    """Spearman ρ between latent and true distance to a goal: over each window's frames toward its last
    frame (`window`), and over random pairs of the windows' frames (`random_pairs`). `encoded` holds the
    flattened encodings (N, 1 + horizon, D) of each window's frames, `frameskip` raw steps apart."""
    horizon = encoded.shape[1] - 1
    goal_z, goal_states = encoded[:, horizon], store.states[starts + horizon * frameskip]
    latent, true = [], []
    for step in range(horizon):
        latent.append(((encoded[:, step] - goal_z) ** 2).sum(axis=1))
        states = store.states[starts + step * frameskip]
        true.append(np.array([state_cost(s[None], g)[0] for s, g in zip(states, goal_states, strict=True)]))
    rng = np.random.default_rng(cfg.seed)
    frames_z = encoded.reshape(-1, encoded.shape[-1])
    frames_states = store.states[(starts[:, None] + frameskip * np.arange(horizon + 1)).ravel()]
    a, b = rng.integers(len(frames_z), size=(2, cfg.random_pairs))
    random_latent = ((frames_z[a] - frames_z[b]) ** 2).sum(axis=1)
    random_true = np.array([state_cost(frames_states[i][None], frames_states[j])[0]
                            for i, j in zip(a, b, strict=True)])
    return {
        "distance_spearman.window": rank_correlation(np.concatenate(latent), np.concatenate(true)),
        "distance_spearman.random_pairs": rank_correlation(random_latent, random_true),
    }


def _row(step: int, frameskip: int, quantity: str, reading: str, errors: np.ndarray) -> dict:
    return {"step": step, "raw_steps": step * frameskip, "quantity": quantity, "reading": reading,
            "mean_error": float(errors.mean()), "median_error": float(np.median(errors)), "n": len(errors)}


def _error_metrics(table: pd.DataFrame) -> dict[str, float]:
    """`<quantity>.<reading>.k<step>` mean errors, and `<quantity>.imagined_vs_copy.k<step>` ratios."""
    metrics = {f"{r.quantity}.{r.reading}.k{r.step}": r.mean_error for r in table.itertuples(index=False)}
    for (quantity, step), group in table.groupby(["quantity", "step"]):
        error = group.set_index("reading")["mean_error"]
        metrics[f"{quantity}.imagined_vs_copy.k{step}"] = float(error["imagined"] / error["copy"])
    return metrics


def plot_imagination(table: pd.DataFrame, metrics: dict[str, float], path: str | Path) -> None:
    """Per quantity, mean error against steps ahead for the three readings (one panel each)."""
    quantities = list(dict.fromkeys(table["quantity"]))
    fig, axes = plt.subplots(1, len(quantities), figsize=(3.6 * len(quantities), 3.4), squeeze=False)
    for ax, quantity in zip(axes[0], quantities, strict=True):
        rows = table[table["quantity"] == quantity]
        for reading in READINGS:
            curve = rows[rows["reading"] == reading]
            if len(curve):
                ax.plot(curve["raw_steps"], curve["mean_error"], marker="o", label=reading)
        ax.set_title(quantity if quantity != LATENT else "latent ‖ẑ − z‖²")
        ax.set_xlabel("raw steps ahead")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("mean error (world units)")
    axes[0, 0].legend(fontsize=8)
    fidelity = [f"{key.split('.')[1]} ρ={value:.2f}" for key, value in metrics.items()
                if key.startswith("distance_spearman.")]
    fig.suptitle("open-loop imagination on test episodes (true actions)"
                 + (f"; latent vs true goal distance: {', '.join(fidelity)}" if fidelity else ""), fontsize=9)
    save_figure(fig, path)
