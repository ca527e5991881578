"""Dataset generation: determinism across worker counts, splits by episode, input checks, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import pusht_data_config

from lewm.config import PROJECT_ROOT, ClipConfig
from lewm.data.clips import ClipDataset
from lewm.data.generate import check_config, episode_seeds, generate_dataset, split_episodes
from lewm.data.storage import EpisodeStore
from lewm.envs import make_env

SMALL = pusht_data_config(episodes=4, max_steps=30, image_size=64, seed=7, val_fraction=0.25,
                          test_fraction=0.25)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> dict[int, EpisodeStore]:
    """The same small Push-T dataset generated with one and with two worker processes."""
    root = tmp_path_factory.mktemp("generated")
    return {
        workers: EpisodeStore.open(
            generate_dataset(
                "pusht",
                dataclasses.replace(SMALL, workers=workers),
                root / f"workers{workers}",
                progress=False,
            )
        )
        for workers in (1, 2)
    }


def test_worker_count_does_not_change_the_data(generated: dict[int, EpisodeStore]) -> None:
    one, two = generated[1], generated[2]
    np.testing.assert_array_equal(one.frames, two.frames)
    pd.testing.assert_frame_equal(one.steps, two.steps)
    pd.testing.assert_frame_equal(one.episodes, two.episodes)
    assert one.manifest == two.manifest and one.identity == two.identity
    for name in ("manifest.json", "frames.npy", "steps.parquet", "episodes.parquet"):  # what DVC hashes
        assert (one.path / name).read_bytes() == (two.path / name).read_bytes(), name


def test_layout_and_manifest(generated: dict[int, EpisodeStore]) -> None:
    store = generated[1]
    env = make_env("pusht", image_size=64, max_steps=30).unwrapped
    m = store.manifest
    assert (m["env"], m["policy"], m["seed"], m["image_size"]) == ("pusht", "expert", 7, 64)
    assert m["env_kwargs"] == {"image_size": 64, "max_steps": 30}
    assert (m["episodes"], m["steps"], m["frames"]) == (4, 120, 124)
    assert m["state_names"] == list(env.state_names) and m["proprio_names"] == list(env.proprio_names)
    assert m["action_dim"] == env.action_dim and 0 <= m["contact_fraction"] <= 1
    assert store.frames.shape == (124, 64, 64, 3) and (store.episodes["length"] == 31).all()
    actions = store.actions.reshape(4, 31, -1)
    assert np.isnan(actions[:, -1]).all() and np.abs(actions[:, :-1]).max() <= 1
    assert store.episodes["seed"].nunique() == 4


def test_splits_are_disjoint_and_by_episode(generated: dict[int, EpisodeStore]) -> None:
    store = generated[1]
    splits = {name: set(store.episode_ids(name).tolist()) for name in ("train", "val", "test")}
    assert [len(ids) for ids in splits.values()] == [2, 1, 1]
    assert set.union(*splits.values()) == {0, 1, 2, 3}
    for name, ids in splits.items():
        assert set(store.episodes.loc[store.episodes["split"] == name, "episode"]) == ids


def test_stored_actions_replay_the_episode(generated: dict[int, EpisodeStore]) -> None:
    """The stored action is the executed one: replaying it from the stored seed reproduces the states."""
    store, episode = generated[1], 2
    rows = store.episode_rows(episode)
    env = make_env("pusht", image_size=64, max_steps=30)
    obs, _ = env.reset(seed=int(store.episodes.loc[episode, "seed"]))
    states = [obs["state"]]
    for action in store.actions[rows][:-1]:
        states.append(env.step(action)[0]["state"])
    np.testing.assert_allclose(np.stack(states), store.states[rows])


def test_generated_data_feeds_training_clips(generated: dict[int, EpisodeStore]) -> None:
    store = generated[1]
    clips = ClipDataset(store, "train", ClipConfig(history=3, num_preds=1, frameskip=5))
    assert len(clips) == 2 * (31 - 20)  # two train episodes of 31 frames, clips of 20 raw steps
    item = clips[len(clips) - 1]
    assert item["pixels"].shape == (4, 3, 64, 64) and item["actions"].shape == (4, 10)
    assert torch.isfinite(item["actions"]).all() and item["state"].shape == (4, 7)


def test_a_different_seed_gives_different_data(generated: dict[int, EpisodeStore], tmp_path: Path) -> None:
    cfg = dataclasses.replace(SMALL, seed=8, max_steps=10)
    other = EpisodeStore.open(generate_dataset("pusht", cfg, tmp_path / "ds", progress=False))
    assert not np.array_equal(other.states[:11], generated[1].states[:11])


def test_split_sizes_and_determinism() -> None:
    splits = split_episodes(100, 0.1, 0.2, seed=0)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [70, 10, 20]
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(100))
    assert split_episodes(100, 0.1, 0.2, seed=0) == splits != split_episodes(100, 0.1, 0.2, seed=1)
    tiny = split_episodes(5, 0.01, 0.0, seed=0)
    assert len(tiny["val"]) == 1 and tiny["test"] == []  # a positive fraction gets at least one episode
    with pytest.raises(ValueError, match="need at least 3"):
        split_episodes(2, 0.1, 0.1, seed=0)


def test_episode_seeds_depend_on_seed_and_index_only() -> None:
    reset_a, rng_a = episode_seeds(0, 5)
    reset_b, rng_b = episode_seeds(0, 5)
    assert reset_a == reset_b and rng_a.random() == rng_b.random()
    assert len({episode_seeds(0, i)[0] for i in range(50)} | {episode_seeds(1, 0)[0]}) == 51


def test_config_errors_are_listed_together() -> None:
    bad = pusht_data_config(episodes=0, workers=-1, val_fraction=0.6, test_fraction=0.5, action_noise=-1)
    with pytest.raises(ValueError) as info:
        check_config(bad, section="data.pusht")
    for problem in (
        "data.pusht.episodes must be positive",
        "data.pusht.workers must be positive",
        "data.pusht.val_fraction + test_fraction must be < 1, got 1.1",
        "data.pusht.action_noise must be ≥ 0",
    ):
        assert problem in str(info.value)


def _cli(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipelines.generate", "--no-progress", *args]
    return subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--env", "nope"], "nope"),
        (["--env", "pusht", "--set", "data.pusht.episodes=-3"], "data.pusht.episodes must be positive"),
        (["--env", "pusht", "--set", "data.pusht.policy=nope"], "nope"),
    ],
)
def test_cli_rejects_bad_input(tmp_path: Path, args: list[str], message: str) -> None:
    result = _cli(*args, "--out", str(tmp_path / "ds"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_an_unwritable_target(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    result = _cli("--env", "pusht", "--out", str(tmp_path / "file" / "ds"))
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert "not a directory" in result.stderr


def test_cli_generates_and_summarises(tmp_path: Path) -> None:
    result = _cli(
        "--env",
        "pusht",
        "--set",
        "data.pusht.episodes=3",
        "--set",
        "data.pusht.max_steps=4",
        "--set",
        "data.pusht.workers=1",
        "--out",
        str(tmp_path / "ds"),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("generated 3 pusht episodes (15 frames")
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["episodes"] == 3


def test_cli_does_not_import_prefect() -> None:
    code = "import sys, pipelines.generate; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, timeout=60).returncode == 0


@pytest.mark.slow
def test_prefect_flow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.testing.utilities import prefect_test_harness

    from pipelines.generate import generate_flow

    monkeypatch.chdir(tmp_path)
    overrides = ["data.pusht.episodes=3", "data.pusht.max_steps=4", "data.pusht.workers=1"]
    with prefect_test_harness():
        path = generate_flow("pusht", str(PROJECT_ROOT / "params.yaml"), overrides)
    assert Path(path) == Path("data/pusht") and EpisodeStore.open(tmp_path / path).manifest["episodes"] == 3
