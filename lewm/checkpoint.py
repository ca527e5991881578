"""Checkpoints: everything needed to resume training exactly, or to rebuild the model for planning and
analysis. Written atomically, so an interrupted save never corrupts the last good checkpoint.

A checkpoint records the model's name (`model.name`) and settings in its `ModelMeta`, so `load_model`
rebuilds the right class whatever params.yaml says today.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from lewm.config import build_section, section_mapping
from lewm.data.clips import ActionStats
from lewm.io import atomic_file
from lewm.parts import MODELS, part_module

FORMAT_VERSION = 2  # 2: typed ModelMeta with the model's name (1: LeWM only)


class CheckpointVersionError(ValueError):
    """The file is a checkpoint of another format version (or none): it cannot be loaded by this code."""


@dataclass(frozen=True)
class ModelMeta:
    """What, besides weights, rebuilds a world model and plans with it (stored in every checkpoint)."""

    env: str
    model: str  # `model.name`: the module in lewm/models/
    settings: dict[str, Any]  # `model.<name>`, as a plain mapping
    image_size: int
    action_dim: int
    frameskip: int
    history: int
    action_stats: ActionStats  # raw-action statistics of the train split

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-able mapping (what the checkpoint stores and run fingerprints hash)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {**fields, "action_stats": self.action_stats.to_dict()}

    @classmethod
    def from_dict(cls, mapping: dict[str, Any]) -> ModelMeta:
        return cls(**{**mapping, "action_stats": ActionStats.from_dict(mapping["action_stats"])})

    def build(self) -> nn.Module:
        """A freshly initialised model of this architecture (from the global torch RNG)."""
        module = part_module(MODELS, self.model, "model")
        settings = build_section(module.Config, self.settings, f"checkpoint.model.{self.model}")
        return module.Model(settings, self.image_size, self.action_dim, self.frameskip, self.history)


def bind_settings(name: str, settings: Any, env: str) -> Any:
    """The settings of model `name` for a run on `env`. A model module may define `bind(settings, env)`,
    which completes them from the files they name (dinowm: the LeWM checkpoint whose ViT it freezes), so a
    checkpoint's meta rebuilds the model without those files and the run fingerprint follows them; other
    models' settings are returned as they are."""
    bind = getattr(part_module(MODELS, name, "model"), "bind", None)
    return settings if bind is None else bind(settings, env)


def model_meta(env: str, name: str, settings: Any, image_size: int, action_dim: int, frameskip: int,
               history: int, action_stats: ActionStats) -> ModelMeta:
    """The meta of model `name` with settings dataclass `settings` (params `model.<name>`), bound to a run
    on `env` (`bind_settings`)."""
    return ModelMeta(env, name, section_mapping(bind_settings(name, settings, env)), image_size, action_dim,
                     frameskip, history, action_stats)


class LoadedModel(NamedTuple):
    """A trained model (eval mode), its meta and the optimiser step it was saved at."""

    model: nn.Module
    meta: ModelMeta
    step: int


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write `state` (model weights, `meta` as a ModelMeta, step, ...) to `path` atomically."""
    meta = state["meta"]
    with atomic_file(path) as tmp:
        torch.save({**state, "format_version": FORMAT_VERSION, "meta": meta.to_dict()}, tmp)


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict (`meta` as a ModelMeta), with a clear error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # torch raises many types for corrupt files
        raise ValueError(f"{path}: not a readable checkpoint ({exc.__class__.__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        found = state.get("format_version") if isinstance(state, dict) else None
        raise CheckpointVersionError(f"{path}: not a checkpoint of this version (format_version "
                                     f"{FORMAT_VERSION} expected, found {found}); retrain with `dvc repro`")
    return {**state, "meta": ModelMeta.from_dict(state["meta"])}


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The trained model of the checkpoint at `path`, in eval mode on `device`."""
    state = read_checkpoint(path, device)
    meta = state["meta"]
    model = meta.build().to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedModel(model, meta, int(state["step"]))
