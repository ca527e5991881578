"""Stage `decode@<env>`: a pixel decoder trained after the fact on the FROZEN embeddings of the trained
model (lewm/decoder.py), so that planning GIFs and VoE plots can show what the model imagines.

    python -m pipelines.decode --env pusht [--set decoder.steps=500] [--no-track]

Trains on up to `decoder.max_frames` train frames (no gradient reaches the world model), scores the
reconstruction of held-out test frames against the mean train image, and writes runs/<env>/decode/
{decoder.pt (with the SHA-256 of the checkpoint it decodes for), metrics.json, reconstructions.png}, each
atomically and only once training and scoring have succeeded. They are appended (artifacts under
`decode/`, metrics prefixed `decode/`) to the MLflow run of the trained model (runs/<env>/train/run.json).
"""

from __future__ import annotations

from pathlib import Path

from lewm.config import load_params
from lewm.decoder import WorldModelSource, file_sha256, plot_reconstructions, run_decoder, save_decoder
from lewm.io import write_json
from lewm.runtime import resolve_device
from lewm.tracking import append_to_run
from pipelines._cli import run_cli
from pipelines._stage import load_model_and_data, run_analysis_cli, training_run_id


def decode_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    device: str = "auto",
) -> dict[str, float]:
    """Train the decoder of runs/<env>/train/model.pt on data/<env> into runs/<env>/decode; return the flat
    metrics."""
    params = load_params(params_path, overrides, env)
    model_path = Path(model_path or f"runs/{env}/train/model.pt")
    out_dir = Path(out_dir or f"runs/{env}/decode")
    torch_device = resolve_device(device)
    loaded, store = load_model_and_data(env, params, model_path, data_dir or f"data/{env}", torch_device)
    source = WorldModelSource(str(model_path), file_sha256(model_path), loaded.meta.env, loaded.meta.model,
                              loaded.step)
    run_id = training_run_id(model_path) if track else None
    result = run_decoder(loaded.model, loaded.meta, store, params.decoder, torch_device)
    # the decoder last: a decoder.pt on disk always comes with the metrics and grid of its own run
    plot_reconstructions(result, out_dir / "reconstructions.png")
    write_json(out_dir / "metrics.json", result.metrics)
    save_decoder(out_dir / "decoder.pt", result.decoder, source, params.decoder)
    if run_id is not None:
        artifacts = [out_dir / "metrics.json", out_dir / "reconstructions.png"]
        append_to_run(params.tracking, run_id, "decode", result.metrics, artifacts, loaded.step)
    return result.metrics


def main() -> None:
    metrics = run_analysis_cli(decode_stage, __doc__.splitlines()[0], "decode")
    print(f"held-out reconstruction ({metrics['n_test']:.0f} test frames): MSE {metrics['test.mse']:.5f}, "
          f"PSNR {metrics['test.psnr']:.2f} dB; mean train image: MSE {metrics['test.mean_image_mse']:.5f}, "
          f"PSNR {metrics['test.mean_image_psnr']:.2f} dB; trained in {metrics['train_seconds']:.0f} s")


if __name__ == "__main__":
    run_cli(main)
