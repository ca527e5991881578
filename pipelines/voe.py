"""Stage `voe@<env>`: violation of expectation, the trained model's surprise along unperturbed and
perturbed trajectories that share their actions (the world's perturbations; lewm/voe.py explains them).

    python -m pipelines.voe --env pusht [--set voe.episodes=8] [--no-track] [--decoder PATH | --no-decoder]

Writes runs/<env>/voe/{surprise.parquet, metrics.json, voe.png} and appends them (artifacts under `voe/`,
metrics prefixed `voe/`) to the MLflow run of the trained model (runs/<env>/train/run.json). When the
model has a pixel decoder (the decode stage's runs/<env>/decode/decoder.pt, or --decoder), voe.png also
shows the decoded prediction at the perturbation beside the real frames; the metrics do not depend on it.
"""

from __future__ import annotations

from pathlib import Path

from lewm.decoder import find_decoder
from lewm.runtime import resolve_device
from lewm.voe import UNPERTURBED, plot_surprise, run_voe
from pipelines._cli import run_cli
from pipelines._stage import run_analysis_cli, run_analysis_stage


def voe_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    device: str = "auto",
    decoder: str | Path | None = None,
    use_decoder: bool = True,
) -> dict[str, float]:
    """Measure runs/<env>/train/model.pt's surprise into runs/<env>/voe; return the flat metrics. The
    environment is built with the dataset's `env_kwargs`, so frames look as in training. The plot shows
    decoded frames when the checkpoint has a decoder (`lewm.decoder.find_decoder`: `decoder`, else the
    decode stage's, refused if it belongs to another checkpoint)."""
    model_path = Path(model_path or f"runs/{env}/train/model.pt")
    pixel_decoder = find_decoder(model_path, decoder, use_decoder, resolve_device(device))
    decode = None if pixel_decoder is None else pixel_decoder.decode_frames
    return run_analysis_stage(
        "voe", "surprise.parquet",
        lambda model, meta, store, params, torch_device: run_voe(model, meta, store.manifest["env_kwargs"],
                                                                params.voe, torch_device, decode),
        lambda result, params, path: plot_surprise(result.table, params.voe.window, result.metrics, path,
                                                   result.decoded),
        env, params_path, overrides, data_dir, model_path, out_dir, track, device,
    )


def main() -> None:
    metrics = run_analysis_cli(voe_stage, __doc__.splitlines()[0], "voe", decoder=True)
    conditions = sorted({key.split(".")[0] for key in metrics} - {UNPERTURBED})
    for condition in conditions:
        print(
            f"{condition}: peak surprise ×{metrics[f'{condition}.peak_ratio']:.2f} vs unperturbed "
            f"(median ×{metrics[f'{condition}.peak_ratio_median']:.2f}), "
            f"paired t-test p={metrics[f'{condition}.p_value']:.3g}"
        )


if __name__ == "__main__":
    run_cli(main)
