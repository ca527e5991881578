"""Typed view of `params.yaml`, the single source of every pipeline parameter.

The file's top-level sections hold the default CPU profile. `profile: <name>` applies the overlay
`profiles.<name>` on top of them (a nested mapping of only the keys that differ), so the paper-scale
profile lives in the same file and `dvc exp run -S profile=paper` switches to it; `profiles.cpu` is
empty, and `profiles.smoke` is the tiny chain that `make smoke` runs.

`env_overrides.<env>` holds one world's own values in the same shape (e.g. its training steps), applied
when a stage loads the params of that world (`load_params(env=...)`): params.yaml's entry refines the CPU
profile, a profile may hold entries of its own (`profiles.<name>.env_overrides`), and a profile's general
values beat the CPU profile's per-world ones (`smoke` trains every world for a few steps). Every world in
`envs` has an entry (`{}` for none): DVC stages depend on it.

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

from lewm.parts import MODELS, SOLVERS, part_module, part_names

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PRECISIONS = ("auto", "bf16", "fp32")  # train.precision, plan.precision (lewm.runtime.autocast)
PLAN_COSTS = ("last", "every_step")  # plan.cost (lewm.models.goal_distance_cost)
DEFAULT_PARAMS_PATH = PROJECT_ROOT / "params.yaml"


class ConfigError(ValueError):
    """A parameter file or override is invalid; the message names the offending key."""


@dataclass(frozen=True)
class DataConfig:
    """How one environment's offline dataset is generated and split (by episode)."""

    episodes: int
    max_steps: int
    policy: str  # expert | random
    action_noise: float  # std of Gaussian noise added to the expert's actions (action units)
    policy_kwargs: dict[str, float]  # e.g. the expert's push/travel speeds
    image_size: int
    seed: int
    val_fraction: float
    test_fraction: float
    workers: int  # processes used to generate episodes


@dataclass(frozen=True)
class ClipConfig:
    """Training clips: `history + num_preds` frames, `frameskip` raw steps apart (reference §3)."""

    history: int
    num_preds: int
    frameskip: int


@dataclass(frozen=True)
class ModelConfig:
    """The world model: `model.name` picks one (lewm/models/), `model.<name>` holds its settings (its own
    dataclass, `Config` in the model's module: architecture and training objective)."""

    name: str
    settings: Any


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, checkpointing and logging of any world model's training (reference §5)."""

    batch_size: int
    lr: float
    weight_decay: float
    epochs: int
    max_steps: int  # > 0 caps the number of optimiser steps (0: epochs decide)
    warmup_fraction: float
    grad_clip: float
    seed: int
    checkpoint_every: int
    log_every: int
    val_every: int
    val_batches: int
    plan_eval_every: int  # > 0: planning success on a small val manifest every N steps
    plan_eval_episodes: int
    num_workers: int
    device: str  # auto | cpu | cuda | cuda:N
    precision: str  # auto (bf16 where the device computes it natively, else fp32) | bf16 | fp32


@dataclass(frozen=True)
class PlanConfig:
    """The MPC loop (reference §8): `plan.solver` picks the solver (lewm/solvers/), `plan.<solver>` holds
    its settings (`Config` in the solver's module)."""

    solver: str
    horizon: int  # action blocks
    receding: int  # blocks executed before replanning
    seed: int
    precision: str  # auto | bf16 | fp32, as train.precision (encoding and rollouts of a solve)
    context_frames: int  # observed frames a solve starts from: the current one and those 1 … blocks earlier
    # the imagined latents the goal distance scores (lewm.models.goal_distance_cost): the horizon's `last`
    # (the reference) or the sum over `every_step` (the simulator oracle likewise scores its states)
    cost: str
    settings: Any


@dataclass(frozen=True)
class EvalConfig:
    """Planning evaluation protocol on held-out test episodes (reference §8.3). Every success predicate
    of the world is scored; the world's spec names them."""

    episodes: int
    goal_offset: int
    budget: int
    seed: int
    eval_seeds: list[int]
    gifs: int
    baselines: list[str]  # beside the planner: `random`, `zero` (floors), `oracle` (the simulator's ceiling)


