"""Violation of expectation (reference §10): is the world model surprised by physically impossible events
more than by merely visual ones?

Per episode, one trajectory per condition, all sharing the initial state and the action sequence:
- `unperturbed`: the data-collection policy acts (seeded by `voe.seed` and the episode index); its
  executed actions are recorded;
- one per perturbation of the world (`World.perturbations`, lewm/world.py): the recorded actions are
  replayed and the perturbation is injected at frame `perturb_step`. Push-T has `color` (the block's colour
  becomes `voe.color` from that frame on, set just before the step that renders it; the physics is
  untouched) and `teleport` (right after the step that leads to that frame the whole scene, block AND
  agent, is set to a random valid state at rest, drawn by `env.reset` from a seed of its own: `voe.seed`,
  episode index, so every model sees the same teleport).
Frames before `perturb_step` are therefore identical across conditions. After it the recorded actions
keep being replayed unchanged (the actions are relative moves, valid anywhere), so only the perturbation
differs between conditions, never the agent's commands.

Surprise works at the model's temporal resolution: frames `fs = frameskip` raw steps apart and action
blocks of `fs` raw actions, z-scored with the training statistics, exactly as in training clips. For every
raw step t with a full history, the context is frames t − fs·(h−1), …, t (h = history), each with the
block of actions executed after it, and the last predictor output is the prediction of frame t + fs:

    surprise(t + fs) = ‖predict(z_context, blocks)[-1] − encode(o_{t+fs})‖²   (sum over embedding dims)

Windows slide with stride 1 over raw steps, so the curve has one value per raw step. It is indexed by the
PREDICTED frame k = t + fs, the observation whose surprise is measured: k = perturb_step is the first
perturbed observation the model sees, so the spike sits at the perturbation marker. (Indexed by the
context's last frame, the same spike would appear fs steps before the perturbation.)

Statistics per perturbed condition, from the per-episode peak (max surprise over predicted frames
perturb_step … perturb_step + window): the ratio of mean peaks to the unperturbed mean peak, the median
of per-episode peak ratios, and a paired one-sided t-test (perturbed > unperturbed).

Given a pixel decoder of the model's latents (lewm/decoder.py), the plot also shows the first episode at the
perturbation: each condition's observed frame, its decoded latent and the decoded prediction of it
(`decoded_at_perturbation`): what the model expected there, against what happened. Display only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import stats

from lewm.checkpoint import ModelMeta
from lewm.config import VoEConfig
from lewm.data.clips import ActionStats
from lewm.data.generate import EpisodeJob, record_episode
from lewm.envs import get_world
from lewm.models import WorldModel
from lewm.plots import save_figure
from lewm.world import Perturbation, PerturbationContext, World

UNPERTURBED = "unperturbed"
PANEL_ROWS = {"observed": "observed", "decoded": "decoded\nobservation", "predicted": "decoded\nprediction"}

ImageDecoder = Callable[[torch.Tensor], np.ndarray]
"""Latents `(N, *latent)` → uint8 frames `(N, H, W, 3)` (`lewm.decoder.PixelDecoder.decode_frames`)."""


@dataclass
class Trajectory:
    """One rollout: frames (T+1, H, W, 3) uint8, states (T+1, S) and the T executed actions (T, A)."""

    episode: int
    condition: str
    frames: np.ndarray
    states: np.ndarray
    actions: np.ndarray


def check_config(cfg: VoEConfig, frameskip: int, history: int) -> None:
    """Raise one ValueError naming every `voe.*` value that leaves the surprise window uncovered."""
    first_predicted = frameskip * history  # the first frame with a full context before it
    problems = []
    if cfg.episodes < 2:
        problems.append(f"voe.episodes must be ≥ 2 for a paired t-test, got {cfg.episodes}")
    if cfg.window < 1:
        problems.append(f"voe.window must be ≥ 1, got {cfg.window}")
    if cfg.perturb_step - cfg.window < first_predicted:
        problems.append(
            f"voe.perturb_step − voe.window must be ≥ frameskip·history = {first_predicted} (the first frame "
            f"with a full context), got {cfg.perturb_step} − {cfg.window}"
        )
    if cfg.perturb_step + cfg.window > cfg.steps:
        problems.append(f"voe.perturb_step + voe.window must be ≤ voe.steps = {cfg.steps}")
    if problems:
        raise ValueError("; ".join(problems))


def replay(
    env: Any, reset_seed: int, actions: np.ndarray, perturb_step: int, perturbation: Perturbation | None,
    value: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frames and states of `actions` replayed from `reset(seed=reset_seed)`, with `perturbation` (None:
    unperturbed) injected at frame `perturb_step`; `value` is what its `prepare` returned."""
    obs, _ = env.reset(seed=reset_seed)
    frames, states = [obs["pixels"]], [obs["state"]]
    for step, action in enumerate(actions, start=1):
        at_perturbation = perturbation is not None and step == perturb_step
        if at_perturbation and perturbation.before_step is not None:
            perturbation.before_step(env, value)
        obs = env.step(action)[0]
        if at_perturbation and perturbation.after_step is not None:
            obs = perturbation.after_step(env, value)
        frames.append(obs["pixels"])
        states.append(obs["state"])
    return np.stack(frames), np.stack(states)


