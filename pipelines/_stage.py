"""Plumbing shared by the stages that analyse a trained model (decode, plan, probe, voe): load the checkpoint
with its dataset, and append results to the MLflow run that trained it."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple, Protocol

import pandas as pd
import torch

from lewm.checkpoint import LoadedModel, ModelMeta, check_settings, load_model
from lewm.config import Params, load_params
from lewm.data.storage import EpisodeStore
from lewm.io import atomic_file, write_json
from lewm.models import WorldModel
from lewm.runtime import resolve_device
from lewm.tracking import append_to_run, read_run_id
from pipelines._cli import base_parser


def load_model_and_data(
    env: str, params: Params, model_path: str | Path, data_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[LoadedModel, EpisodeStore]:
    """The trained model (on `device`) with its meta and step, and the dataset, checked to belong
    together and to the settings `params` give for the checkpoint's model (`check_settings`)."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise FileNotFoundError(
            f"{model_path}: model checkpoint not found (run `python -m pipelines.train --env {env}` first)"
        )
    loaded = load_model(model_path, device)
    meta = loaded.meta
    store = EpisodeStore.open(data_dir)
    if meta.env != env or store.manifest["env"] != env:
        raise ValueError(
            f"environment mismatch: --env {env}, model {meta.env!r}, dataset {store.manifest['env']!r}"
        )
    if store.manifest["image_size"] != meta.image_size:
        raise ValueError(
            f"{data_dir}: {store.manifest['image_size']} px frames, but the model was trained on "
            f"{meta.image_size} px"
        )
    check_settings(meta, params, model_path)
    return loaded, store


def training_run_id(model_path: Path) -> str:
    """The MLflow run that trained the checkpoint at `model_path` (its run.json sits next to it), checked
    before any work so that a stage does not fail only at the end."""
    run_file = model_path.parent / "run.json"
    run_id = read_run_id(run_file)
    if run_id is None:
        raise ValueError(f"{run_file}: the training run was not tracked in MLflow (use --no-track)")
    return run_id


def analysis_parser(description: str, stage: str, decoder: bool = False) -> argparse.ArgumentParser:
    """The options of a stage that analyses a trained model: env, data, checkpoint, output, device; with
    `decoder`, the pixel decoder it shows imagined frames with (`add_decoder_options`)."""
    parser = base_parser(description)
    parser.add_argument("--env", required=True)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<env>)")
    parser.add_argument("--model", default=None, help="checkpoint (default: runs/<env>/train/model.pt)")
    parser.add_argument("--out", default=None, help=f"output directory (default: runs/<env>/{stage})")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-track", action="store_true", help="do not log to MLflow")
    if decoder:
        add_decoder_options(parser)
    return parser


def add_decoder_options(parser: argparse.ArgumentParser) -> None:
    """`--decoder PATH` and `--no-decoder`: the pixel decoder of the checkpoint (lewm/decoder.py; default:
    the decode stage's, runs/<env>/decode/decoder.pt, when it exists)."""
    parser.add_argument("--decoder", default=None,
                        help="pixel decoder of the checkpoint (default: <train dir>/../decode/decoder.pt, "
                             "e.g. runs/<env>/decode/decoder.pt, if present)")
    parser.add_argument("--no-decoder", action="store_true", help="show no decoded imagination")


class AnalysisResult(Protocol):
    """What an analysis returns: a table (one row per measurement) and the flat metrics derived from it."""

    table: pd.DataFrame
    metrics: dict[str, float]


Analyse = Callable[[WorldModel, ModelMeta, EpisodeStore, Params, torch.device], AnalysisResult]
"""Runs an analysis: (model, its meta, the dataset, params, device) → result."""


class AnalysisInputs(NamedTuple):
    """What a stage that analyses a trained model starts from."""

    params: Params
    model_path: Path
    out_dir: Path
    device: torch.device
    loaded: LoadedModel
    store: EpisodeStore
    run_id: str | None  # the training's MLflow run to append to; None without tracking


def open_analysis(
    stage: str, env: str, params_path: str | None, overrides: list[str] | None, data_dir: str | Path | None,
    model_path: str | Path | None, out_dir: str | Path | None, track: bool, device: str,
) -> AnalysisInputs:
    """The params, runs/<env>/train/model.pt (or `model_path`) with data/<env> checked to belong together,
    the output directory runs/<env>/<stage> and the training run to append to, checked before any work."""
    params = load_params(params_path, overrides, env)
    model_path = Path(model_path or f"runs/{env}/train/model.pt")
    torch_device = resolve_device(device)
    loaded, store = load_model_and_data(env, params, model_path, data_dir or f"data/{env}", torch_device)
    run_id = training_run_id(model_path) if track else None
    return AnalysisInputs(params, model_path, Path(out_dir or f"runs/{env}/{stage}"), torch_device, loaded,
                          store, run_id)


def run_analysis_stage(
    stage: str,
    table_name: str,
    analyse: Analyse,
    plot: Callable[[AnalysisResult, Params, Path], None],
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    model_path: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    device: str = "auto",
) -> dict[str, float]:
    """The body of an analysis stage (probe, voe): analyse runs/<env>/train/model.pt on data/<env>, write
    runs/<env>/<stage>/{`table_name`, metrics.json, <stage>.png} and append them to the model's MLflow run
    (metrics prefixed `<stage>/`). Returns the flat metrics."""
    params, _, out_dir, torch_device, loaded, store, run_id = open_analysis(
        stage, env, params_path, overrides, data_dir, model_path, out_dir, track, device)
    result = analyse(loaded.model, loaded.meta, store, params, torch_device)
    with atomic_file(out_dir / table_name) as tmp:
        result.table.to_parquet(tmp, index=False)
    write_json(out_dir / "metrics.json", result.metrics)
    plot(result, params, out_dir / f"{stage}.png")
    if run_id is not None:
        artifacts = [out_dir / name for name in (table_name, "metrics.json", f"{stage}.png")]
        append_to_run(params.tracking, run_id, stage, result.metrics, artifacts, loaded.step)
    return result.metrics


def run_analysis_cli(stage_function: Callable[..., dict[str, float]], description: str, stage: str,
                     decoder: bool = False) -> dict:
    """Parse the analysis options (`analysis_parser`) and run `stage_function` with them (with `decoder`,
    also its `decoder` and `use_decoder` arguments)."""
    args = analysis_parser(description, stage, decoder).parse_args()
    extra = {"decoder": args.decoder, "use_decoder": not args.no_decoder} if decoder else {}
    return stage_function(args.env, args.params, args.overrides, args.data, args.model, args.out,
                          track=not args.no_track, device=args.device, **extra)
