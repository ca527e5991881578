"""Typed view of `params.yaml`, the single source of every pipeline parameter.

The file's top-level sections hold the default CPU profile. `profile: <name>` applies the overlay
`profiles.<name>` on top of them (a nested mapping of only the keys that differ), so the paper-scale
profile lives in the same file and `dvc exp run -S profile=paper` switches to it; `profiles.cpu` is
empty, and `profiles.smoke` is the tiny chain that `make smoke` runs.

Every section becomes a frozen dataclass; unknown or mistyped keys raise `ConfigError` naming the key,
so a typo in params.yaml fails at start-up instead of silently using a default.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PARAMS_PATH = PROJECT_ROOT / "params.yaml"


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the offending key."""


@dataclass(frozen=True)
class DataConfig:
    """How one environment's offline dataset is generated and split (by episode)."""

    episodes: int = 300
    max_steps: int = 100
    policy: str = "expert"  # expert | random
    action_noise: float = 0.1  # std of Gaussian noise added to the expert's actions (action units)
    policy_kwargs: dict[str, float] = field(default_factory=dict)  # e.g. the expert's push/travel speeds
    image_size: int = 64
    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    workers: int = 1  # processes used to generate episodes


@dataclass(frozen=True)
class ClipConfig:
    """Training clips: `history + num_preds` frames, `frameskip` raw steps apart (reference §3)."""

    history: int = 3
    num_preds: int = 1
    frameskip: int = 5


@dataclass(frozen=True)
class ModelConfig:
    """LeWM architecture (reference §2). Image size and action size come from the dataset."""

    encoder: str = "vit"  # vit | resnet
    patch_size: int = 8
    encoder_dim: int = 192
    encoder_depth: int = 4
    encoder_heads: int = 3
    resnet_name: str = "resnet18"
    embed_dim: int = 192
    projector_hidden: int = 2048
    predictor_depth: int = 6
    predictor_heads: int = 16
    predictor_head_dim: int = 64
    predictor_mlp_dim: int = 2048
    predictor_dropout: float = 0.1
    action_smoothed_dim: int = 10


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the two-term loss L = L_pred + λ·SIGReg (reference §4, §5)."""

    lambda_: float = 0.09  # `lambda` in params.yaml
    sigreg_projections: int = 1024
    sigreg_knots: int = 17
    sigreg_t_max: float = 3.0
    batch_size: int = 64
    lr: float = 5.0e-4
    weight_decay: float = 1.0e-3
    epochs: int = 10
    max_steps: int = 0  # > 0 caps the number of optimiser steps (0: epochs decide)
    warmup_fraction: float = 0.01
    grad_clip: float = 1.0
    seed: int = 3072
    checkpoint_every: int = 200
    log_every: int = 10
    val_every: int = 200
    val_batches: int = 8
    plan_eval_every: int = 0  # > 0: planning success on a small val manifest every N steps
    plan_eval_episodes: int = 10
    num_workers: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N


@dataclass(frozen=True)
class PlanConfig:
    """CEM planner and MPC loop (reference §8)."""

    samples: int = 300
    elites: int = 30
    iterations: int = 30
    horizon: int = 5  # action blocks
    receding: int = 5  # blocks executed before replanning
    init_std: float = 1.0
    warm_start: bool = True
    seed: int = 42


@dataclass(frozen=True)
class EvalConfig:
    """Planning evaluation protocol on held-out test episodes (reference §8.3)."""

    episodes: int = 50
    goal_offset: int = 25
    budget: int = 50
    seed: int = 42
    eval_seeds: list[int] = field(default_factory=lambda: [0])
    predicates: list[str] = field(default_factory=lambda: ["reference", "block"])
    gifs: int = 3


@dataclass(frozen=True)
class ProbeConfig:
    """Linear and MLP probes of frozen embeddings onto physical state (reference §9)."""

    max_frames: int = 6000  # frames embedded per split (evenly subsampled)
    ridge_alpha: float = 1.0
    mlp_hidden: int = 256
    mlp_epochs: int = 300
    mlp_lr: float = 1.0e-3
    seed: int = 0


@dataclass(frozen=True)
class VoEConfig:
    """Violation-of-expectation trajectories: unperturbed, colour change, teleport (reference §10)."""

    episodes: int = 24
    steps: int = 60
    perturb_step: int = 30
    window: int = 10  # steps shown either side of the perturbation
    policy: str = "expert"
    action_noise: float = 0.2
    color: list[int] = field(default_factory=lambda: [220, 60, 60])
    seed: int = 7


@dataclass(frozen=True)
class BisectConfig:
    """λ search by bisection on log scale (reference §13), criterion on the validation manifest."""

    lambda_lo: float = 0.001
    lambda_hi: float = 1.0
    trials: int = 5
    train_steps: int = 300
    val_episodes: int = 20
    min_effective_rank_fraction: float = 0.01  # below this a trial counts as collapsed (failure)
    min_emb_std: float = 0.05  # so does a mean per-dimension embedding std below this (rank is scale-free)
    parallel: int = 1
    seed: int = 0


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow writes. An empty URI means the project's own SQLite file (mlflow.db)."""

    tracking_uri: str = ""
    experiment: str = "lewm"
    registered_model: str = "lewm-{env}"


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml, after the profile overlay."""

    profile: str
    envs: list[str]
    data: dict[str, DataConfig]
    clip: ClipConfig
    model: ModelConfig
    train: TrainConfig
    plan: PlanConfig
    eval: EvalConfig
    probe: ProbeConfig
    voe: VoEConfig
    bisect: BisectConfig
    tracking: TrackingConfig
    raw: dict[str, Any] = field(repr=False, compare=False)

    def data_for(self, env: str) -> DataConfig:
        """The data section of `env`, with a clear error when the environment is not configured."""
        if env not in self.data:
            raise ConfigError(f"data.{env}: no dataset configured for environment {env!r} in params.yaml")
        return self.data[env]


_RENAMED_KEYS = {"lambda": "lambda_"}


def _check_type(value: Any, annotation: Any, where: str) -> Any:
    """Return `value` converted to `annotation` where lossless (int → float), else raise ConfigError."""
    origin = typing.get_origin(annotation)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _, value_type = typing.get_args(annotation)
        return {str(k): _check_type(v, value_type, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type,) = typing.get_args(annotation)[:1]
        return [_check_type(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _check_type(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {annotation}")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if annotation in (int, float, str) and (not isinstance(value, annotation) or isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {annotation.__name__}, got {value!r}")
    return value


def build_section(cls: type, mapping: dict[str, Any] | None, where: str) -> Any:
    """Build dataclass `cls` from `mapping`, rejecting unknown keys and wrong types."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in mapping.items():
        name = _RENAMED_KEYS.get(key, key)
        if name not in names:
            display = {v: k for k, v in _RENAMED_KEYS.items()}
            known = ", ".join(sorted(display.get(k, k) for k in names))
            raise ConfigError(f"{where}.{key}: unknown parameter (known: {known})")
        kwargs[name] = _check_type(value, hints[name], f"{where}.{key}")
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of `base` with `overlay` merged in recursively (overlay wins)."""
    merged = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(mapping: dict[str, Any], dotted_key: str, value: Any) -> None:
    """Set `a.b.c = value` inside a nested mapping, creating levels as needed."""
    node = mapping
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted_key}: {part!r} is not a section")
    node[leaf] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Parse `key.sub=value` strings (values in YAML syntax) into a nested mapping."""
    overlay: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, text = item.split("=", 1)
        set_dotted(overlay, key.strip(), yaml.safe_load(text))
    return overlay