def episode_trajectories(
    world: World, env_kwargs: dict[str, Any], cfg: VoEConfig, episode: int
) -> dict[str, Trajectory]:
    """The unperturbed trajectory of one episode and one per perturbation of the world (see the module
    docstring), each in a fresh environment."""
    kwargs = {**env_kwargs, "max_steps": cfg.steps}
    job = EpisodeJob(world.name, episode, cfg.seed, cfg.policy, cfg.action_noise, cfg.steps)
    env = world.make_env(**kwargs)
    try:
        record = record_episode(env, job)
    finally:
        env.close()
    trajectories = {
        UNPERTURBED: Trajectory(episode, UNPERTURBED, record.frames, record.states, record.actions)
    }
    context = PerturbationContext(cfg, episode, lambda: world.make_env(**kwargs))
    for name, perturbation in world.perturbations.items():
        value = perturbation.prepare(context)
        env = world.make_env(**kwargs)
        try:
            frames, states = replay(env, record.seed, record.actions, cfg.perturb_step, perturbation, value)
        finally:
            env.close()
        trajectories[name] = Trajectory(episode, name, frames, states, record.actions)
    return trajectories


def predicted_latents(
    model: WorldModel,
    frames: np.ndarray,
    actions: np.ndarray,
    action_stats: ActionStats,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """(predicted frame indices k, the model's prediction of each frame k from its context, each frame k's
    own latent) of one trajectory, for every raw step with a full history context (see the module
    docstring for the windows and their alignment); latents `(W, *latent)` on `device`."""
    fs, history = model.frameskip, model.history
    context_ends = np.arange(fs * (history - 1), len(actions) - fs + 1)
    if len(context_ends) == 0:
        raise ValueError(f"{len(actions)} actions are too few for a context of {history} frames {fs} apart")
    context = context_ends[:, None] - fs * np.arange(history - 1, -1, -1)  # (W, h) frame indices
    normalised = action_stats.normalize(np.asarray(actions, dtype=np.float64)).astype(np.float32)
    blocks = normalised[context[..., None] + np.arange(fs)]  # (W, h, fs, A), step-major as in clips
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(device)
    model.eval()
    with torch.inference_mode():
        z = model.encode(pixels).float()
        window_context = torch.as_tensor(context, device=device)
        action_blocks = torch.from_numpy(blocks.reshape(*context.shape, -1)).to(device)
        predicted = model.predict(z[window_context], action_blocks)[:, -1]
        target = z[torch.as_tensor(context_ends + fs, device=device)]
    return context_ends + fs, predicted, target


def surprise_curve(
    model: WorldModel,
    frames: np.ndarray,
    actions: np.ndarray,
    action_stats: ActionStats,
    device: str | torch.device = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted frame indices k, surprise at k) of one trajectory, for every raw step with a full
    history context (see the module docstring for the windows and their alignment)."""
    steps, predicted, target = predicted_latents(model, frames, actions, action_stats, device)
    with torch.inference_mode():
        surprise = (predicted - target).pow(2).flatten(1).sum(dim=1)
    return steps, surprise.cpu().numpy().astype(np.float64)


def decoded_at_perturbation(
    model: WorldModel,
    action_stats: ActionStats,
    trajectories: list[Trajectory],
    perturb_step: int,
    decoder: ImageDecoder,
    device: str | torch.device = "cpu",
) -> dict[str, dict[str, np.ndarray]]:
    """What the model expected at the perturbation, decoded, beside what happened, for the first episode's
    trajectories: per condition, `observed` (frame `perturb_step`), `decoded` (that frame's own latent,
    decoded: what the decoder can show at all) and `predicted` (the prediction of that frame from the
    frames before it, decoded; those frames, hence the prediction, are the same in every condition)."""
    episode = trajectories[0].episode
    panels: dict[str, dict[str, np.ndarray]] = {}
    for trajectory in (t for t in trajectories if t.episode == episode):
        steps, predicted, target = predicted_latents(model, trajectory.frames, trajectory.actions,
                                                     action_stats, device)
        at = int(np.flatnonzero(steps == perturb_step)[0])
        decoded, prediction = decoder(torch.stack([target[at], predicted[at]]))
        panels[trajectory.condition] = {"observed": trajectory.frames[perturb_step], "decoded": decoded,
                                        "predicted": prediction}
    return panels


def surprise_table(
    model: WorldModel,
    action_stats: ActionStats,
    trajectories: list[Trajectory],
    perturb_step: int,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Per episode × condition × predicted frame: `episode`, `condition`, `step` (the predicted frame),
    `relative_step` (step − perturb_step) and `surprise`."""
    parts = []
    for trajectory in trajectories:
        steps, surprise = surprise_curve(model, trajectory.frames, trajectory.actions, action_stats, device)
        parts.append(
            pd.DataFrame(
                {
                    "episode": trajectory.episode,
                    "condition": trajectory.condition,
                    "step": steps,
                    "relative_step": steps - perturb_step,
                    "surprise": surprise,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def peak_surprise(table: pd.DataFrame, window: int) -> pd.DataFrame:
    """Max surprise per episode (rows) and condition (columns) over relative steps 0 … window."""
    after = table[(table["relative_step"] >= 0) & (table["relative_step"] <= window)]
    return after.pivot_table(index="episode", columns="condition", values="surprise", aggfunc="max")


def compare_peaks(perturbed: np.ndarray, unperturbed: np.ndarray) -> dict[str, float]:
    """Peak ratios (ratio of means, median of per-episode ratios) and a paired one-sided t-test that the
    perturbed peaks exceed the unperturbed ones."""
    perturbed, unperturbed = (
        np.asarray(perturbed, dtype=np.float64),
        np.asarray(unperturbed, dtype=np.float64),
    )
    test = stats.ttest_rel(perturbed, unperturbed, alternative="greater")
    return {
        "peak_mean": float(perturbed.mean()),
        "peak_ratio": float(perturbed.mean() / unperturbed.mean()),
        "peak_ratio_median": float(np.median(perturbed / unperturbed)),
        "t_stat": float(test.statistic),
        "p_value": float(test.pvalue),
    }


def perturbed_conditions(table: pd.DataFrame) -> list[str]:
    """The perturbations in `table`, in the order the world lists them."""
    return [condition for condition in dict.fromkeys(table["condition"]) if condition != UNPERTURBED]


def voe_metrics(table: pd.DataFrame, window: int) -> dict[str, float]:
    """Flat metrics: `unperturbed.peak_mean` and, per perturbed condition, `compare_peaks` keys."""
    peaks = peak_surprise(table, window)
    metrics = {"unperturbed.peak_mean": float(peaks[UNPERTURBED].mean())}
    for condition in perturbed_conditions(table):
        comparison = compare_peaks(peaks[condition].to_numpy(), peaks[UNPERTURBED].to_numpy())
        metrics.update({f"{condition}.{key}": value for key, value in comparison.items()})
    return metrics


def plot_surprise(table: pd.DataFrame, window: int, metrics: dict[str, float], path: str | Path,
                  decoded: dict[str, dict[str, np.ndarray]] | None = None) -> None:
    """Mean ± s.e.m. surprise over episodes around the perturbation (relative step 0), per condition; with
    `decoded` (`decoded_at_perturbation`), the first episode's frames at the perturbation below it: per
    condition the observed frame, its decoded latent and the decoded prediction."""
    if decoded:
        conditions = list(decoded)
        fig = plt.figure(figsize=(7, 4 + 1.3 * len(PANEL_ROWS)))
        grid = fig.add_gridspec(1 + len(PANEL_ROWS), len(conditions),
                                height_ratios=[4, *[1.3] * len(PANEL_ROWS)], hspace=0.35)
        ax = fig.add_subplot(grid[0, :])
        for column, condition in enumerate(conditions):
            for row, (key, label) in enumerate(PANEL_ROWS.items(), start=1):
                image_ax = fig.add_subplot(grid[row, column])
                image_ax.imshow(decoded[condition][key], interpolation="nearest")
                image_ax.set_xticks([])
                image_ax.set_yticks([])
                if row == 1:
                    image_ax.set_title(condition, fontsize=8)
                if column == 0:
                    image_ax.set_ylabel(label, fontsize=8)
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    near = table[table["relative_step"].abs() <= window]
    curves = near.groupby(["condition", "relative_step"])["surprise"].agg(["mean", "sem"]).reset_index()
    for condition in [UNPERTURBED, *perturbed_conditions(table)]:
        curve = curves[curves["condition"] == condition]
        label = condition
        if condition != UNPERTURBED:
            label += (
                f" (peak ×{metrics[f'{condition}.peak_ratio']:.2f}, p={metrics[f'{condition}.p_value']:.2g})"
            )
        ax.plot(curve["relative_step"], curve["mean"], marker=".", label=label)
        ax.fill_between(
            curve["relative_step"], curve["mean"] - curve["sem"], curve["mean"] + curve["sem"], alpha=0.25
        )
    ax.axvline(0, color="black", linestyle="--", linewidth=1, label="perturbation")
    ax.set_xlabel("predicted frame − perturbation step (raw steps)")
    ax.set_ylabel("surprise ‖ẑ − z‖²")
    ax.set_title(f"violation of expectation ({table['episode'].nunique()} episodes, mean ± s.e.m.)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


@dataclass
class VoEResult:
    """Surprise per episode × condition × predicted frame, and the flat metrics derived from it."""

    table: pd.DataFrame
    metrics: dict[str, float]
    decoded: dict[str, dict[str, np.ndarray]] | None = None  # `decoded_at_perturbation`, given a decoder


def run_voe(
    model: WorldModel,
    meta: ModelMeta,
    env_kwargs: dict[str, Any],
    cfg: VoEConfig,
    device: str | torch.device = "cpu",
    decoder: ImageDecoder | None = None,
) -> VoEResult:
    """Roll out `cfg.episodes` episodes of every condition in world `meta.env` (built with `env_kwargs`, as
    the training data was) and measure the model's surprise along them; with `decoder`, also decode what
    the model expected at the perturbation (display only: the table and metrics do not depend on it)."""
    check_config(cfg, model.frameskip, model.history)
    world = get_world(meta.env)
    trajectories = [
        trajectory
        for episode in range(cfg.episodes)
        for trajectory in episode_trajectories(world, env_kwargs, cfg, episode).values()
    ]
    table = surprise_table(model.to(device), meta.action_stats, trajectories, cfg.perturb_step, device)
    decoded = None if decoder is None else decoded_at_perturbation(
        model, meta.action_stats, trajectories, cfg.perturb_step, decoder, device)
    return VoEResult(table, voe_metrics(table, cfg.window), decoded)