@dataclass(frozen=True)
class ProbeConfig:
    """Linear and MLP probes of frozen embeddings onto physical state (reference §9)."""

    max_frames: int  # frames embedded per split (evenly subsampled)
    ridge_alpha: float
    mlp_hidden: int
    mlp_epochs: int
    mlp_lr: float
    seed: int


@dataclass(frozen=True)
class ImagineConfig:
    """Open-loop imagination and cost fidelity on test episodes (lewm/imagination.py); the horizon is
    `plan.horizon`, the probes use `probe.max_frames` and `probe.ridge_alpha`."""

    starts: int  # test frames the rollouts start from (evenly subsampled)
    random_pairs: int  # random frame pairs for the latent-vs-true distance correlation
    seed: int


@dataclass(frozen=True)
class VoEConfig:
    """Violation-of-expectation trajectories: unperturbed, colour change, teleport (reference §10)."""

    episodes: int
    steps: int
    perturb_step: int
    window: int  # steps shown either side of the perturbation
    policy: str
    action_noise: float
    color: list[int]
    seed: int


@dataclass(frozen=True)
class DecoderConfig:
    """The pixel decoder trained after the fact on frozen embeddings (lewm/decoder.py): display only, it
    turns latents back into images for the planning GIFs and the VoE plot."""

    steps: int  # optimiser steps (Adam, cosine decay to 0)
    batch_size: int
    lr: float
    width: int  # channels of the last upsampling block; earlier (coarser) blocks have up to 8x as many
    l1_weight: float  # loss = MSE + l1_weight · L1, both in [0, 1] pixel space
    max_frames: int  # frames per split, evenly subsampled: train frames fit it, test frames score it
    seed: int


@dataclass(frozen=True)
class BisectConfig:
    """λ search by bisection on log scale (reference §13), criterion on the validation manifest."""

    lambda_lo: float
    lambda_hi: float
    trials: int
    train_steps: int
    val_episodes: int
    min_effective_rank_fraction: float  # below this a trial counts as collapsed (failure)
    min_emb_std: float  # so does a mean per-dimension embedding std below this (rank is scale-free)
    parallel: int
    seed: int


@dataclass(frozen=True)
class CompareConfig:
    """The comparison of world models and solvers (pipelines/compare.py, reference §8.5, §12): baselines
    trained with the world's own train params, every model and solver planned on the same test pairs."""

    envs: list[str]  # worlds the comparison stages run for
    models: list[str]  # world models compared with `model.name` (each trained like it)
    pairs: int  # the first N test-manifest pairs, for every model and solver
    solvers: list[str]  # solvers compared on the trained `model.name`
    curve_models: list[str]  # models whose training curves are compared over seeds
    curve_seeds: list[int]
    curve_steps: int  # training steps of each curve run
    smoothing_window: int  # logged points in the moving average of the smoothness statistic
    timing_pairs: int  # solves per model for the time-per-solve comparison (same process, same settings)


@dataclass(frozen=True)
class TrackingConfig:
    """Where MLflow writes. An empty URI means the project's own SQLite file (mlflow.db)."""

    tracking_uri: str
    experiment: str
    registered_model: str


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
    imagine: ImagineConfig
    voe: VoEConfig
    decoder: DecoderConfig
    bisect: BisectConfig
    compare: CompareConfig
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


