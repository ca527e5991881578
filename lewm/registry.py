"""The MLflow model registry: one registered model per world model and environment
(`tracking.registered_model`, e.g. `lewm-pusht`, `pldm-pusht`), a version per trained model, and the alias
`champion` on the best one (set by the λ bisection). Loading `models:/<name>@champion` gives the model
without knowing any run id:

    from lewm.registry import load_champion
    model = load_champion("lewm-pusht")

Training runs log the model under the artifact name `model` (pickle format, see lewm.tracking), which is
what `register` points at.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lewm.config import TrackingConfig
from lewm.tracking import tracking_uri

CHAMPION = "champion"
MODEL_ARTIFACT = "model"


def model_name(cfg: TrackingConfig, env: str, model: str) -> str:
    """The registered model name of world model `model` on `env`: `tracking.registered_model` with `{env}`
    and `{model}` filled in."""
    return cfg.registered_model.format(env=env, model=model)


def champion_uri(name: str) -> str:
    return f"models:/{name}@{CHAMPION}"


def logged_model_uri(run_id: str) -> str:
    """The `models:/<model id>` URI of the model that run `run_id` logged as `model`."""
    import mlflow

    run = mlflow.get_run(run_id)
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id], output_format="list",
        filter_string=f"source_run_id = '{run_id}' AND name = '{MODEL_ARTIFACT}'",
    )
    if not models:
        raise ValueError(f"MLflow run {run_id} logged no model named {MODEL_ARTIFACT!r}")
    return models[0].model_uri


def register(run_id: str, name: str, tags: Mapping[str, Any] | None = None) -> str:
    """Register the model logged by run `run_id` as a version of `name`; return the version.

    Idempotent per run: a run registered before keeps its version (a re-run of the λ search or a retried
    registration does not add duplicates)."""
    import mlflow

    client = mlflow.MlflowClient()
    existing = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    if existing:
        version = str(min(int(v.version) for v in existing))
    else:
        version = str(mlflow.register_model(logged_model_uri(run_id), name).version)
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, str(value))
    return version


def set_champion(name: str, version: str) -> None:
    """Point the `champion` alias of `name` at `version` (moving it from the previous champion)."""
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, str(version))


def use_store(cfg: TrackingConfig | None = None) -> str:
    """Point MLflow at the project's tracking store (`MLFLOW_TRACKING_URI`, else `cfg.tracking_uri`, else
    the project's mlflow.db), so look-ups work from any directory; returns the URI."""
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    return uri


def champion_version(name: str, cfg: TrackingConfig | None = None) -> Any:
    """The `ModelVersion` that holds the `champion` alias of `name` (MlflowException if none does)."""
    import mlflow

    use_store(cfg)
    return mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)


def load_champion(name: str, cfg: TrackingConfig | None = None) -> Any:
    """The champion model of `name`: the world model (e.g. a `LeWM`) in eval mode, on the CPU."""
    import mlflow.pytorch

    use_store(cfg)
    return mlflow.pytorch.load_model(champion_uri(name), map_location="cpu").eval()
