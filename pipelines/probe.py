"""Stage `probe@<env>`: linear and MLP probes of the frozen encoder onto physical state, against a
random-init encoder control, plus both encoders' latent straightness on test trajectories.

    python -m pipelines.probe --env pusht [--set probe.max_frames=2000] [--no-track]

Writes runs/<env>/probe/{probes.parquet, metrics.json, probe.png} and appends them (artifacts under
`probe/`, metrics prefixed `probe/`) to the MLflow run of the trained model (runs/<env>/train/run.json).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from lewm.config import load_params
from lewm.io import atomic_file, write_json
from lewm.probing import plot_probe_scores, run_probing
from lewm.train import resolve_device
from pipelines._cli import run_cli
from pipelines._stage import analysis_parser, load_model_and_data, log_to_training_run, training_run_id


def probe_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    device: str = "auto",
) -> dict[str, float]:
    """Probe runs/<env>/train/model.pt on data/<env> into runs/<env>/probe; return the flat metrics."""
    params = load_params(params_path, overrides)
    model_path = Path(model_path or f"runs/{env}/train/model.pt")
    out_dir = Path(out_dir or f"runs/{env}/probe")
    torch_device = resolve_device(device)
    model, meta, store = load_model_and_data(env, model_path, data_dir or f"data/{env}", torch_device)
    run_id = training_run_id(model_path) if track else None
    result = run_probing(model, meta, store, params.probe, torch_device)
    with atomic_file(out_dir / "probes.parquet") as tmp:
        result.table.to_parquet(tmp, index=False)
    write_json(out_dir / "metrics.json", result.metrics)
    plot_probe_scores(result.table, out_dir / "probe.png")
    if run_id is not None:
        artifacts = [out_dir / name for name in ("probes.parquet", "metrics.json", "probe.png")]
        log_to_training_run(params.tracking, run_id, "probe", result.metrics, artifacts, meta["step"])
    return result.metrics


@task(name="probe-encoder")
def probe_task(env: str, params_path: str | None, overrides: list[str] | None) -> dict[str, float]:
    return probe_stage(env, params_path, overrides)


@flow(name="probe")
def probe_flow(
    env: str = "pusht", params_path: str | None = None, overrides: list[str] | None = None
) -> dict:
    """Prefect flow around the probing stage (same function the CLI calls)."""
    return probe_task(env, params_path, overrides)


def main() -> None:
    args = analysis_parser(__doc__.splitlines()[0], "probe").parse_args()
    metrics = probe_stage(
        args.env,
        args.params,
        args.overrides,
        args.data,
        args.model,
        args.out,
        track=not args.no_track,
        device=args.device,
    )
    quantities = sorted({key.split(".")[2] for key in metrics if key.count(".") == 3})
    for quantity in quantities:
        scores = ", ".join(
            f"{encoder} {probe} r={metrics[f'{encoder}.{probe}.{quantity}.r']:.3f}"
            for encoder in ("trained", "random")
            for probe in ("linear", "mlp")
        )
        print(f"{quantity}: {scores}")
    print(
        f"straightness: trained {metrics['trained.straightness']:.3f}, "
        f"random {metrics['random.straightness']:.3f}"
    )


if __name__ == "__main__":
    run_cli(main)
