"""Training loop: schedule, deterministic batch order, exact resume after an interruption, MLflow logging."""

from __future__ import annotations

import importlib
import itertools
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from lewm.checkpoint import ModelMeta, load_model, model_meta, read_checkpoint, save_checkpoint
from lewm.config import PROJECT_ROOT, ConfigError, load_params, section_mapping
from lewm.data.clips import ActionStats
from lewm.train import StepBatchSampler, final_metrics, learning_rate, train


@pytest.fixture
def tiny(tiny_model: list[str]) -> list[str]:
    """The shared tiny model, trained for 6 steps with frequent logs, validation and checkpoints."""
    return [*tiny_model, "train.max_steps=6", "train.log_every=2", "train.val_every=3",
            "train.checkpoint_every=2"]


@pytest.fixture
def tiny_data(tiny_pusht: Path) -> Path:
    """10 Push-T episodes of 40 steps at 32 px (2 val, 1 test), seed 1: the session's `tiny_pusht`."""
    return tiny_pusht


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
    a = load_model(straight.checkpoint).model
    b = load_model(resumed.checkpoint).model
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), f"{name} differs after resume"
    assert resumed.metrics["val_pred_loss"] == straight.metrics["val_pred_loss"]


def test_checkpoint_of_other_params_is_not_resumed(tiny, tiny_data, tmp_path):
    params = load_params(overrides=tiny)
    train(params, "pusht", tiny_data, tmp_path / "run", progress=False)
    other = load_params(overrides=[*tiny, "model.lewm.lambda=0.5"])
    outcome = train(other, "pusht", tiny_data, tmp_path / "run", progress=False)
    assert outcome.step == 6
    loaded = load_model(outcome.checkpoint)
    history = read_checkpoint(outcome.checkpoint)["history"]["train"]
    assert [row["step"] for row in history] == [2, 4, 6]  # fresh history, not appended to the old run
    assert loaded.step == 6
    assert loaded.meta.settings["lambda"] == 0.5


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
    meta = load_model(outcome.checkpoint).meta
    assert meta.image_size == 32 and meta.action_dim == 2 and meta.frameskip == 5


def test_too_small_dataset_is_a_clear_error(tiny, tiny_data, tmp_path):
    params = load_params(overrides=[*tiny, "train.batch_size=4096"])
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(params, "pusht", tiny_data, tmp_path, progress=False)


