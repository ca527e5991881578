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

from lewm.decoder import WorldModelSource, plot_reconstructions, run_decoder, save_decoder
from lewm.io import file_sha256, write_json
from lewm.tracking import append_to_run
from pipelines._cli import run_cli
from pipelines._stage import open_analysis, run_analysis_cli


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
    params, model_path, out_dir, torch_device, loaded, store, run_id = open_analysis(
        "decode", env, params_path, overrides, data_dir, model_path, out_dir, track, device)
    source = WorldModelSource(str(model_path), file_sha256(model_path), loaded.meta.env, loaded.meta.model,
                              loaded.step)
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
