"""Probing: quantities derived from state names (angles as sin/cos), ridge and MLP probes on synthetic
data, held-out scoring, and the probe stage end to end on a tiny Push-T dataset and model."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL, pusht_data_config

from lewm.checkpoint import model_meta, read_checkpoint, save_checkpoint
from lewm.config import PROJECT_ROOT, ProbeConfig, load_params
from lewm.data.clips import ActionStats
from lewm.data.generate import generate_dataset
from lewm.data.storage import EpisodeStore
from lewm.envs.pusht.env import PushTEnv
from lewm.probing import (
    RidgeProbe,
    fit_mlp_probe,
    mlp_predict,
    probe_scores,
    random_init_model,
    regression_scores,
    split_rows,
)
from lewm.tracking import configure
from lewm.world import physical_quantities
from pipelines import probe as probe_pipeline

TINY_PROBE = [*TINY_MODEL, "probe.max_frames=60", "probe.mlp_hidden=16", "probe.mlp_epochs=5"]


def probe_config(**changes: float | int) -> ProbeConfig:
    """params.yaml's `probe` section (max_frames 6000, ridge_alpha 1, mlp_hidden 256, mlp_epochs 300,
    mlp_lr 1e-3, seed 0) with `changes`: the dataclass holds no defaults of its own."""
    return dataclasses.replace(load_params().probe, **changes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_config):
    """A tiny Push-T dataset and an untrained tiny model checkpoint at runs/pusht/train/model.pt."""
    root = tmp_path_factory.mktemp("probe")
    cfg = pusht_data_config(episodes=6, max_steps=30, image_size=32, seed=2, val_fraction=0.2,
                            test_fraction=0.2)
    data = generate_dataset("pusht", cfg, root / "data" / "pusht", progress=False)
    store = EpisodeStore.open(data)
    meta = model_meta("pusht", tiny_model_config.name, tiny_model_config.settings, 32, 2, 5, 3,
                      ActionStats.from_store(store))
    torch.manual_seed(0)
    model_path = root / "runs" / "pusht" / "train" / "model.pt"
    save_checkpoint(model_path, {"model": meta.build().state_dict(), "meta": meta, "step": 0})
    return root, data, model_path


def test_pusht_state_names_give_the_four_quantities():
    quantities = {q.name: q for q in physical_quantities(PushTEnv.state_names)}
    assert list(quantities) == ["agent_xy", "block_xy", "block_angle", "agent_velocity"]
    assert quantities["agent_xy"].columns == (0, 1)
    assert quantities["agent_velocity"].columns == (5, 6)
    assert quantities["block_angle"].is_angle and quantities["block_angle"].dims == 2


def test_angle_targets_are_sin_cos_and_continuous_across_the_wrap():
    angle = next(q for q in physical_quantities(PushTEnv.state_names) if q.name == "block_angle")
    states = np.zeros((3, 7))
    states[:, 4] = [0.01, 2 * math.pi - 0.01, math.pi / 2]
    values = angle.values(states)
    np.testing.assert_allclose(values[2], [1.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(values[:, 0], np.sin(states[:, 4]))
    np.testing.assert_allclose(values[:, 1], np.cos(states[:, 4]))
    assert np.linalg.norm(values[0] - values[1]) < 0.03  # a raw angle would jump by 2π here


def test_other_state_names_follow_the_documented_rule():
    names = ["ee_x", "ee_y", "ee_z", "gripper", "cube_vx", "cube_vy", "yaw_angle"]
    quantities = [(q.name, q.columns, q.is_angle) for q in physical_quantities(names)]
    assert quantities == [
        ("ee_xyz", (0, 1, 2), False),
        ("gripper", (3,), False),
        ("cube_velocity", (4, 5), False),
        ("yaw_angle", (6,), True),
    ]


def test_ridge_recovers_a_linear_map_and_finds_nothing_in_noise():
    rng = np.random.default_rng(0)
    x_train, x_test = rng.standard_normal((500, 10)), rng.standard_normal((1000, 10))
    weight, bias = rng.standard_normal((10, 3)), rng.standard_normal(3)
    probe = RidgeProbe.fit(x_train, x_train @ weight + bias, alpha=1e-9)
    np.testing.assert_allclose(probe.weight, weight, atol=1e-8)
    np.testing.assert_allclose(probe.bias, bias, atol=1e-8)
    scores = regression_scores(x_test @ weight + bias, probe.predict(x_test))
    assert scores["r"] == pytest.approx(1.0) and scores["r2"] == pytest.approx(1.0)
    assert scores["mse"] == pytest.approx(0.0, abs=1e-12)

    noise_probe = RidgeProbe.fit(x_train, rng.standard_normal((500, 2)), alpha=1.0)
    noise_scores = regression_scores(rng.standard_normal((1000, 2)), noise_probe.predict(x_test))
    assert abs(noise_scores["r"]) < 0.1 and noise_scores["r2"] < 0.02


def test_ridge_penalty_shrinks_weights():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 5))
    y = x @ rng.standard_normal((5, 1))
    small, large = RidgeProbe.fit(x, y, 1e-6), RidgeProbe.fit(x, y, 1e3)
    assert np.linalg.norm(large.weight) < 0.2 * np.linalg.norm(small.weight)


def test_mlp_probe_learns_a_nonlinear_map_and_is_seeded():
    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (600, 2))
    y = np.stack([np.abs(x[:, 0]), x[:, 0] * x[:, 1]], axis=1)
    cfg = probe_config(mlp_hidden=64, mlp_epochs=60, mlp_lr=1e-2, seed=3)
    mlp = fit_mlp_probe(x[:400], y[:400], cfg)
    assert regression_scores(y[400:], mlp_predict(mlp, x[400:]))["r"] > 0.9
    again = fit_mlp_probe(x[:400], y[:400], cfg)
    np.testing.assert_array_equal(mlp_predict(mlp, x[400:]), mlp_predict(again, x[400:]))


def test_scores_come_from_the_held_out_split_only():
    """Train targets are an exact linear map of the embeddings; test targets are unrelated to theirs. A
    score computed on train frames would be perfect, a held-out one is at chance."""
    rng = np.random.default_rng(4)
    train_z, test_z = rng.standard_normal((400, 8)), rng.standard_normal((400, 8))
    weight = rng.standard_normal((8, 2))
    train_states = np.concatenate([train_z @ weight, np.zeros((400, 5))], axis=1)
    test_states = np.concatenate([rng.standard_normal((400, 2)), np.zeros((400, 5))], axis=1)
    quantities = [q for q in physical_quantities(PushTEnv.state_names) if q.name == "agent_xy"]
    table = probe_scores(
        train_z,
        train_states,
        test_z,
        test_states,
        quantities,
        probe_config(ridge_alpha=1e-6, mlp_hidden=16, mlp_epochs=3),
    )
    assert set(table["probe"]) == {"linear", "mlp"}
    assert (table["n_test"] == 400).all()
    assert table["r"].abs().max() < 0.2


def test_split_rows_subsample_evenly_within_the_split(tiny_run):
    _, data, _ = tiny_run
    store = EpisodeStore.open(data)
    test_episodes = set(store.episode_ids("test"))
    rows = split_rows(store, "train", 40)
    assert len(rows) == 40 and np.all(np.diff(rows) > 0)
    assert not test_episodes & set(store.steps["episode"].iloc[rows])
    assert set(store.steps["episode"].iloc[split_rows(store, "test", 10_000)]) == test_episodes


def test_random_init_control_is_seeded_and_leaves_the_global_rng_alone(tiny_run):
    _, _, model_path = tiny_run
    meta = read_checkpoint(model_path)["meta"]
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    a, b = random_init_model(meta, seed=5), random_init_model(meta, seed=5)
    assert torch.rand(1) == expected
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not a.training


def test_probe_stage_writes_scores_for_both_encoders(tiny_run, tmp_path):
    _, data, model_path = tiny_run
    metrics = probe_pipeline.probe_stage(
        "pusht",
        overrides=TINY_PROBE,
        data_dir=data,
        model_path=model_path,
        out_dir=tmp_path,
        track=False,
        device="cpu",
    )
    table = pd.read_parquet(tmp_path / "probes.parquet")
    assert len(table) == 2 * 2 * 4  # encoders × probes × quantities
    assert set(table["encoder"]) == {"trained", "random"}
    store = EpisodeStore.open(data)
    assert (table["n_test"] == len(split_rows(store, "test", 60))).all()
    assert (table["n_train"] == 60).all()
    for key in (
        "trained.linear.block_xy.r",
        "random.mlp.block_angle.r2",
        "trained.mlp.agent_velocity.mse",
        "trained.straightness",
        "random.straightness",
    ):
        assert key in metrics
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "probe.png").stat().st_size > 0


def test_probe_stage_appends_to_the_training_run(tiny_run, tmp_path, mlflow_store):
    import mlflow

    _, data, model_path = tiny_run
    configure(dataclasses.replace(load_params().tracking, experiment="probe-test"))
    with mlflow.start_run() as run:
        pass
    tracked_model = tmp_path / "train" / "model.pt"
    tracked_model.parent.mkdir()
    tracked_model.write_bytes(model_path.read_bytes())
    (tmp_path / "train" / "run.json").write_text(json.dumps({"run_id": run.info.run_id}))
    probe_pipeline.probe_stage(
        "pusht",
        overrides=[*TINY_PROBE, "tracking.experiment=probe-test"],
        data_dir=data,
        model_path=tracked_model,
        out_dir=tmp_path / "probe",
        device="cpu",
    )
    logged = mlflow.get_run(run.info.run_id)
    assert "probe/trained.linear.block_xy.r" in logged.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "probe")}
    assert artifacts == {"probe/probes.parquet", "probe/metrics.json", "probe/probe.png"}


def test_untracked_training_run_is_reported_before_any_work(tiny_run, tmp_path):
    _, data, model_path = tiny_run
    untracked = tmp_path / "train" / "model.pt"
    untracked.parent.mkdir()
    untracked.write_bytes(model_path.read_bytes())
    (tmp_path / "train" / "run.json").write_text(json.dumps({"run_id": None}))
    with pytest.raises(ValueError, match="not tracked"):
        probe_pipeline.probe_stage("pusht", overrides=TINY_PROBE, data_dir=data, model_path=untracked,
                                   out_dir=tmp_path / "probe")
    assert not (tmp_path / "probe").exists()


@pytest.mark.parametrize("missing", ["model", "data"])
def test_cli_reports_a_missing_checkpoint_or_dataset(tiny_run, tmp_path, monkeypatch, capsys, missing):
    _, data, model_path = tiny_run
    paths = {"model": model_path, "data": data, missing: tmp_path / "absent"}
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "probe",
            "--env",
            "pusht",
            "--model",
            str(paths["model"]),
            "--data",
            str(paths["data"]),
            "--no-track",
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        probe_pipeline.run_cli(probe_pipeline.main)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "absent" in err[0]


def test_probing_does_not_import_training():
    """Probing shares device and seeding helpers with training through lewm.runtime, not lewm.train: the
    module and its stage load no training code (checked in a fresh interpreter)."""
    probe = "import sys, lewm.probing, pipelines.probe; print('lewm.train' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_probe_targets_are_the_worlds():
    from lewm.envs import get_world

    world = get_world("pusht")
    assert world.probe_targets == physical_quantities(PushTEnv.state_names)
    assert [q.name for q in world.probe_targets] == ["agent_xy", "block_xy", "block_angle", "agent_velocity"]
