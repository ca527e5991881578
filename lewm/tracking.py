"""MLflow set-up and logging helpers.

Default tracking is a SQLite file inside the project (absolute path, so DVC experiment runs that execute
in a temporary copy of the repo still write to the same database). `MLFLOW_TRACKING_URI` overrides it,
which is how the scale-out stack in docker/ points runs at a real server.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from lewm.config import PROJECT_ROOT, TrackingConfig

try:
    import fcntl
except ImportError:  # POSIX only: no store lock on Windows
    fcntl = None

QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "GIT_PYTHON_REFRESH": "quiet",
}


def project_db_root() -> Path:
    """Directory holding the default SQLite database: the main checkout, also inside `dvc exp run` copies."""
    override = os.environ.get("LEWM_PROJECT_ROOT")
    return Path(override).resolve() if override else PROJECT_ROOT


def tracking_uri(cfg: TrackingConfig | None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else the params value (`cfg`, if given), else the project's SQLite
    file."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or (cfg.tracking_uri if cfg is not None else "")
        or f"sqlite:///{project_db_root() / 'mlflow.db'}"
    )


_PREPARED: set[tuple[str, str]] = set()  # (tracking URI, experiment) this process has set up


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///<path>` URI (None for other stores and in-memory SQLite)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextlib.contextmanager
def store_lock(uri: str) -> Iterator[None]:
    """Hold an exclusive lock on the SQLite store of `uri` (a `<db>.lock` file beside it; a no-op for other
    stores and where `fcntl` is missing). MLflow creates and migrates a fresh database's schema without
    one, so several processes opening a new store at once fail (measured: 3 of 4 processes with
    'duplicate column name' or alembic errors); the experiment's get-or-create races the same way."""
    path = sqlite_path(uri)
    if path is None or fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def configure(cfg: TrackingConfig) -> str:
    """Point MLflow at the tracking store and experiment; return the tracking URI. The first call per
    process creates the store's tables and the experiment under `store_lock`, so stages and trial workers
    that start together on a fresh store neither race nor fail."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import mlflow

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    if (uri, cfg.experiment) not in _PREPARED:
        with store_lock(uri):
            create_experiment(uri, cfg.experiment)
        _PREPARED.add((uri, cfg.experiment))
    mlflow.set_experiment(cfg.experiment)
    return uri


def create_experiment(uri: str, name: str) -> None:
    """Create experiment `name` unless it exists (artifacts under the project's mlartifacts/ for a SQLite
    store); another process creating it at the same moment is not an error."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if mlflow.get_experiment_by_name(name) is not None:  # also creates a fresh store's tables
        return
    location = None
    if uri.startswith("sqlite:") and not os.environ.get("MLFLOW_ARTIFACT_ROOT"):
        location = (project_db_root() / "mlartifacts").as_uri()
    try:
        mlflow.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested params into `a.b.c` keys, the form MLflow params take."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def log_params(params: Mapping[str, Any]) -> None:
    """Log nested params in batches (one SQLite round trip per 100 params, not one per value)."""
    import mlflow

    flat = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flatten(params).items()}
    items = list(flat.items())
    for i in range(0, len(items), 100):
        mlflow.log_params(dict(items[i : i + 100]))


def log_table(df: Any, artifact_file: str) -> None:
    """Log a pandas DataFrame as a Parquet artifact at `artifact_file` (e.g. `plan/episodes.parquet`)."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        df.to_parquet(path, index=False)
        parent = str(Path(artifact_file).parent)
        mlflow.log_artifact(str(path), artifact_path=None if parent == "." else parent)


def create_run(cfg: TrackingConfig, run_name: str, tags: Mapping[str, str], params: Mapping[str, Any]) -> str:
    """A new run in the experiment, created but not made active (trials may log from other threads or
    processes); returns its id."""
    configure(cfg)
    import mlflow
    from mlflow.entities import Param

    experiment = mlflow.get_experiment_by_name(cfg.experiment)
    client = mlflow.MlflowClient()
    run = client.create_run(experiment.experiment_id, run_name=run_name, tags=dict(tags))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in flatten(params).items()])
    return run.info.run_id


def log_to_run(run_id: str, metrics: Mapping[str, float], artifacts: Iterable[Path] = (),
               artifact_path: str | None = None, step: int = 0) -> None:
    """Log `metrics` (non-finite values left out) and `artifacts` to the existing run `run_id` without
    making it active, so any thread or process may call it."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(key, float(value), now, step) for key, value in metrics.items()
                                      if isinstance(value, int | float) and math.isfinite(value)])
    for path in artifacts:
        client.log_artifact(run_id, str(path), artifact_path=artifact_path)


