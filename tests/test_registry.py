"""Model registry: versions per run (idempotent), the champion alias, loading `models:/<name>@champion`,
and the training stage registering its model."""

from __future__ import annotations

import dataclasses
import json

import mlflow
import mlflow.pytorch
import pytest
import torch

from lewm.config import load_params
from lewm.registry import (
    champion_uri,
    champion_version,
    load_champion,
    model_name,
    register,
    set_champion,
)


def log_linear(weight: float) -> str:
    """A run that logs a 1×1 linear model with the given weight as `model`; returns the run id."""
    module = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.constant_(module.weight, weight)
    with mlflow.start_run() as run:
        mlflow.pytorch.log_model(module, name="model", serialization_format="pickle",
                                 pip_requirements=["torch"])
    return run.info.run_id


@pytest.fixture
def experiment(mlflow_store, request):
    mlflow.set_tracking_uri(mlflow_store)
    mlflow.set_experiment(f"registry-{request.node.name}")


def test_model_name_follows_the_tracking_template():
    tracking = load_params().tracking
    assert model_name(tracking, "pusht", "lewm") == "lewm-pusht"  # the default template: one per model
    assert model_name(tracking, "cube", "pldm") == "pldm-cube"
    fixed = dataclasses.replace(tracking, registered_model="world-model-{env}")
    assert model_name(fixed, "pusht", "pldm") == "world-model-pusht"
    assert champion_uri("lewm-pusht") == "models:/lewm-pusht@champion"


def test_versions_alias_and_loading_the_champion(experiment):
    name = "registry-test"
    first, second = log_linear(1.0), log_linear(2.0)
    v1 = register(first, name, tags={"lambda": 0.09})
    v2 = register(second, name)
    assert (v1, v2) == ("1", "2")
    assert register(first, name) == "1"  # a run keeps its version: no duplicates on re-runs or retries
    assert mlflow.MlflowClient().get_model_version(name, v1).tags["lambda"] == "0.09"

    set_champion(name, v2)
    assert str(champion_version(name).version) == "2"
    assert load_champion(name).weight.item() == 2.0
    set_champion(name, v1)  # the alias moves
    assert load_champion(name).weight.item() == 1.0
    assert mlflow.pytorch.load_model(champion_uri(name)).weight.item() == 1.0


def test_registering_a_run_without_a_model_is_a_clear_error(experiment):
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    with pytest.raises(ValueError, match="logged no model"):
        register(run.info.run_id, "registry-empty")


def test_training_stage_registers_its_model(tiny_pusht, tiny_model, mlflow_store, tmp_path):
    from pipelines.train import train_stage

    overrides = [*tiny_model, "train.max_steps=2", "train.val_every=2", "train.plan_eval_every=0",
                 "tracking.experiment=registry-train", "tracking.registered_model=lewm-train-{env}"]
    outcome = train_stage("pusht", overrides=overrides, data_dir=tiny_pusht, out_dir=tmp_path)
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["registered_model"] == "lewm-train-pusht"
    version = mlflow.MlflowClient().get_model_version("lewm-train-pusht", record["model_version"])
    assert version.run_id == outcome.run_id
    assert version.tags["stage"] == "train"
    assert version.tags["model"] == "lewm" and version.tags["lambda"] == "0.09"  # model.lewm.lambda
