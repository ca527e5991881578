"""Dataset storage: round trip, streaming .npy frames, clear errors, and atomic writes."""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from lewm.data import storage
from lewm.data.storage import EpisodeRecord, EpisodeStore, write_dataset

STATE_NAMES = ["episode", "step"]
PROPRIO_NAMES = ["step"]


def make_episode(episode: int, length: int, size: int = 8) -> EpisodeRecord:
    """An episode whose every value encodes (episode, step): pixels channel 0 = step, channel 1 = episode."""
    steps = np.arange(length)
    frames = np.zeros((length, size, size, 3), dtype=np.uint8)
    frames[..., 0] = steps[:, None, None]
    frames[..., 1] = episode
    return EpisodeRecord(
        episode=episode,
        seed=1000 + episode,
        frames=frames,
        actions=np.stack([episode * 1000.0 + steps[:-1], -steps[:-1]], axis=1).astype(np.float32),
        states=np.stack([np.full(length, episode), steps], axis=1).astype(np.float64),
        proprio=steps[:, None].astype(np.float64),
        n_contacts=(steps[:-1] % 3 == 0).astype(np.int64),
    )


def make_manifest(splits: dict[str, list[int]]) -> dict:
    return {
        "env": "synthetic",
        "splits": splits,
        "state_names": STATE_NAMES,
        "proprio_names": PROPRIO_NAMES,
        "action_dim": 2,
    }


LENGTHS = {0: 12, 1: 7, 2: 9, 3: 10}
SPLITS = {"train": [0, 2], "val": [1], "test": [3]}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    episodes = (make_episode(ep, length) for ep, length in LENGTHS.items())
    return write_dataset(tmp_path / "ds", episodes, make_manifest(SPLITS))


def test_round_trip(dataset: Path) -> None:
    store = EpisodeStore.open(dataset)
    total = sum(LENGTHS.values())
    assert isinstance(store.frames, np.memmap) and store.frames.shape == (total, 8, 8, 3)
    assert len(store) == total and list(store.steps["step"][:3]) == [0, 1, 2]
    m = store.manifest
    assert (m["episodes"], m["frames"], m["steps"], m["image_size"]) == (4, total, total - 4, 8)
    assert m["format_version"] == storage.FORMAT_VERSION and m["env"] == "synthetic"
    assert not {"created", "generation_seconds", "workers"} & set(m)  # nothing about the run
    assert m["contact_fraction"] == pytest.approx(
        sum(len(range(0, n - 1, 3)) for n in LENGTHS.values()) / (total - 4)
    )
    for ep, length in LENGTHS.items():
        rows = store.episode_rows(ep)
        original = make_episode(ep, length)
        assert rows.stop - rows.start == length
        np.testing.assert_array_equal(store.frames[rows], original.frames)
        np.testing.assert_array_equal(store.actions[rows][:-1], original.actions)
        assert np.isnan(store.actions[rows][-1]).all()
        np.testing.assert_array_equal(store.states[rows], original.states)
        np.testing.assert_array_equal(store.proprio[rows], original.proprio)
        np.testing.assert_array_equal(store.n_contacts[rows], [*original.n_contacts, 0])
    assert list(store.steps.columns) == [
        "episode",
        "step",
        "action_0",
        "action_1",
        "state_episode",
        "state_step",
        "proprio_step",
        "n_contacts",
    ]
    assert store.episodes.to_dict("list") == {
        "episode": [0, 1, 2, 3],
        "start": [0, 12, 19, 28],
        "length": [12, 7, 9, 10],
        "split": ["train", "val", "train", "test"],
        "seed": [1000, 1001, 1002, 1003],
    }


def test_split_and_episode_access(dataset: Path) -> None:
    store = EpisodeStore.open(dataset)
    assert store.episode_ids("train").tolist() == [0, 2]
    assert store.episode_ids("val").tolist() == [1] and store.episode_ids().tolist() == [0, 1, 2, 3]
    assert store.frames_for(2, [0, 8])[:, 0, 0, 0].tolist() == [0, 8]
    assert store.frames_for(2, 3)[0, 0].tolist() == [3, 2, 0]
    assert store.states_for(3, range(2)).tolist() == [[3, 0], [3, 1]]
    with pytest.raises(ValueError, match="unknown split"):
        store.episode_ids("training")
    with pytest.raises(ValueError, match="no episode 9"):
        store.episode_rows(9)
    with pytest.raises(ValueError, match="out of range"):
        store.frames_for(1, [7])


def test_store_pickles_without_frames(dataset: Path) -> None:
    store = EpisodeStore.open(dataset)
    assert store.frames.shape[0] == 38
    clone = pickle.loads(pickle.dumps(store))
    assert clone._frames is None  # DataLoader workers reopen the memmap instead of copying it
    np.testing.assert_array_equal(clone.frames, store.frames)