def append_to_run(
    cfg: TrackingConfig, run_id: str, prefix: str, metrics: Mapping[str, float], artifacts: Iterable[Path],
    step: int | None = None,
) -> None:
    """Append `metrics` (as `<prefix>/<key>`) and `artifacts` (under `<prefix>/`) to run `run_id`, e.g. a
    stage's results to the run that trained the model."""
    configure(cfg)
    log_to_run(run_id, {f"{prefix}/{key}": value for key, value in metrics.items()}, artifacts, prefix,
               step or 0)


def set_run_tag(run_id: str, key: str, value: str) -> None:
    """Tag the existing run `run_id`."""
    import mlflow

    mlflow.MlflowClient().set_tag(run_id, key, value)


def end_run(run_id: str, status: str) -> None:
    """Mark the run created by `create_run` as ended with `status` (FINISHED or FAILED)."""
    import mlflow

    mlflow.MlflowClient().set_terminated(run_id, status)


def read_run_id(run_file: str | Path) -> str:
    """The MLflow run id that the training stage recorded in `run.json`."""
    path = Path(run_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no training run recorded (run the train stage first)")
    return json.loads(path.read_text())["run_id"]


class RunTracker:
    """One MLflow run seen by the training loop: start or resume it, log params and metrics in batches,
    and at the end log the checkpoint, curves and the model (pickle format, fast to log and to load)."""

    def __init__(
        self, cfg: TrackingConfig, run_name: str, tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None, log_checkpoint: bool = True,
    ) -> None:
        """`parent_run_id` makes the run a child run (passed explicitly: MLflow's active run is per
        thread). `log_checkpoint=False` skips the full checkpoint artifact (weights + optimizer state),
        for short runs such as λ-search trials whose logged model is all that is needed."""
        self.cfg, self.run_name, self.tags = cfg, run_name, dict(tags or {})
        self.parent_run_id, self.log_checkpoint = parent_run_id, log_checkpoint
        self.run_id: str | None = None

    def start(self, run_id: str | None = None) -> str:
        """Start a new run, or reopen `run_id` when resuming an interrupted training."""
        import mlflow

        configure(self.cfg)
        run = mlflow.start_run(run_id=run_id, run_name=None if run_id else self.run_name, tags=self.tags,
                               parent_run_id=self.parent_run_id)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        import mlflow

        existing = mlflow.get_run(self.run_id).data.params
        flat = {k: v for k, v in flatten(params).items() if k not in existing}
        log_params(flat)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import mlflow

        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_training_outputs(self, out_dir: Path, model: Any) -> None:
        """Final checkpoint, curves and history tables, and the model itself (registrable)."""
        import mlflow
        import mlflow.pytorch
        import pandas as pd
        import torch

        out_dir = Path(out_dir)
        if self.log_checkpoint:
            mlflow.log_artifact(str(out_dir / "model.pt"), artifact_path="checkpoints")
        mlflow.log_artifact(str(out_dir / "curves.png"), artifact_path="plots")
        for name in ("train_history", "val_history"):
            log_table(pd.read_csv(out_dir / f"{name}.csv"), f"tables/{name}.parquet")
        mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "timm", "lewm"],
        )

    def finish(self) -> None:
        import mlflow

        mlflow.end_run()