@pytest.mark.parametrize(("override", "message"), [
    ("train.val_every=0", r"train\.val_every: must be ≥ 1, got 0"),
    ("train.log_every=-5", r"train\.log_every: must be ≥ 1, got -5"),
    ("train.lr=0", r"train\.lr: must be > 0, got 0"),
    ("train.max_steps=-1", r"train\.max_steps: must be ≥ 0, got -1"),
])
def test_train_values_that_cannot_run_are_refused_by_name(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(overrides=[override])


def test_training_with_neither_steps_nor_epochs_is_refused():
    with pytest.raises(ConfigError, match="both 0, nothing would train"):
        load_params(overrides=["train.max_steps=0", "train.epochs=0"])


def test_mlflow_run_holds_params_curves_and_model(tiny, tiny_data, tmp_path, monkeypatch):
    import mlflow

    from lewm.tracking import RunTracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = load_params(overrides=tiny)
    tracker = RunTracker(params.tracking, run_name="test")
    outcome = train(params, "pusht", tiny_data, tmp_path / "run", tracker=tracker, progress=False)

    client = mlflow.MlflowClient()
    run = client.get_run(outcome.run_id)
    assert run.data.params["model.lewm.lambda"] == "0.09"
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
    from lewm.evaluation import PlanningCheck, build_manifest, read_manifest, write_manifest

    manifest = tmp_path / "val.parquet"
    pairs = build_manifest(EpisodeStore.open(tiny_data), split="val", n=2, goal_offset=5, seed=0)
    write_manifest(pairs, manifest)
    params = load_params(overrides=[
        *tiny, "train.plan_eval_every=3", "train.plan_eval_episodes=2", "plan.cem.samples=16",
        "plan.cem.elites=4", "plan.cem.iterations=2", "eval.budget=10",
    ])
    selector = PlanningCheck(params, EpisodeStore.open(tiny_data), read_manifest(manifest))
    outcome = train(params, "pusht", tiny_data, tmp_path / "run", progress=False, selector=selector)
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


# ------------------------------------------------------------------------- seams of the redesigned library


def test_training_imports_no_planning_or_evaluation_code():
    """Training selects checkpoints through a `CheckpointSelector` it is handed, so importing it loads no
    planning, solver or evaluation module (checked in a fresh interpreter)."""
    probe = textwrap.dedent("""
        import sys
        import lewm.train
        print(sorted(m for m in sys.modules if m.split(".")[:2] in (
            ["lewm", "evaluation"], ["lewm", "planning"], ["lewm", "solvers"], ["lewm", "lambda_trials"])))
    """)
    result = subprocess.run([sys.executable, "-c", probe], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def test_plan_checks_without_a_selector_are_refused_before_any_work(tiny, tiny_data, tmp_path):
    params = load_params(overrides=[*tiny, "train.plan_eval_every=3"])
    with pytest.raises(ValueError, match=r"train\.plan_eval_every > 0 needs a checkpoint selector"):
        train(params, "pusht", tiny_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_checkpoint_records_the_model_name_and_settings(tiny, tiny_data, tmp_path):
    params = load_params(overrides=[*tiny, "train.max_steps=2"])
    outcome = train(params, "pusht", tiny_data, tmp_path, progress=False)
    stored = torch.load(outcome.checkpoint, weights_only=False)  # the file itself, as plain data
    assert stored["format_version"] == 3
    assert stored["meta"]["model"] == "lewm" == params.model.name
    assert stored["meta"]["settings"] == section_mapping(params.model.settings)
    assert stored["meta"]["env"] == "pusht" and stored["step"] == 2
    loaded = load_model(outcome.checkpoint)
    assert isinstance(loaded.meta, ModelMeta) and loaded.meta.model == "lewm" and loaded.step == 2


TOY_MODEL = '''
"""A stand-in world model for checkpoint tests."""
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Config:
    width: int


class Model(nn.Module):
    def __init__(self, cfg, image_size, action_dim, frameskip, history):
        super().__init__()
        self.cfg, self.image_size, self.action_dim = cfg, image_size, action_dim
        self.frameskip, self.history = frameskip, history
        self.head = nn.Linear(3, cfg.width)
'''


@pytest.fixture
def toy_model_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A second world model `toy` (a module on lewm.models' search path for this test only)."""
    import lewm.models

    folder = tmp_path / "extra_models"
    folder.mkdir()
    (folder / "toy.py").write_text(TOY_MODEL)
    monkeypatch.setattr(lewm.models, "__path__", [*lewm.models.__path__, str(folder)])
    yield "toy"
    sys.modules.pop("lewm.models.toy", None)


def test_load_model_rebuilds_the_recorded_model_whatever_params_say(toy_model_part, tiny_model_config,
                                                                    tmp_path):
    """The class and the architecture come from the checkpoint's `model` and `settings`, not params.yaml
    (which names `lewm`, at another width)."""
    from lewm.models import lewm as lewm_model

    current = load_params().model
    assert current.name == "lewm" and current.settings.embed_dim == 192
    stats = ActionStats.from_dict({"mean": [0.0, 0.0], "std": [1.0, 1.0]})

    toy_module = importlib.import_module(f"lewm.models.{toy_model_part}")
    toy = model_meta("pusht", toy_model_part, toy_module.Config(width=5), 32, 2, 5, 3, stats)
    torch.manual_seed(0)
    toy_weights = toy.build().state_dict()
    save_checkpoint(tmp_path / "toy.pt", {"model": toy_weights, "meta": toy, "step": 4})
    loaded = load_model(tmp_path / "toy.pt")
    assert type(loaded.model).__module__ == "lewm.models.toy" and loaded.model.cfg.width == 5
    assert torch.equal(loaded.model.head.weight, toy_weights["head.weight"]) and loaded.step == 4

    tiny = model_meta("pusht", "lewm", tiny_model_config.settings, 32, 2, 5, 3, stats)
    save_checkpoint(tmp_path / "tiny.pt", {"model": tiny.build().state_dict(), "meta": tiny, "step": 0})
    model = load_model(tmp_path / "tiny.pt").model
    assert isinstance(model, lewm_model.Model) and not model.training
    assert model.encode(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 16)


def old_format_checkpoint(path: Path) -> Path:
    """A checkpoint as the previous layout wrote it: format_version 1, meta a plain dict of LeWM's config."""
    torch.save({"format_version": 1, "model": {}, "optimizer": {}, "step": 6, "fingerprint": "0123abcd",
                "meta": {"env": "pusht", "model_cfg": {"embed_dim": 16}, "image_size": 32, "action_dim": 2,
                         "frameskip": 5, "history": 3, "step": 6}}, path)
    return path


def test_an_old_format_checkpoint_is_refused_with_a_clear_message(tmp_path):
    path = old_format_checkpoint(tmp_path / "model.pt")
    expected = r"format_version 3 expected, found 1\); retrain with `dvc repro`"
    with pytest.raises(ValueError, match=expected):
        load_model(path)
    with pytest.raises(ValueError, match=expected):
        read_checkpoint(path)
    torch.save({"model": {}}, tmp_path / "unversioned.pt")
    with pytest.raises(ValueError, match="found None"):
        load_model(tmp_path / "unversioned.pt")


def test_an_old_format_last_checkpoint_is_ignored_not_resumed(tiny, tiny_data, tmp_path):
    """checkpoints/ persists across `dvc repro`: a last.pt of the previous format belongs to another run and
    is ignored (training starts afresh), as a checkpoint of other params is, instead of stopping the stage."""
    (tmp_path / "checkpoints").mkdir()
    old_format_checkpoint(tmp_path / "checkpoints" / "last.pt")
    params = load_params(overrides=[*tiny, "train.max_steps=2"])
    outcome = train(params, "pusht", tiny_data, tmp_path, progress=False)
    assert outcome.step == 2
    assert [row["step"] for row in read_checkpoint(outcome.checkpoint)["history"]["train"]] == [2]
    assert read_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 2  # replaced by this run's