def build_section(cls: type, mapping: dict[str, Any] | None, where: str, **given: Any) -> Any:
    """Build dataclass `cls` from `mapping` (plus fields `given` already built), rejecting unknown and
    missing keys and wrong types: params.yaml sets every parameter, the dataclasses hold no defaults."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(given)
    display = {v: k for k, v in _RENAMED_KEYS.items()}
    kwargs = dict(given)
    for key, value in mapping.items():
        name = _RENAMED_KEYS.get(key, key)
        if name not in names:
            known = ", ".join(sorted(display.get(k, k) for k in names))
            raise ConfigError(f"{where}.{key}: unknown parameter (known: {known})")
        kwargs[name] = _check_type(value, hints[name], f"{where}.{key}")
    missing = sorted(display.get(name, name) for name in names - set(kwargs))
    if missing:
        raise ConfigError(f"{where}: missing parameters {', '.join(missing)} (params.yaml sets every one)")
    return cls(**kwargs)


def section_mapping(section: Any) -> dict[str, Any]:
    """A section dataclass as its params.yaml mapping (the inverse of `build_section`)."""
    display = {v: k for k, v in _RENAMED_KEYS.items()}
    return {display.get(k, k): v for k, v in dataclasses.asdict(section).items()}


def build_choice(cls: type, mapping: dict[str, Any] | None, where: str, key: str, package: str) -> Any:
    """Build `cls` for a swappable part of `package` (lewm/parts.py): `mapping[key]` names the part,
    `mapping[<name>]` holds its settings, built as the part module's own `Config` dataclass. Other parts'
    sections are checked too, so a typo there also fails at start-up."""
    mapping = dict(mapping or {})
    name = mapping.pop(key, None)
    known = part_names(package)
    if name not in known:
        raise ConfigError(f"{where}.{key}: unknown {key} {name!r} (known: {', '.join(known)})")
    sections = {part: mapping.pop(part) for part in known if part in mapping}
    if name not in sections:
        raise ConfigError(f"{where}.{name}: no settings for the chosen {key} {name!r}")
    built = {part: build_section(part_module(package, part, key).Config, section, f"{where}.{part}")
             for part, section in sections.items()}
    return build_section(cls, mapping, where, **{key: name, "settings": built[name]})


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


_NOT_OVERRIDABLE = ("profile", "profiles", "envs", "env_overrides")


def resolve_raw(raw: dict[str, Any], overrides: dict[str, Any] | None = None,
                env: str | None = None) -> dict[str, Any]:
    """Apply the selected profile's overlay, then command-line overrides, to a raw params mapping; with
    `env`, each of the three layers (params.yaml's top level, the profile, the overrides) is followed by
    its own `env_overrides.<env>` entry. So a world's entry beats the general values of its layer, and a
    profile (e.g. `smoke`) still beats the CPU profile's per-world values."""
    overrides = overrides or {}
    combined = deep_merge(raw, overrides)
    profile = combined.get("profile", "cpu")
    profiles = {"cpu": {}, **(combined.get("profiles") or {})}  # cpu: the top-level sections as they are
    if profile not in profiles:
        raise ConfigError(f"profile: unknown profile {profile!r} (known: {', '.join(profiles)})")
    layers = [("", raw), (f"profiles.{profile}.", profiles[profile] or {}), ("", overrides)]
    merged: dict[str, Any] = {}
    for where, layer in layers:
        merged = deep_merge(merged, layer)
        entries = _check_type(layer.get("env_overrides") or {}, dict[str, Any], f"{where}env_overrides")
        for name, overlay in entries.items():
            fixed = sorted(set(overlay or {}) & set(_NOT_OVERRIDABLE))
            if fixed:
                raise ConfigError(f"{where}env_overrides.{name}.{fixed[0]}: cannot be set per world")
        if env is not None:
            merged = deep_merge(merged, entries.get(env) or {})
    for name in _check_type(merged.get("envs"), list[str], "envs"):
        if not isinstance((merged.get("env_overrides") or {}).get(name), dict):
            raise ConfigError(f"env_overrides.{name}: missing; every world in `envs` has an entry "
                              f"(`{name}: {{}}` for none), because its DVC stages depend on it")
    return merged


def load_params(path: str | Path | None = None, overrides: list[str] | None = None,
                env: str | None = None) -> Params:
    """Read params.yaml (or `path`), apply `overrides` (`key=value`), the profile overlay and, with `env`,
    that world's `env_overrides` entry."""
    path = Path(path) if path else DEFAULT_PARAMS_PATH
    if not path.is_file():
        raise ConfigError(f"{path}: parameter file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    merged = resolve_raw(raw, parse_overrides(overrides or []), env)
    envs = _check_type(merged.get("envs"), list[str], "envs")
    data = {
        name: build_section(DataConfig, section, f"data.{name}")
        for name, section in (merged.get("data") or {}).items()
    }
    train = build_section(TrainConfig, merged.get("train"), "train")
    plan = build_choice(PlanConfig, merged.get("plan"), "plan", "solver", SOLVERS)
    for where, precision in (("train.precision", train.precision), ("plan.precision", plan.precision)):
        if precision not in PRECISIONS:
            raise ConfigError(f"{where}: {precision!r} is not one of {', '.join(PRECISIONS)}")
    check_minimums(train, "train", {"batch_size": 1, "lr": 0, "epochs": 0, "max_steps": 0,
                                    "checkpoint_every": 1, "log_every": 1, "val_every": 1, "val_batches": 1,
                                    "plan_eval_every": 0, "plan_eval_episodes": 1, "num_workers": 0},
                   strict=("lr",))
    check_minimums(plan, "plan", {"horizon": 1, "receding": 1, "context_frames": 1})
    if plan.cost not in PLAN_COSTS:
        raise ConfigError(f"plan.cost: {plan.cost!r} is not one of {', '.join(PLAN_COSTS)}")
    if train.max_steps == 0 and train.epochs == 0:
        raise ConfigError("train.max_steps and train.epochs: both 0, nothing would train")
    decoder = build_section(DecoderConfig, merged.get("decoder"), "decoder")
    imagine = build_section(ImagineConfig, merged.get("imagine"), "imagine")
    check_minimums(imagine, "imagine", {"starts": 2, "random_pairs": 2})
    check_minimums(decoder, "decoder", {"steps": 1, "batch_size": 1, "width": 1, "max_frames": 1, "lr": 0,
                                        "l1_weight": 0}, strict=("lr",))
    return Params(
        profile=str(merged.get("profile", "cpu")),
        envs=envs,
        data=data,
        clip=build_section(ClipConfig, merged.get("clip"), "clip"),
        model=build_choice(ModelConfig, merged.get("model"), "model", "name", MODELS),
        train=train,
        plan=plan,
        eval=build_section(EvalConfig, merged.get("eval"), "eval"),
        probe=build_section(ProbeConfig, merged.get("probe"), "probe"),
        imagine=imagine,
        voe=build_section(VoEConfig, merged.get("voe"), "voe"),
        decoder=decoder,
        bisect=build_section(BisectConfig, merged.get("bisect"), "bisect"),
        compare=build_section(CompareConfig, merged.get("compare"), "compare"),
        tracking=build_section(TrackingConfig, merged.get("tracking"), "tracking"),
        raw=merged,
    )


def check_minimums(cfg: Any, where: str, minimums: dict[str, float], strict: tuple[str, ...] = ()) -> None:
    """Refuse values below their minimum (`strict` keys: must exceed it), naming the key, so that a value
    that cannot run (a zero interval, batch or learning rate) fails here, not deep inside a loop."""
    for key, low in minimums.items():
        value = getattr(cfg, key)
        if key in strict and not value > low:
            raise ConfigError(f"{where}.{key}: must be > {low}, got {value}")
        if not value >= low:
            raise ConfigError(f"{where}.{key}: must be ≥ {low}, got {value}")


def mapping_differences(recorded: Any, current: Any, where: str = "") -> list[str]:
    """Each dotted key whose value differs between two nested mappings, as `key: <recorded> → <current>`
    (`(none)` for a key one side lacks), so a mismatch message names exactly what changed."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        differences = []
        for key in sorted(set(recorded) | set(current), key=str):
            name = f"{where}.{key}" if where else str(key)
            if key not in recorded or key not in current:
                shown = [repr(recorded[key]) if key in recorded else "(none)",
                         repr(current[key]) if key in current else "(none)"]
                differences.append(f"{name}: {shown[0]} → {shown[1]}")
            else:
                differences += mapping_differences(recorded[key], current[key], name)
        return differences
    if isinstance(recorded, tuple | list) and isinstance(current, tuple | list):
        recorded, current = list(recorded), list(current)
    return [] if recorded == current else [f"{where or '(value)'}: {recorded!r} → {current!r}"]
