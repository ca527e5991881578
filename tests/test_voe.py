"""Violation of expectation: the three conditions share actions and differ only from the perturbation on,
teleports move block and agent, surprise matches a hand computation, peak statistics on synthetic
surprise, and the stage end to end on a tiny Push-T dataset and model."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL, pusht_data_config

from lewm.checkpoint import load_model, model_meta, save_checkpoint
from lewm.config import PROJECT_ROOT, VoEConfig, load_params
from lewm.data.clips import ActionStats
from lewm.data.generate import generate_dataset
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world
from lewm.voe import (
    UNPERTURBED,
    check_config,
    compare_peaks,
    episode_trajectories,
    peak_surprise,
    surprise_curve,
)
from lewm.world import PerturbationContext, teleport_destination
from pipelines import voe as voe_pipeline


def voe_config(**changes: Any) -> VoEConfig:
    """params.yaml's `voe` section (episodes 24, steps 60, perturb_step 30, window 10, expert policy,
    action noise 0.2, colour [220, 60, 60], seed 7) with `changes`: the dataclass has no defaults."""
    return dataclasses.replace(load_params().voe, **changes)


ENV_KWARGS = {"image_size": 32, "max_steps": 100}
VOE = voe_config(episodes=2, steps=30, perturb_step=20, window=5, seed=3)
TINY_VOE = [*TINY_MODEL, "voe.episodes=2", "voe.steps=30", "voe.perturb_step=20", "voe.window=5"]
PUSHT = get_world("pusht")


def teleport_state(env_kwargs: dict[str, Any], seed: int, episode: int) -> np.ndarray:
    """The teleport destination of `episode` for `voe.seed` = `seed`, in environments built with
    `env_kwargs`."""
    context = PerturbationContext(voe_config(seed=seed), episode, lambda: PUSHT.make_env(**env_kwargs))
    return teleport_destination(context)


@pytest.fixture(scope="module")
def trajectories():
    return episode_trajectories(PUSHT, ENV_KWARGS, VOE, episode=0)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_config):
    """A tiny Push-T dataset and an untrained tiny model checkpoint (random action statistics)."""
    root = tmp_path_factory.mktemp("voe")
    cfg = pusht_data_config(episodes=4, max_steps=20, image_size=32, seed=2, val_fraction=0.25,
                            test_fraction=0.25)
    data = generate_dataset("pusht", cfg, root / "data" / "pusht", progress=False)
    meta = model_meta("pusht", tiny_model_config.name, tiny_model_config.settings, 32, 2, 5, 3,
                      ActionStats.from_store(EpisodeStore.open(data)))
    torch.manual_seed(0)
    model = meta.build()
    torch.nn.init.normal_(model.predictor.blocks[0].modulation[1].weight, std=0.1)  # actions matter
    model_path = root / "runs" / "pusht" / "train" / "model.pt"
    save_checkpoint(model_path, {"model": model.state_dict(), "meta": meta, "step": 0})
    return data, model_path


def test_conditions_share_actions_and_differ_only_from_the_perturbation(trajectories):
    p = VOE.perturb_step
    base = trajectories["unperturbed"]
    assert len(base.actions) == VOE.steps and len(base.frames) == VOE.steps + 1
    for condition in ("color", "teleport"):
        other = trajectories[condition]
        np.testing.assert_array_equal(other.actions, base.actions)
        np.testing.assert_array_equal(other.frames[:p], base.frames[:p])
        np.testing.assert_array_equal(other.states[:p], base.states[:p])
        assert not np.array_equal(other.frames[p], base.frames[p])
    color = trajectories["color"]
    np.testing.assert_array_equal(color.states, base.states)  # a visual change only
    assert all(not np.array_equal(color.frames[t], base.frames[t]) for t in range(p, VOE.steps + 1))


def test_teleport_moves_block_and_agent_to_the_seeded_state(trajectories):
    p = VOE.perturb_step
    before, after = trajectories["unperturbed"].states[p], trajectories["teleport"].states[p]
    destination = teleport_state({**ENV_KWARGS, "max_steps": VOE.steps}, VOE.seed, 0)
    np.testing.assert_allclose(after[:5], destination[:5], atol=1e-6)
    assert np.linalg.norm(after[0:2] - before[0:2]) > 20  # agent
    assert np.linalg.norm(after[2:4] - before[2:4]) > 20  # block
    assert np.array_equal(destination, teleport_state(ENV_KWARGS, VOE.seed, 0))  # model-independent


def test_surprise_matches_a_direct_computation(trajectories, tiny_run):
    _, model_path = tiny_run
    model, meta, _ = load_model(model_path)
    trajectory = trajectories["teleport"]
    steps, surprise = surprise_curve(model, trajectory.frames, trajectory.actions, meta.action_stats)
    fs, history = 5, 3
    assert steps[0] == fs * history and steps[-1] == VOE.steps and np.all(np.diff(steps) == 1)

    target = 22  # context frames 7, 12, 17 with their action blocks, predicting frame 22
    context = [7, 12, 17]
    normalised = meta.action_stats.normalize(trajectory.actions.astype(np.float64))
    blocks = torch.tensor(
        np.stack([normalised[f : f + fs].reshape(-1) for f in context]), dtype=torch.float32
    )
    with torch.no_grad():
        z = torch.stack(
            [
                model.encode(torch.from_numpy(trajectory.frames[f]).permute(2, 0, 1)[None])[0]
                for f in [*context, target]
            ]
        )
        predicted = model.predict(z[None, :3], blocks[None])[0, -1]
    expected = float(((predicted - z[3]) ** 2).sum())
    assert surprise[steps == target][0] == pytest.approx(expected, rel=1e-4)


def test_surprise_before_the_perturbation_is_the_same_in_every_condition(trajectories, tiny_run):
    _, model_path = tiny_run
    model, meta, _ = load_model(model_path)
    curves = {
        name: surprise_curve(model, t.frames, t.actions, meta.action_stats)
        for name, t in trajectories.items()
    }
    steps = curves["unperturbed"][0]
    before = steps < VOE.perturb_step
    for name in ("color", "teleport"):
        np.testing.assert_allclose(curves[name][1][before], curves["unperturbed"][1][before], rtol=1e-5)
        assert not np.allclose(curves[name][1][~before], curves["unperturbed"][1][~before])


def test_peak_statistics_on_synthetic_surprise():
    rng = np.random.default_rng(0)
    unperturbed = rng.uniform(1.0, 2.0, 30)
    strong = compare_peaks(unperturbed * 3 + rng.normal(0, 0.1, 30), unperturbed)
    assert strong["p_value"] < 1e-6 and strong["t_stat"] > 0
    assert strong["peak_ratio"] == pytest.approx(3.0, rel=0.05)
    assert strong["peak_ratio_median"] == pytest.approx(3.0, rel=0.05)
    lower = compare_peaks(unperturbed * 0.5, unperturbed)  # one-sided: "less" is not a detection
    assert lower["p_value"] > 0.99
    null = compare_peaks(rng.permutation(unperturbed), unperturbed)
    assert 0.01 < null["p_value"] < 0.99


def test_peaks_are_taken_after_the_perturbation_within_the_window():
    table = pd.DataFrame(
        {
            "episode": 0,
            "condition": "teleport",
            "relative_step": [-3, -1, 0, 2, 4, 5],
            "surprise": [100.0, 50.0, 1.0, 7.0, 3.0, 80.0],
        }
    )
    assert peak_surprise(table, window=4).loc[0, "teleport"] == 7.0


def test_config_must_leave_room_for_a_full_context():
    check_config(voe_config(), frameskip=5, history=3)
    with pytest.raises(ValueError, match=r"perturb_step − voe\.window"):
        check_config(voe_config(perturb_step=20, window=10), frameskip=5, history=3)
    with pytest.raises(ValueError, match=r"voe\.steps"):
        check_config(voe_config(steps=35, perturb_step=30, window=10), frameskip=5, history=3)


def test_voe_stage_writes_the_surprise_table_and_metrics(tiny_run, tmp_path):
    data, model_path = tiny_run
    metrics = voe_pipeline.voe_stage(
        "pusht",
        overrides=TINY_VOE,
        data_dir=data,
        model_path=model_path,
        out_dir=tmp_path,
        track=False,
        device="cpu",
    )
    table = pd.read_parquet(tmp_path / "surprise.parquet")
    assert set(table["condition"]) == {"unperturbed", "color", "teleport"}
    assert len(table) == 2 * 3 * (30 - 15 + 1)  # episodes × conditions × predicted frames 15 … 30
    for condition in ("color", "teleport"):
        for key in ("peak_ratio", "peak_ratio_median", "p_value", "t_stat", "peak_mean"):
            assert np.isfinite(metrics[f"{condition}.{key}"])
    assert (tmp_path / "voe.png").stat().st_size > 0 and (tmp_path / "metrics.json").is_file()


def test_cli_reports_a_missing_checkpoint(tiny_run, tmp_path, monkeypatch, capsys):
    data, _ = tiny_run
    monkeypatch.setattr(
        sys,
        "argv",
        ["voe", "--env", "pusht", "--model", str(tmp_path / "absent.pt"), "--data", str(data), "--no-track"],
    )
    with pytest.raises(SystemExit) as exit_info:
        voe_pipeline.run_cli(voe_pipeline.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "checkpoint not found" in err[0]


def test_conditions_are_the_unperturbed_run_and_the_worlds_perturbations(trajectories):
    assert list(trajectories) == [UNPERTURBED, *PUSHT.perturbations] == ["unperturbed", "color", "teleport"]
    assert all(t.condition == name and t.episode == 0 for name, t in trajectories.items())


def test_voe_does_not_import_training():
    """VoE shares device and seeding helpers with training through lewm.runtime, not lewm.train: the module
    and its stage load no training code (checked in a fresh interpreter)."""
    probe = "import sys, lewm.voe, pipelines.voe; print('lewm.train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "False"
