"""Checkpoints: everything needed to resume training exactly, or to rebuild the model for planning and
analysis. Written atomically, so an interrupted save never corrupts the last good checkpoint.

A checkpoint records the model's name (`model.name`) and settings in its `ModelMeta`, so `load_model`
rebuilds the right class whatever params.yaml says today. It also records the code that wrote it
(`CodeVersion`: package version, git commit, a hash of each model source file) and, for training
checkpoints, the run's config; `load_model` refuses a checkpoint whose model code has changed since, and
`check_settings` one whose model settings differ from the params a stage runs with, naming what differs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

import lewm
from lewm.config import Params, build_section, mapping_differences, section_mapping
from lewm.data.clips import ActionStats
from lewm.io import atomic_file
from lewm.parts import MODELS, part_module

FORMAT_VERSION = 3  # 3: + the code that wrote it; 2: typed ModelMeta with the model's name; 1: LeWM only
MODEL_SOURCES = Path(lewm.__file__).resolve().parent / "models"  # the code whose change voids weights


class CheckpointVersionError(ValueError):
    """The file is a checkpoint of another format version (or none): it cannot be loaded by this code."""


class CheckpointMismatchError(ValueError):
    """The checkpoint was written by other model code, or with other settings than the params give."""


@dataclass(frozen=True)
class CodeVersion:
    """The code that wrote a checkpoint. The model sources decide whether its weights still mean the same
    thing; the package version and git commit say where to find that code."""

    package: str
    commit: str | None  # git commit of the checkout ("+dirty": lewm/ had changes); None outside git
    model_sources: dict[str, str]  # file under lewm/models/ → SHA-256 (16 hex digits)

    def differences(self, current: CodeVersion) -> list[str]:
        """The model source files that changed between this version and `current`."""
        changes = []
        for name in sorted(set(self.model_sources) | set(current.model_sources)):
            before, now = self.model_sources.get(name), current.model_sources.get(name)
            if before != now:
                what = "added" if before is None else "removed" if now is None else "changed"
                changes.append(f"lewm/models/{name} {what}")
        return changes


def source_hashes(directory: Path) -> dict[str, str]:
    """SHA-256 (16 hex digits) of every Python file under `directory`, by relative path."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
            for path in sorted(directory.rglob("*.py"))}


@functools.cache
def git_commit() -> str | None:
    """The commit of the checkout lewm/ lives in ("+dirty" with uncommitted changes under lewm/), or None
    when it is not a git checkout (an installed package) or git is missing."""
    root = MODEL_SOURCES.parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "lewm"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def current_code() -> CodeVersion:
    """The version of the code running now."""
    return CodeVersion(lewm.__version__, git_commit(), source_hashes(MODEL_SOURCES))


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
    """Write `state` (model weights, `meta` as a ModelMeta, step, ...) to `path` atomically, with the
    version of the code writing it."""
    meta = state["meta"]
    with atomic_file(path) as tmp:
        torch.save({**state, "format_version": FORMAT_VERSION, "meta": meta.to_dict(),
                    "code": dataclasses.asdict(current_code())}, tmp)


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
    return {**state, "meta": ModelMeta.from_dict(state["meta"]), "code": CodeVersion(**state["code"])}


def check_code(state: dict[str, Any], path: str | Path) -> None:
    """Refuse the checkpoint `state` (read from `path`) when the model code changed since it was written:
    its weights would be loaded into another architecture, or silently mean something else."""
    written, now = state["code"], current_code()
    changes = written.differences(now)
    if changes:
        raise CheckpointMismatchError(
            f"{path}: written by other model code ({'; '.join(changes)}; written at commit "
            f"{written.commit or 'unknown'}, now {now.commit or 'unknown'}); retrain with `dvc repro`"
        )


def expected_settings(params: Params, model: str, env: str) -> dict[str, Any]:
    """The settings of model `model` for a run on `env` as `params` give them (bound, `bind_settings`)."""
    section = (params.raw.get("model") or {}).get(model)
    if section is None:
        raise CheckpointMismatchError(f"model.{model}: the params have no settings for this checkpoint's "
                                      f"model")
    module = part_module(MODELS, model, "model")
    settings = build_section(module.Config, section, f"model.{model}")
    return section_mapping(bind_settings(model, settings, env))


def check_settings(meta: ModelMeta, params: Params, path: str | Path) -> None:
    """Refuse a checkpoint whose model settings or clip layout differ from what `params` give, naming each
    difference, so a stage never analyses a model other than the one its params describe."""
    recorded = {"model": {meta.model: meta.settings},
                "clip": {"frameskip": meta.frameskip, "history": meta.history}}
    current = {"model": {meta.model: expected_settings(params, meta.model, meta.env)},
               "clip": {"frameskip": params.clip.frameskip, "history": params.clip.history}}
    differences = mapping_differences(recorded, current)
    if differences:
        raise CheckpointMismatchError(
            f"{path}: trained with other settings than the params give (checkpoint → params: "
            f"{'; '.join(differences)}); retrain with `dvc repro train@{meta.env}` or set the checkpoint's "
            f"values with --set"
        )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """The trained model of the checkpoint at `path`, in eval mode on `device`; refused when the model code
    changed since it was written (`check_code`)."""
    state = read_checkpoint(path, device)
    check_code(state, path)
    meta = state["meta"]
    model = meta.build().to(device)
    model.load_state_dict(state["model"])
    model.eval()
    return LoadedModel(model, meta, int(state["step"]))
