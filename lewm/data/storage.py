"""The on-disk dataset format (docs/architecture.md, "Datasets"): reading it and writing it atomically.

A dataset directory holds
- `manifest.json`: how the data was made (env, policy, seed, splits, names, counts, ...);
- `frames.npy`: uint8 `(num_frames, H, W, 3)`, memory-mapped on read so datasets larger than RAM work;
- `steps.parquet`: one row per frame, in frame order (`episode`, `step`, `action_<i>`, `state_<name>`,
  `proprio_<name>`, `n_contacts`). Row t's action and contact count belong to the step taken *after*
  frame t; an episode's last frame has NaN actions and 0 contacts;
- `episodes.parquet`: `episode`, `start` (first frame row), `length` (frames), `split`, `seed`.

The writer streams: frames go straight to `frames.npy` (its header is rewritten with the final count at
the end) and steps to Parquet row groups, so memory stays bounded by one batch of episodes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lewm.io import atomic_dir

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
MANIFEST, FRAMES, STEPS, EPISODES = "manifest.json", "frames.npy", "steps.parquet", "episodes.parquet"
_REQUIRED_FILES = (MANIFEST, FRAMES, STEPS, EPISODES)
_ROWS_PER_GROUP = 65_536


@dataclass
class EpisodeRecord:
    """One recorded episode: L frames and the L − 1 steps between them."""

    episode: int
    seed: int
    frames: np.ndarray  # (L, H, W, 3) uint8
    actions: np.ndarray  # (L - 1, A): action t leads from frame t to frame t + 1
    states: np.ndarray  # (L, S)
    proprio: np.ndarray  # (L, P)
    n_contacts: np.ndarray  # (L - 1,): contacts during step t

    @property
    def length(self) -> int:
        """Number of frames."""
        return len(self.frames)


def action_columns(action_dim: int) -> list[str]:
    """Names of the action columns in steps.parquet."""
    return [f"action_{i}" for i in range(action_dim)]


# ---------------------------------------------------------------------------------------------- reading


class EpisodeStore:
    """Read access to a dataset directory; frames stay on disk (memmap) until indexed."""

    def __init__(self, path: Path, manifest: dict[str, Any], steps: pd.DataFrame, episodes: pd.DataFrame):
        self.path = path
        self.manifest = manifest
        self.steps = steps
        self.episodes = episodes
        self._frames: np.ndarray | None = None
        self._rows = {
            int(ep): slice(int(start), int(start + length))
            for ep, start, length in episodes[["episode", "start", "length"]].itertuples(index=False)
        }

    @classmethod
    def open(cls, path: str | Path) -> EpisodeStore:
        """Open and sanity-check a dataset; missing or corrupt parts raise an error naming the file."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: dataset directory not found (generate it with "
                f"`python -m pipelines.generate --env <env>`)"
            )
        if not path.is_dir():
            raise ValueError(f"{path}: not a dataset directory")
        missing = [name for name in _REQUIRED_FILES if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{path}: incomplete dataset, missing {', '.join(missing)}")
        store = cls(
            path, _read_manifest(path / MANIFEST), _read_parquet(path / STEPS), _read_parquet(path / EPISODES)
        )
        store._check_consistency()
        return store

    @property
    def frames(self) -> np.ndarray:
        """All frames, uint8 `(num_frames, H, W, 3)`, memory-mapped read-only."""
        if self._frames is None:
            self._frames = _open_frames(self.path / FRAMES)
        return self._frames

    def __getstate__(self) -> dict[str, Any]:
        # Pickling a memmap copies its data; DataLoader workers reopen the file instead.
        return {**self.__dict__, "_frames": None}

    @property
    def identity(self) -> str:
        """Hash of the manifest this store was opened with (env, policy, seeds, counts, splits and the
        writer's `content_sha256` of every frame, action, state and contact count): equal for identical
        datasets, different when the parameters or the data change (e.g. a world's rendering code changes
        the frames of the same parameters: a training checkpoint of the old frames is then not resumed)."""
        return hashlib.sha256(json.dumps(self.manifest, sort_keys=True).encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def action_dim(self) -> int:
        return int(self.manifest["action_dim"])

    @property
    def state_names(self) -> list[str]:
        return list(self.manifest["state_names"])

    @property
    def proprio_names(self) -> list[str]:
        return list(self.manifest["proprio_names"])

    @cached_property
    def actions(self) -> np.ndarray:
        """Raw actions `(num_frames, A)` float32; NaN in the last row of each episode."""
        return self.steps[action_columns(self.action_dim)].to_numpy(np.float32)

    @cached_property
    def states(self) -> np.ndarray:
        """Simulator states `(num_frames, S)` float64, columns as in `state_names`."""
        return self.steps[[f"state_{n}" for n in self.state_names]].to_numpy(np.float64)

    @cached_property
    def proprio(self) -> np.ndarray:
        """Proprioception `(num_frames, P)` float64, columns as in `proprio_names`."""
        return self.steps[[f"proprio_{n}" for n in self.proprio_names]].to_numpy(np.float64)

    @cached_property
    def n_contacts(self) -> np.ndarray:
        """Contacts during the step after each frame `(num_frames,)`."""
        return self.steps["n_contacts"].to_numpy()

    def episode_ids(self, split: str | None = None) -> np.ndarray:
        """Episode ids of `split` (all episodes when None), in ascending order."""
        if split is None:
            return np.sort(self.episodes["episode"].to_numpy())
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r} (known: {', '.join(SPLITS)})")
        return np.asarray(sorted(self.manifest["splits"][split]), dtype=np.int64)

    def episode_rows(self, episode: int) -> slice:
        """The frame rows of `episode` (in frames, steps, actions, states)."""
        try:
            return self._rows[int(episode)]
        except KeyError:
            raise ValueError(f"{self.path}: no episode {episode} (dataset has {len(self._rows)})") from None

    def frames_for(self, episode: int, steps: int | Iterable[int]) -> np.ndarray:
        """Frames at within-episode `steps` of `episode`: `(H, W, 3)` for an int, `(N, H, W, 3)` else."""
        return self.frames[self._rows_for(episode, steps)]

    def states_for(self, episode: int, steps: int | Iterable[int]) -> np.ndarray:
        """States at within-episode `steps` of `episode`: `(S,)` for an int, `(N, S)` else."""
        return self.states[self._rows_for(episode, steps)]

    def _rows_for(self, episode: int, steps: int | Iterable[int]) -> int | np.ndarray:
        rows = self.episode_rows(episode)
        length = rows.stop - rows.start
        index = np.asarray(steps if np.isscalar(steps) else list(steps), dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= length):
            raise ValueError(f"episode {episode} has {length} frames; steps {steps} are out of range")
        return int(index) + rows.start if index.ndim == 0 else index + rows.start

    def _check_consistency(self) -> None:
        frames = self.frames
        counts = {
            "frames.npy": len(frames),
            "steps.parquet": len(self.steps),
            "manifest frames": int(self.manifest.get("frames", -1)),
        }
        if len(set(counts.values())) != 1:
            raise ValueError(f"{self.path}: corrupt dataset, frame counts disagree ({counts})")
        episodes = self.episodes.sort_values("start")
        expected_starts = np.concatenate([[0], np.cumsum(episodes["length"].to_numpy())[:-1]])
        if not np.array_equal(episodes["start"].to_numpy(), expected_starts) or (
            episodes["length"].sum() != len(frames)
        ):
            raise ValueError(f"{self.path}: corrupt {EPISODES}, episodes do not tile the frames")


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: corrupt manifest ({exc})") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, this code reads {FORMAT_VERSION} (regenerate)")
    return manifest


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{path}: corrupt Parquet file ({exc})") from None


