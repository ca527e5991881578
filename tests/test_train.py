"""Training loop: schedule, deterministic batch order, exact resume after an interruption, MLflow logging."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from lewm.checkpoint import load_model, read_checkpoint
from lewm.config import DataConfig, load_params
from lewm.data.generate import generate_dataset
from lewm.train import StepBatchSampler, final_metrics, learning_rate, train


@pytest.fixture
def tiny(tiny_model):
    """The shared tiny model, trained for 6 steps with frequent logs, validation and checkpoints."""
    return [*tiny_model, "train.max_steps=6", "train.log_every=2", "train.val_every=3",
            "train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    cfg = DataConfig(episodes=10, max_steps=40, image_size=32, seed=1, val_fraction=0.2, test_fraction=0.1)
    return generate_dataset("pusht", cfg, tmp_path_factory.mktemp("data") / "pusht", progress=False)


def test_learning_rate_warms_up_then_decays_to_zero():
    total, base = 1000, 1e-3
    assert learning_rate(0, total, base, 0.01) == pytest.approx(base / 10)
    assert learning_rate(9, total, base, 0.01) == pytest.approx(base)
    assert learning_rate(10, total, base, 0.01) == pytest.approx(base)
    mid = 10 + (total - 10) // 2
    assert learning_rate(mid, total, base, 0.01) == pytest.approx(base / 2, rel=1e-2)
    assert learning_rate(total, total, base, 0.01) == pytest.approx(0.0, abs=1e-12)
    values = [learning_rate(s, total, base, 0.01) for s in range(10, total)]
    assert all(a >= b for a, b in itertools.pairwise(values))


def test_batch_order_is_a_function_of_the_step():
    full = list(StepBatchSampler(50, 8, seed=3, start_step=0, total_steps=20))
    resumed = list(StepBatchSampler(50, 8, seed=3, start_step=7, total_steps=20))
    assert resumed == full[7:]
    # one epoch (6 steps of 8 from 50 items) never repeats an item
    epoch = [i for batch in full[:6] for i in batch]
    assert len(epoch) == len(set(epoch)) == 48
    assert full[:6] != full[6:12]  # a new permutation every epoch


def test_ranks_partition_the_global_batch():
    whole = list(StepBatchSampler(64, 8, seed=0, start_step=0, total_steps=5))
    ranks = [list(StepBatchSampler(64, 8, seed=0, start_step=0, total_steps=5, rank=r, world_size=2))
             for r in range(2)]
    for step, batch in enumerate(whole):
        assert ranks[0][step] + ranks[1][step] == batch


def test_final_metrics_keep_the_latest_value_of_every_validation_metric():
    """A planning check logged after the validation of the same step must not hide the validation losses."""
    history = {
        "train": [{"step": 10, "train/pred_loss": 0.5}],
        "val": [{"step": 5, "val/pred_loss": 0.9}, {"step": 10, "val/pred_loss": 0.4},
                {"step": 10, "val/plan_reference.success_rate": 0.2}],
    }
    metrics = final_metrics(history, seconds=2.0, step=10, start_step=0, batch_size=4)
    assert metrics["val_pred_loss"] == 0.4
    assert metrics["val_plan_reference.success_rate"] == 0.2
    assert metrics["train_pred_loss"] == 0.5 and metrics["clips_per_s"] == 20.0


def test_interrupted_run_resumes_to_the_same_weights(tiny, tiny_data, tmp_path):
    params = load_params(overrides=tiny)
    straight = train(params, "pusht", tiny_data, tmp_path / "straight", progress=False)

    def interrupt(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(params, "pusht", tiny_data, tmp_path / "resumed", on_step=interrupt, progress=False)
    assert read_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")["step"] == 2
    resumed = train(params, "pusht", tiny_data, tmp_path / "resumed", progress=False)

    assert resumed.step == straight.step == 6
    a, _ = load_model(straight.checkpoint)
    b, _ = load_model(resumed.checkpoint)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"{name} differs after resume"
    assert resumed.metrics["val_pred_loss"] == straight.metrics["val_pred_loss"]


def test_checkpoint_of_other_params_is_not_resumed(tiny, tiny_data, tmp_path):
    params = load_params(overrides=tiny)
    train(params, "pusht", tiny_data, tmp_path / "run", progress=False)
    other = load_params(overrides=[*tiny, "train.lambda=0.5"])
    outcome = train(other, "pusht", tiny_data, tmp_path / "run", progress=False)
    assert outcome.step == 6
    _, meta = load_model(outcome.checkpoint)
    history = read_checkpoint(outcome.checkpoint)["history"]["train"]
    assert [row["step"] for row in history] == [2, 4, 6]  # fresh history, not appended to the old run
    assert meta["step"] == 6


def test_training_outputs_and_diagnostics(tiny, tiny_data, tmp_path):
    params = load_params(overrides=tiny)
    outcome = train(params, "pusht", tiny_data, tmp_path, progress=False)
    for name in ("model.pt", "metrics.json", "train_history.csv", "val_history.csv", "curves.png"):
        assert (tmp_path / name).is_file(), name
    m = outcome.metrics
    assert m["steps"] == 6 and m["clips_per_s"] > 0
    assert 0 < m["val_effective_rank"] <= 16
    assert -1 <= m["val_straightness"] <= 1
    assert all(math.isfinite(v) for v in m.values())
    _, meta = load_model(outcome.checkpoint)
    assert meta["image_size"] == 32 and meta["action_dim"] == 2 and meta["frameskip"] == 5


def test_too_small_dataset_is_a_clear_error(tiny, tiny_data, tmp_path):
    params = load_params(overrides=[*tiny, "train.batch_size=4096"])
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(params, "pusht", tiny_data, tmp_path, progress=False)


def test_mlflow_run_holds_params_curves_and_model(tiny, tiny_data, tmp_path, monkeypatch):
    import mlflow

    from lewm.tracking import RunTracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(overrides=tiny)
    tracker = RunTracker(params.tracking, run_name="test")
    outcome = train(params, "pusht", tiny_data, tmp_path / "run", tracker=tracker, progress=False)

    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.data.params["train.lambda"] == "0.09"
    assert run.data.params["derived.total_steps"] == "6"
    steps = [m.step for m in client.get_metric_history(outcome.run_id, "train/pred_loss")]
    assert steps == [2, 4, 6]
    for key in ("val/effective_rank", "val/straightness", "clips_per_s", "lr", "final/val_pred_loss"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id)}
    assert {"checkpoints", "plots", "tables"} <= artifacts
    logged = mlflow.pytorch.load_model(f"runs:/{outcome.run_id}/model")
    pixels = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert logged.eval().encode(pixels).shape == (2, 16)


def test_planning_checks_during_training_keep_the_best_checkpoint(tiny, tiny_data, tmp_path):
    from lewm.data.storage import EpisodeStore
    from lewm.evaluation import build_manifest, write_manifest

    manifest = tmp_path / "val.parquet"
    pairs = build_manifest(EpisodeStore.open(tiny_data), split="val", n=2, goal_offset=5, seed=0)
    write_manifest(pairs, manifest)
    params = load_params(overrides=[
        *tiny, "train.plan_eval_every=3", "train.plan_eval_episodes=2", "plan.samples=16", "plan.elites=4",
        "plan.iterations=2", "eval.budget=10",
    ])
    outcome = train(params, "pusht", tiny_data, tmp_path / "run", progress=False, plan_manifest=manifest)
    checks = [row for row in read_checkpoint(outcome.checkpoint)["history"]["val"]
              if "val/plan_reference.success_rate" in row]
    assert [row["step"] for row in checks] == [3, 6]
    rates = [row["val/plan_block.success_rate"] for row in checks]
    assert all(0.0 <= rate <= 1.0 or math.isnan(rate) for rate in rates)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert best.is_file() and read_checkpoint(best)["step"] in (3, 6)
    # the checks share the validation rows of their steps, and the summary keeps the losses beside them
    assert [row["step"] for row in read_checkpoint(outcome.checkpoint)["history"]["val"]] == [3, 6]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("val_pred_loss", "val_effective_rank", "val_plan_reference.success_rate"):
        assert key in outcome.metrics and key in written, key
    with pytest.raises(ValueError, match="validation manifest"):
        train(params, "pusht", tiny_data, tmp_path / "other", progress=False)
