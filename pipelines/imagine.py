"""Stage `imagine@<env>`: open-loop imagination of the trained model on test episodes, read through linear
probes in the world's units per horizon step (against the no-motion `copy` and the `encoded` true frame),
and how well latent distance to a goal ranks frames as the true distance does (lewm/imagination.py).

    python -m pipelines.imagine --env pusht [--set imagine.starts=200] [--no-track]

Writes runs/<env>/imagine/{imagination.parquet, metrics.json, imagine.png} and appends them (artifacts
under `imagine/`, metrics prefixed `imagine/`) to the MLflow run of the trained model.
"""

from __future__ import annotations

from pathlib import Path

from lewm.imagination import LATENT, plot_imagination, run_imagination
from pipelines._cli import run_cli
from pipelines._stage import run_analysis_cli, run_analysis_stage


def imagine_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    device: str = "auto",
) -> dict[str, float]:
    """Measure runs/<env>/train/model.pt's imagination on data/<env> into runs/<env>/imagine; return the
    flat metrics."""
    return run_analysis_stage(
        "imagine", "imagination.parquet",
        lambda model, meta, store, params, torch_device: run_imagination(
            model, meta, store, params.imagine, params.plan.horizon, params.probe, torch_device),
        lambda result, params, path: plot_imagination(result.table, result.metrics, path),
        env, params_path, overrides, data_dir, model_path, out_dir, track, device,
    )


def main() -> None:
    metrics = run_analysis_cli(imagine_stage, __doc__.splitlines()[0], "imagine")
    quantities = list(dict.fromkeys(key.split(".")[0] for key in metrics if ".imagined." in key))
    steps = sorted({int(key.rsplit(".k", 1)[1]) for key in metrics if ".imagined.k" in key})
    for quantity in [q for q in quantities if q != LATENT] + [LATENT]:
        cells = []
        for step in steps:
            imagined, copy = metrics[f"{quantity}.imagined.k{step}"], metrics[f"{quantity}.copy.k{step}"]
            encoded = metrics.get(f"{quantity}.encoded.k{step}")
            floor = f", encoded {encoded:.3g}" if encoded is not None else ""
            cells.append(f"k{step} {imagined:.3g} (copy {copy:.3g}{floor})")
        print(f"{quantity}: {'; '.join(cells)}")
    for key in ("window", "random_pairs"):
        rho = metrics.get(f"distance_spearman.{key}")
        if rho is not None:
            print(f"latent vs true goal distance, Spearman ρ ({key}): {rho:.3f}")


if __name__ == "__main__":
    run_cli(main)