def _open_frames(path: Path) -> np.ndarray:
    try:
        frames = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: corrupt frames file ({exc})") from None
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 (N, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    return frames


# ---------------------------------------------------------------------------------------------- writing


def write_dataset(target: str | Path, episodes: Iterable[EpisodeRecord], manifest: dict[str, Any]) -> Path:
    """Stream `episodes` into a new dataset at `target`, atomically, and return `target`.

    `manifest` must hold `splits` (every written episode exactly once), `state_names`, `proprio_names` and
    `action_dim`; the writer adds the counts, `image_size`, `contact_fraction`, `content_sha256` (of the
    episodes' frames, actions, states, proprioception and contact counts in writing order) and
    `format_version`.
    Nothing about the run (time, host, worker count) goes in: the same parameters give byte-identical
    datasets, so DVC's hash and `EpisodeStore.identity` depend on the data only. On any error or
    interruption nothing appears at `target` and an existing dataset there is kept.
    """
    target = Path(target)
    with atomic_dir(target) as tmp:
        summary = _write_episodes(tmp, episodes, manifest)
        full_manifest = {
            **manifest,
            **summary,
            "format_version": FORMAT_VERSION,
        }
        (tmp / MANIFEST).write_text(json.dumps(full_manifest, indent=2, default=_json_default) + "\n")
    return target


def _write_episodes(directory: Path, episodes: Iterable[EpisodeRecord], manifest: dict[str, Any]) -> dict:
    """Write frames.npy, steps.parquet and episodes.parquet; return the counts for the manifest."""
    split_of = _split_lookup(manifest["splits"])
    columns = _StepColumns(manifest["action_dim"], manifest["state_names"], manifest["proprio_names"])
    episode_rows: list[dict[str, Any]] = []
    steps = contact_steps = 0
    content = hashlib.sha256()
    with _FramesWriter(directory / FRAMES) as frames, _StepsWriter(directory / STEPS) as step_rows:
        for record in episodes:
            columns.check(record)
            split = split_of.pop(record.episode, None)
            if split is None:
                raise ValueError(f"episode {record.episode} is in no split of the manifest, or written twice")
            episode_rows.append(
                {
                    "episode": record.episode,
                    "start": frames.count,
                    "length": record.length,
                    "split": split,
                    "seed": record.seed,
                }
            )
            frames.append(record.frames)
            step_rows.append(columns.table(record))
            for array in (record.frames, record.actions, record.states, record.proprio, record.n_contacts):
                content.update(np.ascontiguousarray(array).tobytes())
            steps += record.length - 1
            contact_steps += int(np.count_nonzero(record.n_contacts > 0))
    if split_of:
        raise ValueError(f"{len(split_of)} episodes of the manifest's splits were never written")
    pd.DataFrame(episode_rows).to_parquet(directory / EPISODES, index=False)
    return {
        "episodes": len(episode_rows),
        "steps": steps,
        "frames": frames.count,
        "image_size": frames.image_size,
        "contact_fraction": contact_steps / max(steps, 1),
        "content_sha256": content.hexdigest(),
    }


def _split_lookup(splits: dict[str, list[int]]) -> dict[int, str]:
    """Episode id → split name, rejecting unknown splits and episodes listed twice."""
    lookup: dict[int, str] = {}
    for name, ids in splits.items():
        if name not in SPLITS:
            raise ValueError(f"manifest splits: unknown split {name!r} (known: {', '.join(SPLITS)})")
        for ep in ids:
            if int(ep) in lookup:
                raise ValueError(f"manifest splits: episode {ep} is in both {lookup[int(ep)]} and {name}")
            lookup[int(ep)] = name
    return lookup


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


class _StepColumns:
    """Validates episode records against the manifest and turns them into steps.parquet tables."""

    def __init__(self, action_dim: int, state_names: list[str], proprio_names: list[str]):
        self.action_dim = int(action_dim)
        self.state_names = list(state_names)
        self.proprio_names = list(proprio_names)

    def check(self, record: EpisodeRecord) -> None:
        frames, length = record.frames, record.length
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or length < 2:
            raise ValueError(
                f"episode {record.episode}: frames must be uint8 (L >= 2, H, W, 3), "
                f"got {frames.dtype} {frames.shape}"
            )
        expected = {
            "actions": (length - 1, self.action_dim),
            "states": (length, len(self.state_names)),
            "proprio": (length, len(self.proprio_names)),
            "n_contacts": (length - 1,),
        }
        for name, shape in expected.items():
            actual = np.shape(getattr(record, name))
            if actual != shape:
                raise ValueError(f"episode {record.episode}: {name} has shape {actual}, expected {shape}")

    def table(self, record: EpisodeRecord) -> pa.Table:
        length = record.length
        actions = np.full((length, self.action_dim), np.nan, dtype=np.float32)
        actions[:-1] = record.actions
        contacts = np.zeros(length, dtype=np.int32)
        contacts[:-1] = record.n_contacts
        data: dict[str, Any] = {
            "episode": np.full(length, record.episode, dtype=np.int64),
            "step": np.arange(length, dtype=np.int32),
        }
        data.update({name: actions[:, i] for i, name in enumerate(action_columns(self.action_dim))})
        states = np.asarray(record.states, dtype=np.float64)
        data.update({f"state_{name}": states[:, i] for i, name in enumerate(self.state_names)})
        proprio = np.asarray(record.proprio, dtype=np.float64)
        data.update({f"proprio_{name}": proprio[:, i] for i, name in enumerate(self.proprio_names)})
        data["n_contacts"] = contacts
        return pa.table(data)


class _FramesWriter:
    """Appends uint8 frames to a .npy file whose header is fixed up with the final count on close.

    NumPy pads .npy headers so the leading dimension can grow in place; we write the header for zero
    frames first and rewrite it (same length) once the count is known.
    """

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.frame_shape: tuple[int, ...] | None = None
        self._file: BinaryIO | None = None
        self._data_offset = 0

    def __enter__(self) -> _FramesWriter:
        return self

    def append(self, frames: np.ndarray) -> None:
        if self._file is None:
            self.frame_shape = tuple(frames.shape[1:])
            self._file = open(self.path, "wb")  # noqa: SIM115 (closed in __exit__)
            self._write_header()
            self._data_offset = self._file.tell()
        if tuple(frames.shape[1:]) != self.frame_shape:
            raise ValueError(f"frames of shape {frames.shape[1:]} after frames of shape {self.frame_shape}")
        self._file.write(np.ascontiguousarray(frames, dtype=np.uint8).tobytes())
        self.count += len(frames)

    @property
    def image_size(self) -> int | None:
        return None if self.frame_shape is None else int(self.frame_shape[0])

    def _write_header(self) -> None:
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
            "fortran_order": False,
            "shape": (self.count, *self.frame_shape),
        }
        np.lib.format.write_array_header_1_0(self._file, header)

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if self._file is None:
            if exc_type is None:
                raise ValueError("no episodes to write")
            return
        try:
            if exc_type is None:
                self._file.seek(0)
                self._write_header()
                if self._file.tell() != self._data_offset:
                    raise RuntimeError(f"{self.path}: .npy header changed size; frames would be misaligned")
        finally:
            self._file.close()


class _StepsWriter:
    """Writes steps.parquet in row groups of about `_ROWS_PER_GROUP` rows."""

    def __init__(self, path: Path):
        self.path = path
        self._writer: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def __enter__(self) -> _StepsWriter:
        return self

    def append(self, table: pa.Table) -> None:
        self._pending.append(table)
        self._pending_rows += table.num_rows
        if self._pending_rows >= _ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, table.schema)
        self._writer.write_table(table, row_group_size=len(table))
        self._pending, self._pending_rows = [], 0

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            if self._writer is not None:
                self._writer.close()
