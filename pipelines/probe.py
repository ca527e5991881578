"""Stage `probe@<env>`: linear and MLP probes of the frozen encoder onto physical state, against a
random-init encoder control, plus both encoders' latent straightness on test trajectories.

    python -m pipelines.probe --env pusht [--set probe.max_frames=2000] [--no-track]

Writes runs/<env>/probe/{probes.parquet, metrics.json, probe.png} and appends them (artifacts under
`probe/`, metrics prefixed `probe/`) to the MLflow run of the trained model (runs/<env>/train/run.json).
"""

from __future__ import annotations

from pathlib import Path

from lewm.probing import plot_probe_scores, run_probing
from pipelines._cli import run_cli
from pipelines._stage import run_analysis_cli, run_analysis_stage


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
    return run_analysis_stage(
        "probe", "probes.parquet",
        lambda model, meta, store, params, torch_device: run_probing(model, meta, store, params.probe,
                                                                    torch_device),
        lambda result, params, path: plot_probe_scores(result.table, path),
        env, params_path, overrides, data_dir, model_path, out_dir, track, device,
    )


def main() -> None:
    metrics = run_analysis_cli(probe_stage, __doc__.splitlines()[0], "probe")
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
