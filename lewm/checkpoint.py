"""Checkpoints: everything needed to resume training exactly, or to rebuild the model for planning and
analysis. Written atomically, so an interrupted save never corrupts the last good checkpoint."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from lewm.config import ModelConfig, build_section
from lewm.data.clips import ActionStats
from lewm.io import atomic_file
from lewm.model import LeWM

FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (see `training_state` in lewm.train) to `path` atomically."""
    with atomic_file(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict, with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: not a LeWM checkpoint (format_version {FORMAT_VERSION} expected)")
    return state


def model_meta(
    *, env: str, model_cfg: ModelConfig, image_size: int, action_dim: int, frameskip: int, history: int,
    action_stats: ActionStats,
) -> dict[str, Any]:
    """What, besides weights, rebuilds a model and plans with it (stored in every checkpoint)."""
    return {
        "env": env,
        "model_config": dataclasses.asdict(model_cfg),
        "image_size": image_size,
        "action_dim": action_dim,
        "frameskip": frameskip,
        "history": history,
        "action_stats": action_stats.to_dict(),
    }


def build_model(meta: dict[str, Any]) -> LeWM:
    """A freshly initialised LeWM with the architecture described by `meta`."""
    cfg = build_section(ModelConfig, meta["model_config"], "checkpoint.model_config")
    return LeWM(cfg, meta["image_size"], meta["action_dim"], meta["frameskip"], meta["history"])


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[LeWM, dict[str, Any]]:
    """The trained model (eval mode) and its meta; `meta["action_stats"]` is an ActionStats."""
    state = read_checkpoint(path, device)
    meta = dict(state["meta"])
    model = build_model(meta).to(device)
    model.load_state_dict(state["model"])
    model.eval()
    meta["action_stats"] = ActionStats.from_dict(meta["action_stats"])
    meta["step"] = state.get("step")
    meta["mlflow_run_id"] = state.get("mlflow_run_id")
    return model, meta
