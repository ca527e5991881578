"""Stage `train@<env>`: train LeWM on the environment's dataset, tracked in MLflow.

    python -m pipelines.train --env pusht [--set train.lambda=0.05] [--no-resume]

Writes runs/<env>/train/{model.pt, run.json, metrics.json, *_history.csv, curves.png, checkpoints/}.
Resumes from checkpoints/last.pt after an interruption (same params and data only).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from lewm.config import Params, load_params
from lewm.io import write_json
from lewm.registry import model_name, register
from lewm.tracking import RunTracker, tracking_uri
from lewm.train import TrainOutcome, train
from pipelines._cli import base_parser, run_cli


def train_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    resume: bool = True,
    track: bool = True,
    register_model: bool = True,
) -> TrainOutcome:
    """Train on data/<env> into runs/<env>/train and record the MLflow run id in run.json. A tracked run's
    model becomes a version of the registered model `tracking.registered_model` (unless `register_model`
    is False: the Prefect flow registers in its own, retried, task)."""
    params = load_params(params_path, overrides)
    data_dir = Path(data_dir or f"data/{env}")
    out_dir = Path(out_dir or f"runs/{env}/train")
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = None
    if track:
        tags = {"env": env, "stage": "train", "profile": params.profile}
        tracker = RunTracker(params.tracking, run_name=f"train-{env}", tags=tags)
    plan_manifest = Path(f"runs/{env}/manifests/val.parquet") if params.train.plan_eval_every > 0 else None
    outcome = train(
        params, env, data_dir, out_dir, resume=resume, tracker=tracker, plan_manifest=plan_manifest
    )
    registered = {}
    if track and register_model:
        registered = {"registered_model": model_name(params.tracking, env),
                      "model_version": register_training_run(params, env, outcome.run_id)}
    write_json(out_dir / "run.json", {
        "run_id": outcome.run_id, "tracking_uri": tracking_uri(params.tracking) if track else None,
        "experiment": params.tracking.experiment, "env": env, **registered,
    })
    return outcome


def register_training_run(params: Params, env: str, run_id: str) -> str:
    """Register the run's logged model as a version of `tracking.registered_model`; return the version."""
    return register(run_id, model_name(params.tracking, env),
                    tags={"stage": "train", "lambda": params.train.lambda_, "profile": params.profile})


@task(name="train-model")
def train_task(env: str, params_path: str | None, overrides: list[str] | None) -> TrainOutcome:
    return train_stage(env, params_path, overrides, register_model=False)


@task(name="register-model", retries=2, retry_delay_seconds=5)
def register_task(env: str, params_path: str | None, overrides: list[str] | None, run_id: str) -> str:
    """Registry I/O, retried (training itself never is)."""
    return register_training_run(load_params(params_path, overrides), env, run_id)


@flow(name="train")
def train_flow(
    env: str = "pusht", params_path: str | None = None, overrides: list[str] | None = None
) -> dict[str, float | str]:
    """Prefect flow around the training stage (same function the CLI calls), then registration."""
    outcome = train_task(env, params_path, overrides)
    version = register_task(env, params_path, overrides, outcome.run_id)
    return {**outcome.metrics, "model_version": version}


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<env>)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<env>/train)")
    parser.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    args = parser.parse_args()
    outcome = train_stage(args.env, args.params, args.overrides, args.data, args.out,
                          resume=not args.no_resume, track=not args.no_track)
    m = outcome.metrics
    print(
        f"trained {outcome.step} steps in {m['train_seconds']:.0f} s ({m['clips_per_s']:.1f} clips/s): "
        f"val pred {m['val_pred_loss']:.4f}, sigreg {m['val_sigreg_loss']:.3f}, "
        f"effective rank {m['val_effective_rank']:.1f} -> {outcome.checkpoint}"
    )


if __name__ == "__main__":
    run_cli(main)
