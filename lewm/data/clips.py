"""Training clips (reference §3): `history + num_preds` frames `frameskip` raw steps apart, with the raw
actions between them z-scored per dimension and stacked into one block per frame.

For a clip of T frames starting at within-episode step s (fs = frameskip):
- frame k is frame s + fs·k;
- action block k holds the raw actions s + fs·k … s + fs·k + fs − 1, the ones executed after frame k
  that lead to frame k + 1, flattened step-major to `fs·A` values.

Validity: a clip needs T·fs real actions (rows s … s + T·fs − 1) and the frame the last one leads to
(s + T·fs). An episode of `length` frames has `length − 1` real actions (its last row is NaN), so the
rule is `s + T·fs ≤ length − 1`, the reference's `start + T·fs ≤ number of actions`. Clips therefore never
cross an episode boundary and never contain a NaN action; NaN → 0 is kept only as a safeguard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lewm.config import ClipConfig
from lewm.data.storage import EpisodeStore

STD_FLOOR = 1e-6


@dataclass(frozen=True, eq=False)
class ActionStats:
    """Per-dimension mean and std of raw actions (train split), used to z-score them.

    `normalize`/`denormalize` accept numpy arrays or torch tensors whose last dimension is A, or a multiple
    of A (stacked action blocks, as the planner samples them).
    """

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self) -> None:
        mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        std = np.asarray(self.std, dtype=np.float64).reshape(-1)
        if mean.shape != std.shape:
            raise ValueError(f"action stats: mean {mean.shape} and std {std.shape} differ in shape")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", np.maximum(std, STD_FLOOR))

    @classmethod
    def from_store(cls, store: EpisodeStore) -> ActionStats:
        """Statistics over the train split's actions (NaN rows, i.e. episode ends, dropped)."""
        train_ids = store.episode_ids("train")
        in_train = store.steps["episode"].isin(train_ids).to_numpy()
        actions = store.actions[in_train]
        actions = actions[~np.isnan(actions).any(axis=1)].astype(np.float64)
        if len(actions) == 0:
            raise ValueError(f"{store.path}: the train split has no actions to compute statistics on")
        return cls(actions.mean(axis=0), actions.std(axis=0))

    def normalize(self, actions: Any) -> Any:
        """Raw actions → z-scores."""
        return (actions - self._tiled(self.mean, actions)) / self._tiled(self.std, actions)

    def denormalize(self, actions: Any) -> Any:
        """Z-scores → raw actions."""
        return actions * self._tiled(self.std, actions) + self._tiled(self.mean, actions)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActionStats:
        return cls(np.asarray(data["mean"]), np.asarray(data["std"]))

    def _tiled(self, values: np.ndarray, like: Any) -> Any:
        """`values` repeated to `like`'s last dimension, as a tensor or array matching `like`."""
        width = like.shape[-1]
        if width % len(values):
            raise ValueError(f"actions have last dimension {width}, not a multiple of {len(values)}")
        tiled = np.tile(values, width // len(values))
        if torch.is_tensor(like):
            dtype = like.dtype if like.is_floating_point() else torch.float32
            return torch.as_tensor(tiled, dtype=dtype, device=like.device)
        dtype = like.dtype if np.issubdtype(np.asarray(like).dtype, np.floating) else np.float64
        return tiled.astype(dtype)


def clip_index(lengths: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """All valid clips of `span = T·frameskip` raw steps in episodes of `lengths` frames.

    Returns `(position, start)`: the index into `lengths` and the within-episode start step of every clip,
    ordered by episode then start. Valid starts are `0 … length − 1 − span` (see the module docstring).
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    counts = np.maximum(lengths - span, 0)
    position = np.repeat(np.arange(len(lengths)), counts)
    first_of_episode = np.repeat(np.cumsum(counts) - counts, counts)
    start = np.arange(counts.sum()) - first_of_episode
    return position, start


class ClipDataset(Dataset):
    """Clips of one split as dicts: `pixels` uint8 `(T, 3, H, W)`, `actions` float32 `(T, fs·A)`,
    `state` float32 `(T, S)`, `episode`, `start` (see the module docstring for the alignment).

    `action_stats=None` computes them from the store's train split. Frames are read lazily from the memmap;
    normalised actions and states (small) are held in memory so `__getitem__` is two fancy-indexes.
    """

    def __init__(
        self, store: EpisodeStore, split: str, clip: ClipConfig, action_stats: ActionStats | None = None
    ):
        self.store = store
        self.split = split
        self.num_frames = clip.history + clip.num_preds
        self.frameskip = clip.frameskip
        self.action_stats = ActionStats.from_store(store) if action_stats is None else action_stats
        episodes = store.episodes.set_index("episode").loc[store.episode_ids(split)]
        position, start = clip_index(episodes["length"].to_numpy(), self.span)
        self.episode = episodes.index.to_numpy()[position]
        self.start = start
        self.row = episodes["start"].to_numpy()[position] + start
        actions = self.action_stats.normalize(store.actions).astype(np.float32)
        self._actions = np.nan_to_num(actions, nan=0.0)
        self._states = store.states.astype(np.float32)

    @property
    def span(self) -> int:
        """Raw steps covered by one clip: T·frameskip."""
        return self.num_frames * self.frameskip

    def __len__(self) -> int:
        return len(self.row)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = int(self.row[index])
        frame_rows = row + self.frameskip * np.arange(self.num_frames)
        pixels = self.store.frames[frame_rows].transpose(0, 3, 1, 2)
        actions = self._actions[row : row + self.span].reshape(self.num_frames, -1)
        return {
            "pixels": torch.from_numpy(np.ascontiguousarray(pixels)),
            "actions": torch.from_numpy(actions.copy()),
            "state": torch.from_numpy(self._states[frame_rows]),
            "episode": int(self.episode[index]),
            "start": int(self.start[index]),
        }


def strided_trajectories(
    store: EpisodeStore, frameskip: int, max_episodes: int = 16, split: str = "val"
) -> torch.Tensor:
    """Frames of up to `max_episodes` episodes of `split` every `frameskip` steps, (E, T, 3, H, W) uint8
    (the latent-straightness trajectories). Episodes are cut to the shortest one so they stack."""
    episodes = store.episode_ids(split)[:max_episodes]
    sequences = [np.asarray(store.frames[store.episode_rows(ep)][::frameskip]) for ep in episodes]
    length = min(len(s) for s in sequences)
    stacked = np.stack([s[:length] for s in sequences])
    return torch.from_numpy(stacked).permute(0, 1, 4, 2, 3).contiguous()
