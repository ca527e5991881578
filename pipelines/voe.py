"""Stage `voe@<env>`: violation of expectation, the trained model's surprise along unperturbed, colour-
changed and teleported trajectories that share their actions (lewm/voe.py explains the protocol).

    python -m pipelines.voe --env pusht [--set voe.episodes=8] [--no-track]

Writes runs/<env>/voe/{surprise.parquet, metrics.json, voe.png} and appends them (artifacts under `voe/`,
metrics prefixed `voe/`) to the MLflow run of the trained model (runs/<env>/train/run.json).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from lewm.config import load_params
from lewm.io import atomic_file, write_json
from lewm.train import resolve_device
from lewm.voe import PERTURBED, plot_surprise, run_voe
from pipelines._cli import run_cli
from pipelines._stage import analysis_parser, load_model_and_data, log_to_training_run, training_run_id


def voe_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    device: str = "auto",
) -> dict[str, float]:
    """Measure runs/<env>/train/model.pt's surprise into runs/<env>/voe; return the flat metrics. The
    environment is built with the dataset's `env_kwargs`, so frames look as in training."""
    params = load_params(params_path, overrides)
    model_path = Path(model_path or f"runs/{env}/train/model.pt")
    out_dir = Path(out_dir or f"runs/{env}/voe")
    torch_device = resolve_device(device)
    model, meta, store = load_model_and_data(env, model_path, data_dir or f"data/{env}", torch_device)
    run_id = training_run_id(model_path) if track else None
    result = run_voe(model, meta, store.manifest["env_kwargs"], params.voe, torch_device)
    with atomic_file(out_dir / "surprise.parquet") as tmp:
        result.table.to_parquet(tmp, index=False)
    write_json(out_dir / "metrics.json", result.metrics)
    plot_surprise(result.table, params.voe.window, result.metrics, out_dir / "voe.png")
    if run_id is not None:
        artifacts = [out_dir / name for name in ("surprise.parquet", "metrics.json", "voe.png")]
        log_to_training_run(params.tracking, run_id, "voe", result.metrics, artifacts, meta["step"])
    return result.metrics


@task(name="voe-surprise")
def voe_task(env: str, params_path: str | None, overrides: list[str] | None) -> dict[str, float]:
    return voe_stage(env, params_path, overrides)


@flow(name="voe")
def voe_flow(env: str = "pusht", params_path: str | None = None, overrides: list[str] | None = None) -> dict:
    """Prefect flow around the violation-of-expectation stage (same function the CLI calls)."""
    return voe_task(env, params_path, overrides)


def main() -> None:
    args = analysis_parser(__doc__.splitlines()[0], "voe").parse_args()
    metrics = voe_stage(
        args.env,
        args.params,
        args.overrides,
        args.data,
        args.model,
        args.out,
        track=not args.no_track,
        device=args.device,
    )
    for condition in PERTURBED:
        print(
            f"{condition}: peak surprise ×{metrics[f'{condition}.peak_ratio']:.2f} vs unperturbed "
            f"(median ×{metrics[f'{condition}.peak_ratio_median']:.2f}), "
            f"paired t-test p={metrics[f'{condition}.p_value']:.3g}"
        )


if __name__ == "__main__":
    run_cli(main)
