"""Stage `train@<env>`: train the world model `model.name` on the environment's dataset, tracked in MLflow.

    python -m pipelines.train --env pusht [--set model.lewm.lambda=0.05] [--no-resume]

Writes runs/<env>/train/{model.pt, run.json, metrics.json, *_history.csv, curves.png, checkpoints/}.
Resumes from checkpoints/last.pt after an interruption (same params and data only).
"""

from __future__ import annotations

from pathlib import Path

from lewm.config import Params, load_params, section_mapping
from lewm.data.storage import EpisodeStore
from lewm.evaluation import PlanningCheck, read_manifest
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
) -> TrainOutcome:
    """Train on data/<env> into runs/<env>/train and record the MLflow run id in run.json. A tracked run's
    model becomes a version of the registered model `tracking.registered_model`."""
    params = load_params(params_path, overrides, env)
    data_dir = Path(data_dir or f"data/{env}")
    out_dir = Path(out_dir or f"runs/{env}/train")
    out_dir.mkdir(parents=True, exist_ok=True)
    tracker = None
    if track:
        tags = {"env": env, "stage": "train", "profile": params.profile}
        tracker = RunTracker(params.tracking, run_name=f"train-{env}", tags=tags)
    selector = planning_check(params, env, data_dir) if params.train.plan_eval_every > 0 else None
    outcome = train(params, env, data_dir, out_dir, resume=resume, tracker=tracker, selector=selector)
    registered = {}
    if track:
        registered = {"registered_model": model_name(params.tracking, env, params.model.name),
                      "model_version": register_training_run(params, env, outcome.run_id)}
    write_json(out_dir / "run.json", {
        "run_id": outcome.run_id, "tracking_uri": tracking_uri(params.tracking) if track else None,
        "experiment": params.tracking.experiment, "env": env, **registered,
    })
    return outcome


def planning_check(params: Params, env: str, data_dir: Path) -> PlanningCheck:
    """Checkpoint selection by planning success on the validation manifest of the manifest stage."""
    manifest_path = Path(f"runs/{env}/manifests/val.parquet")
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{manifest_path}: train.plan_eval_every > 0 needs the validation manifest "
                                f"(run `python -m pipelines.manifest --env {env}` first)")
    return PlanningCheck(params, EpisodeStore.open(data_dir), read_manifest(manifest_path))


def register_training_run(params: Params, env: str, run_id: str) -> str:
    """Register the run's logged model as a version of `tracking.registered_model`; return the version."""
    tags = {"stage": "train", "model": params.model.name, "profile": params.profile,
            **{key: value for key, value in section_mapping(params.model.settings).items()
               if key == "lambda"}}
    return register(run_id, model_name(params.tracking, env, params.model.name), tags=tags)


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
    losses = ", ".join(f"{key.removeprefix('val_').removesuffix('_loss')} {value:.4g}"
                       for key, value in m.items() if key.startswith("val_") and key.endswith("_loss"))
    print(
        f"trained {outcome.step} steps in {m['train_seconds']:.0f} s ({m['clips_per_s']:.1f} clips/s): "
        f"val {losses}, effective rank {m['val_effective_rank']:.1f} -> {outcome.checkpoint}"
    )


if __name__ == "__main__":
    run_cli(main)
