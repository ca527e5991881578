"""Training clips: validity boundary, frame/action/state alignment, and train-only action statistics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lewm.config import ClipConfig
from lewm.data.clips import ActionStats, ClipDataset, clip_index, strided_trajectories
from lewm.data.storage import EpisodeRecord, EpisodeStore, write_dataset

CLIP = ClipConfig(history=3, num_preds=1, frameskip=5)  # T = 4 frames, span = 20 raw steps
LENGTHS = {0: 21, 1: 20, 2: 30, 3: 45, 4: 26}  # frames; 21 is the shortest episode with a clip
SPLITS = {"train": [0, 2, 3], "val": [4], "test": [1]}
IDENTITY = ActionStats(np.zeros(2), np.ones(2))


def encoded_episode(episode: int, length: int, action_scale: float = 1.0) -> EpisodeRecord:
    """Every value encodes (episode, step): pixel channels (step, episode, 0), actions
    (episode·1000 + step, −step)·scale, state (episode, step)."""
    steps = np.arange(length)
    frames = np.zeros((length, 4, 4, 3), dtype=np.uint8)
    frames[..., 0] = steps[:, None, None]
    frames[..., 1] = episode
    actions = np.stack([episode * 1000.0 + steps[:-1], -steps[:-1]], axis=1) * action_scale
    return EpisodeRecord(
        episode=episode,
        seed=episode,
        frames=frames,
        actions=actions.astype(np.float32),
        states=np.stack([np.full(length, episode), steps], axis=1).astype(np.float64),
        proprio=np.zeros((length, 0)),
        n_contacts=np.zeros(length - 1, dtype=np.int64),
    )


def write_encoded(path: Path, scales: dict[int, float] | None = None) -> EpisodeStore:
    scales = scales or {}
    episodes = (encoded_episode(ep, n, scales.get(ep, 1.0)) for ep, n in LENGTHS.items())
    manifest = {"splits": SPLITS, "state_names": ["episode", "step"], "proprio_names": [], "action_dim": 2}
    return EpisodeStore.open(write_dataset(path, episodes, manifest))


@pytest.fixture
def store(tmp_path: Path) -> EpisodeStore:
    return write_encoded(tmp_path / "ds")


def test_clip_index_boundary() -> None:
    """Start s is valid iff s + T·fs ≤ length − 1: all T·fs actions are real and lead to an existing frame."""
    position, start = clip_index(np.array([19, 20, 21, 25]), span=20)
    assert position.tolist() == [2, 3, 3, 3, 3, 3]
    assert start.tolist() == [0, 0, 1, 2, 3, 4]
    assert clip_index(np.array([5]), span=20)[0].size == 0


def test_clips_cover_exactly_the_valid_starts_of_the_split(store: EpisodeStore) -> None:
    data = ClipDataset(store, "train", CLIP, IDENTITY)
    expected = [(ep, s) for ep in SPLITS["train"] for s in range(LENGTHS[ep] - 20)]
    assert list(zip(data.episode.tolist(), data.start.tolist(), strict=True)) == expected
    assert len(ClipDataset(store, "test", CLIP, IDENTITY)) == 0  # a 20-frame episode has 19 actions


def test_items_align_frames_actions_and_states(store: EpisodeStore) -> None:
    fs, T = CLIP.frameskip, 4
    for split in ("train", "val"):
        data = ClipDataset(store, split, CLIP, IDENTITY)
        for index in range(len(data)):
            item = data[index]
            ep, s = item["episode"], item["start"]
            frame_steps = s + fs * np.arange(T)
            assert item["pixels"].shape == (T, 3, 4, 4) and item["pixels"].dtype == torch.uint8
            assert (item["pixels"][:, 0] == torch.as_tensor(frame_steps)[:, None, None]).all()
            assert (item["pixels"][:, 1] == ep).all()  # never crosses into another episode
            assert item["state"].dtype == torch.float32
            assert item["state"].tolist() == [[ep, t] for t in frame_steps]
            assert item["actions"].shape == (T, fs * 2) and item["actions"].dtype == torch.float32
            blocks = item["actions"].double().numpy().reshape(T, fs, 2)
            raw_steps = s + fs * np.arange(T)[:, None] + np.arange(fs)[None, :]  # block k: s+fs·k … +fs−1
            np.testing.assert_array_equal(blocks[..., 0], ep * 1000 + raw_steps)
            np.testing.assert_array_equal(blocks[..., 1], -raw_steps)


def test_last_clip_uses_the_last_real_action(store: EpisodeStore) -> None:
    data = ClipDataset(store, "val", CLIP, IDENTITY)  # episode 4: 26 frames, 25 actions
    last = data[len(data) - 1]
    assert last["start"] == 5
    assert last["actions"][-1, -2].item() == 4000 + 24  # action 24 leads to frame 25, the final frame
    assert torch.isfinite(last["actions"]).all()


def test_actions_are_normalised_per_dimension_before_stacking(store: EpisodeStore) -> None:
    stats = ActionStats.from_store(store)
    item = ClipDataset(store, "train", CLIP, stats)[7]
    raw = ClipDataset(store, "train", CLIP, IDENTITY)[7]["actions"].double().numpy().reshape(-1, 2)
    expected = ((raw - stats.mean) / stats.std).reshape(4, 10)
    np.testing.assert_allclose(item["actions"].numpy(), expected, rtol=1e-5)


def test_action_stats_use_the_train_split_only(tmp_path: Path) -> None:
    store = write_encoded(tmp_path / "ds", scales={4: 1e6, 1: -1e6})  # val/test actions are huge
    stats = ActionStats.from_store(store)
    train = np.concatenate([encoded_episode(ep, LENGTHS[ep]).actions for ep in SPLITS["train"]])
    np.testing.assert_allclose(stats.mean, train.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, train.std(axis=0), rtol=1e-6)
    default = ClipDataset(store, "val", CLIP)  # no stats given: the train split's
    np.testing.assert_allclose(default.action_stats.mean, stats.mean)


def test_action_stats_api() -> None:
    stats = ActionStats(np.array([1.0, -2.0]), np.array([2.0, 0.0]))
    assert stats.std.tolist() == [2.0, 1e-6]  # floored
    raw = np.array([[3.0, -2.0], [1.0, -2.0]], dtype=np.float32)
    z = stats.normalize(raw)
    assert z.dtype == np.float32 and z.tolist() == [[1.0, 0.0], [0.0, 0.0]]
    np.testing.assert_allclose(stats.denormalize(z), raw)
    blocks = torch.tensor([[1.0, 0.5, -1.0, 0.0]])  # two stacked raw actions
    raw_blocks = stats.denormalize(blocks)
    assert raw_blocks.dtype == torch.float32
    assert raw_blocks[0].tolist() == pytest.approx([3.0, -2.0 + 0.5e-6, -1.0, -2.0])
    clone = ActionStats.from_dict(stats.to_dict())
    np.testing.assert_array_equal(clone.mean, stats.mean)
    np.testing.assert_array_equal(clone.std, stats.std)
    with pytest.raises(ValueError, match="not a multiple of 2"):
        stats.normalize(np.zeros(3))


def test_batches_collate(store: EpisodeStore) -> None:
    loader = torch.utils.data.DataLoader(ClipDataset(store, "train", CLIP, IDENTITY), batch_size=4)
    batch = next(iter(loader))
    assert batch["pixels"].shape == (4, 4, 3, 4, 4) and batch["actions"].shape == (4, 4, 10)
    assert batch["episode"].tolist() == [0, 2, 2, 2] and batch["start"].tolist() == [0, 0, 1, 2]


def test_strided_trajectories_stack_split_episodes_cut_to_the_shortest(store: EpisodeStore) -> None:
    trajectories = strided_trajectories(store, frameskip=5, split="train")  # episodes 0, 2, 3
    shortest = min(len(range(0, LENGTHS[ep], 5)) for ep in SPLITS["train"])  # 21 frames → 5
    assert trajectories.shape == (3, shortest, 3, 4, 4) and trajectories.dtype == torch.uint8
    assert trajectories[:, :, 1, 0, 0].tolist() == [[ep] * shortest for ep in SPLITS["train"]]
    assert trajectories[0, :, 0, 0, 0].tolist() == [0, 5, 10, 15, 20]  # every 5th step from the start
    assert strided_trajectories(store, frameskip=5, max_episodes=2, split="train").shape[0] == 2
    assert strided_trajectories(store, frameskip=5).shape == (1, 6, 3, 4, 4)  # val: episode 4, 26 frames