def test_frames_span_several_parquet_row_groups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "_ROWS_PER_GROUP", 10)
    episodes = (make_episode(ep, length) for ep, length in LENGTHS.items())
    store = EpisodeStore.open(write_dataset(tmp_path / "ds", episodes, make_manifest(SPLITS)))
    assert store.steps["episode"].tolist() == np.repeat(list(LENGTHS), list(LENGTHS.values())).tolist()


def test_open_errors_name_the_problem(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset directory not found"):
        EpisodeStore.open(tmp_path / "absent")
    (dataset / "steps.parquet").rename(dataset / "steps.bak")
    with pytest.raises(FileNotFoundError, match=r"missing steps\.parquet"):
        EpisodeStore.open(dataset)
    (dataset / "steps.bak").rename(dataset / "steps.parquet")

    frames = (dataset / "frames.npy").read_bytes()
    (dataset / "frames.npy").write_bytes(frames[: len(frames) // 2])
    with pytest.raises(ValueError, match=r"frames\.npy: corrupt"):
        EpisodeStore.open(dataset)
    (dataset / "frames.npy").write_bytes(frames)

    manifest = json.loads((dataset / "manifest.json").read_text())
    (dataset / "manifest.json").write_text(json.dumps({**manifest, "frames": 5}))
    with pytest.raises(ValueError, match="frame counts disagree"):
        EpisodeStore.open(dataset)
    (dataset / "manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt manifest"):
        EpisodeStore.open(dataset)
    (dataset / "episodes.parquet").write_bytes(b"garbage")
    (dataset / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"episodes\.parquet: corrupt"):
        EpisodeStore.open(dataset)


def _failing_halfway(error: BaseException) -> Iterator[EpisodeRecord]:
    yield make_episode(0, 12)
    yield make_episode(1, 7)
    raise error


@pytest.mark.parametrize("error", [RuntimeError("simulated crash"), KeyboardInterrupt()])
def test_failed_write_leaves_nothing(tmp_path: Path, error: BaseException) -> None:
    with pytest.raises(type(error)):
        write_dataset(tmp_path / "ds", _failing_halfway(error), make_manifest(SPLITS))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_older_dataset(dataset: Path) -> None:
    before = {p.name: p.read_bytes() for p in dataset.iterdir()}
    with pytest.raises(RuntimeError):
        write_dataset(dataset, _failing_halfway(RuntimeError("crash")), make_manifest(SPLITS))
    assert {p.name: p.read_bytes() for p in dataset.iterdir()} == before
    assert [p.name for p in dataset.parent.iterdir()] == ["ds"]


def test_writer_rejects_inconsistent_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no episodes"):
        write_dataset(tmp_path / "a", iter([]), make_manifest({"train": []}))
    with pytest.raises(ValueError, match="never written"):
        write_dataset(tmp_path / "b", iter([make_episode(0, 5)]), make_manifest({"train": [0, 1]}))
    with pytest.raises(ValueError, match="in no split"):
        write_dataset(tmp_path / "c", iter([make_episode(5, 5)]), make_manifest({"train": [0]}))
    bad = make_episode(0, 5)
    bad.actions = bad.actions[:, :1]
    with pytest.raises(ValueError, match="actions has shape"):
        write_dataset(tmp_path / "d", iter([bad]), make_manifest({"train": [0]}))
    assert list(tmp_path.iterdir()) == []


def test_identity_is_the_manifest_hash(dataset: Path) -> None:
    identity = EpisodeStore.open(dataset).identity
    assert len(identity) == 16 and identity == EpisodeStore.open(dataset).identity
    manifest = json.loads((dataset / "manifest.json").read_text())
    (dataset / "manifest.json").write_text(json.dumps({**manifest, "seed": manifest.get("seed", 0) + 1}))
    assert EpisodeStore.open(dataset).identity != identity  # other parameters, other data


def test_identity_changes_with_the_data_under_the_same_parameters(tmp_path: Path) -> None:
    """A world whose rendering changes gives other frames from the same parameters: another identity, so
    a training checkpoint of the old data is not resumed on the new."""
    manifest = make_manifest({"train": [0]})
    episode = make_episode(0, 5)
    one = EpisodeStore.open(write_dataset(tmp_path / "one", iter([episode]), manifest))
    again = EpisodeStore.open(write_dataset(tmp_path / "again", iter([make_episode(0, 5)]), manifest))
    episode.frames = episode.frames.copy()
    episode.frames[2, 0, 0, 0] ^= 1
    other = EpisodeStore.open(write_dataset(tmp_path / "other", iter([episode]), manifest))
    assert one.identity == again.identity != other.identity
    assert one.manifest["content_sha256"] != other.manifest["content_sha256"]