def resolve_raw(raw: dict[str, Any], overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply command-line overrides, then the selected profile's overlay, to a raw params mapping."""
    merged = deep_merge(raw, overrides or {})
    profile = merged.get("profile", "cpu")
    profiles = {"cpu": {}, **(merged.get("profiles") or {})}  # cpu: the top-level sections as they are
    if profile not in profiles:
        raise ConfigError(f"profile: unknown profile {profile!r} (known: {', '.join(profiles)})")
    merged = deep_merge(merged, profiles[profile] or {})
    # explicit overrides beat the profile overlay
    return deep_merge(merged, overrides or {})


def load_params(path: str | Path | None = None, overrides: list[str] | None = None) -> Params:
    """Read params.yaml (or `path`), apply `overrides` (`key=value`) and the profile overlay."""
    path = Path(path) if path else DEFAULT_PARAMS_PATH
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    merged = resolve_raw(raw, parse_overrides(overrides or []))
    envs = _check_type(merged.get("envs", ["pusht"]), list[str], "envs")
    data = {
        name: build_section(DataConfig, section, f"data.{name}")
        for name, section in (merged.get("data") or {}).items()
    }
    return Params(
        profile=str(merged.get("profile", "cpu")),
        envs=envs,
        data=data,
        clip=build_section(ClipConfig, merged.get("clip"), "clip"),
        model=build_section(ModelConfig, merged.get("model"), "model"),
        train=build_section(TrainConfig, merged.get("train"), "train"),
        plan=build_section(PlanConfig, merged.get("plan"), "plan"),
        eval=build_section(EvalConfig, merged.get("eval"), "eval"),
        probe=build_section(ProbeConfig, merged.get("probe"), "probe"),
        voe=build_section(VoEConfig, merged.get("voe"), "voe"),
        bisect=build_section(BisectConfig, merged.get("bisect"), "bisect"),
        tracking=build_section(TrackingConfig, merged.get("tracking"), "tracking"),
        raw=merged,
    )
