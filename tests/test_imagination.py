"""Open-loop imagination: the probe readout in physical units, angle errors wrapped, windows inside their
episodes, rollouts under the episode's own actions, and the imagine stage end to end on tiny Push-T data."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY_MODEL, pusht_data_config

from lewm.checkpoint import model_meta, save_checkpoint
from lewm.data.clips import ActionStats
from lewm.data.generate import generate_dataset
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world
from lewm.imagination import (
    LATENT,
    READINGS,
    imagine,
    quantity_error,
    rank_correlation,
    window_starts,
)
from lewm.probing import LinearReadout
from lewm.world import Quantity
from pipelines import imagine as imagine_pipeline

TINY_IMAGINE = [*TINY_MODEL, "probe.max_frames=60", "imagine.starts=12", "imagine.random_pairs=30",
                "plan.horizon=3"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model_config):
    """A tiny Push-T dataset and an untrained tiny model checkpoint."""
    root = tmp_path_factory.mktemp("imagine")
    cfg = pusht_data_config(episodes=6, max_steps=30, image_size=32, seed=3, val_fraction=0.2,
                            test_fraction=0.2)
    data = generate_dataset("pusht", cfg, root / "data", progress=False)
    store = EpisodeStore.open(data)
    meta = model_meta("pusht", tiny_model_config.name, tiny_model_config.settings, 32, 2, 5, 3,
                      ActionStats.from_store(store))
    torch.manual_seed(0)
    model_path = root / "train" / "model.pt"
    save_checkpoint(model_path, {"model": meta.build().state_dict(), "meta": meta, "step": 0})
    return data, model_path, meta


def test_readout_returns_physical_units():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 6))
    states = np.column_stack([100 + 40 * z[:, 0] - 7 * z[:, 3], 250 + 3 * z[:, 1]])
    readout = LinearReadout.fit(z, states, (Quantity("p_xy", (0, 1)),), alpha=1e-6)
    np.testing.assert_allclose(readout.read("p_xy", z[:5]), states[:5], atol=1e-3)


def test_angle_errors_wrap_and_respect_the_fold():
    angle = Quantity("a", (0,), is_angle=True)
    true = angle.values(np.array([[math.pi - 0.05]]))
    predicted = angle.values(np.array([[-math.pi + 0.05]]))
    assert quantity_error(angle, predicted, true)[0] == pytest.approx(0.1)
    folded = Quantity("yaw", (0,), is_angle=True, folds=4)
    # a quarter turn is no error for a 4-fold symmetric shape; 0.2 rad is 0.2 rad
    assert quantity_error(folded, folded.values(np.array([[math.pi / 2]])),
                          folded.values(np.array([[0.0]])))[0] == pytest.approx(0.0, abs=1e-9)
    assert quantity_error(folded, folded.values(np.array([[0.2]])),
                          folded.values(np.array([[0.0]])))[0] == pytest.approx(0.2)
    position = Quantity("p", (0, 1))
    assert quantity_error(position, np.array([[3.0, 4.0]]), np.zeros((1, 2)))[0] == pytest.approx(5.0)


def test_windows_stay_inside_test_episodes(tiny_run):
    data, _, _ = tiny_run
    store = EpisodeStore.open(data)
    starts = window_starts(store, 15, max_starts=10_000)
    for episode in store.episode_ids("test"):
        rows = store.episode_rows(episode)
        inside = starts[(starts >= rows.start) & (starts < rows.stop)]
        assert len(inside) == rows.stop - rows.start - 15 and inside.max() + 15 < rows.stop
    assert len(window_starts(store, 15, max_starts=7)) == 7
    with pytest.raises(ValueError, match="longer than 100 raw steps"):
        window_starts(store, 100, max_starts=10)


def test_rollout_follows_the_episodes_own_actions(tiny_run):
    data, _, meta = tiny_run
    store = EpisodeStore.open(data)
    torch.manual_seed(0)
    model = meta.build().eval()
    starts = window_starts(store, 2 * meta.frameskip, max_starts=5)
    imagined, encoded = imagine(model, meta, store, starts, horizon=2, device="cpu")
    assert imagined.shape == (5, 2, 16) and encoded.shape == (5, 3, 16)
    # the first imagined latent is the predictor's one-step prediction from the start frame and its block
    actions = meta.action_stats.normalize(store.actions).astype(np.float32)
    first_block = torch.from_numpy(actions[starts[:, None] + np.arange(meta.frameskip)].reshape(5, 1, -1))
    with torch.inference_mode():
        expected = model.predict(encoded[:, :1], first_block)[:, 0]
        pixels = torch.from_numpy(np.ascontiguousarray(store.frames[starts + 2 * meta.frameskip]))
        last_encoded = model.encode(pixels.permute(0, 3, 1, 2))
    torch.testing.assert_close(imagined[:, 0], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(encoded[:, 2], last_encoded, rtol=1e-4, atol=1e-5)


def test_context_frames_roll_out_from_the_observed_frames_before_the_start(tiny_run):
    data, _, meta = tiny_run
    store = EpisodeStore.open(data)
    torch.manual_seed(0)
    model = meta.build().eval()
    lead = meta.frameskip
    starts = window_starts(store, 2 * meta.frameskip, max_starts=5, lead=lead)
    for episode in store.episode_ids("test"):
        rows = store.episode_rows(episode)
        assert all(s - lead >= rows.start for s in starts if rows.start <= s < rows.stop)
    imagined, encoded = imagine(model, meta, store, starts, horizon=2, device="cpu", context_frames=2)
    assert imagined.shape == (5, 2, 16) and encoded.shape == (5, 3, 16)  # encodings from the start on
    actions = torch.from_numpy(meta.action_stats.normalize(store.actions).astype(np.float32))
    blocks = actions[starts[:, None] + np.arange(-lead, meta.frameskip)].reshape(5, 2, -1)
    with torch.inference_mode():
        pixels = torch.from_numpy(np.ascontiguousarray(store.frames[starts - lead]))
        earlier = model.encode(pixels.permute(0, 3, 1, 2))
        expected = model.predict(torch.stack([earlier, encoded[:, 0]], dim=1), blocks)[:, -1]
    torch.testing.assert_close(imagined[:, 0], expected, rtol=1e-4, atol=1e-5)
    single, _ = imagine(model, meta, store, starts, horizon=2, device="cpu")
    assert not torch.allclose(single[:, 0], imagined[:, 0])  # the earlier frame changed the prediction
    with pytest.raises(ValueError, match=r"context_frames must be in \[1, 3\]"):
        imagine(model, meta, store, starts, horizon=2, device="cpu", context_frames=4)


def test_rank_correlation_is_spearmans_and_nan_when_constant():
    x = np.arange(10.0)
    assert rank_correlation(x, x**3) == pytest.approx(1.0)
    assert rank_correlation(x, -x) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation(x, np.ones(10)))


def test_imagine_stage_writes_errors_per_step_quantity_and_reading(tiny_run, tmp_path, capsys, monkeypatch):
    data, model_path, _ = tiny_run
    metrics = imagine_pipeline.imagine_stage("pusht", overrides=TINY_IMAGINE, data_dir=data,
                                             model_path=model_path, out_dir=tmp_path, track=False,
                                             device="cpu")
    table = pd.read_parquet(tmp_path / "imagination.parquet")
    quantities = {"agent_xy", "block_xy", "block_angle", "agent_velocity"}
    assert set(table["quantity"]) == quantities | {LATENT}
    assert sorted(table["step"].unique()) == [1, 2, 3] and set(table["raw_steps"]) == {5, 10, 15}
    assert len(table) == 3 * (len(quantities) * len(READINGS) + 2)  # latent: imagined and copy only
    assert (table["n"] == 12).all() and (table["mean_error"] >= 0).all()
    # the ratio metric is the quotient of the two mean errors of the table
    assert metrics["block_xy.imagined_vs_copy.k2"] == pytest.approx(
        metrics["block_xy.imagined.k2"] / metrics["block_xy.copy.k2"])
    assert -1 <= metrics["distance_spearman.window"] <= 1
    assert -1 <= metrics["distance_spearman.random_pairs"] <= 1
    assert (tmp_path / "metrics.json").is_file() and (tmp_path / "imagine.png").stat().st_size > 0

    monkeypatch.setattr(sys, "argv", ["imagine", "--env", "pusht", "--data", str(data), "--model",
                                      str(model_path), "--out", str(tmp_path / "cli"), "--no-track",
                                      "--device", "cpu", *[a for o in TINY_IMAGINE for a in ("--set", o)]])
    imagine_pipeline.run_cli(imagine_pipeline.main)
    printed = capsys.readouterr().out
    assert "block_xy: k1 " in printed and "Spearman ρ (window)" in printed


def test_context_frames_bench_compares_contexts_on_the_same_starts(tiny_run, tmp_path):
    data, model_path, meta = tiny_run
    script = Path(__file__).resolve().parents[1] / "bench" / "context_frames.py"
    command = [sys.executable, str(script), "--env", "pusht", "--model", str(model_path), "--data", str(data),
               "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--contexts", "1", "2"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = pd.read_parquet(tmp_path / "out" / "context_frames.parquet")
    assert sorted(table["context"].unique()) == [1, 2]
    # the same starts: the no-motion copy and the encoded truth do not depend on the context
    for reading in ("copy", "encoded"):
        rows = [group[group["reading"] == reading].drop(columns="context").reset_index(drop=True)
                for _, group in table.groupby("context")]
        pd.testing.assert_frame_equal(*rows, rtol=1e-4)  # encoded in other batches: float rounding
    summary = json.loads((tmp_path / "out" / "context_frames.json").read_text())
    assert set(summary) == {"context1", "context2", "starts"}
    bad = subprocess.run([*command, "--contexts", "1", str(meta.history + 1)], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode != 0 and "context_frames must be in [1, 3]" in bad.stderr.strip().splitlines()[-1]


def test_cost_attribution_bench_relates_the_cost_to_every_probed_quantity(tiny_run, tmp_path):
    data, model_path, _ = tiny_run
    script = Path(__file__).resolve().parents[1] / "bench" / "cost_attribution.py"
    command = [sys.executable, str(script), "--env", "pusht", "--model", str(model_path), "--data", str(data),
               "--out", str(tmp_path / "out")]
    done = subprocess.run([*command, "--pairs", "200"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "out" / "cost_attribution.json").read_text())
    names = [quantity.name for quantity in get_world("pusht").probe_targets]
    assert summary["pairs"] == 200
    assert set(summary) == {"pairs", "all.r2"} | {f"{n}.{s}" for n in names for s in ("spearman", "r2")}
    assert all(-1 <= summary[f"{n}.spearman"] <= 1 and 0 <= summary[f"{n}.r2"] <= 1 for n in names)
    # least squares on every quantity together fits at least as well as on any one of them
    assert summary["all.r2"] >= max(summary[f"{n}.r2"] for n in names) - 1e-9
    bad = subprocess.run([*command, "--pairs", "3"], capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0 and "--pairs must be at least 10" in bad.stderr
