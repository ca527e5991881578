"""Training any world model: plain PyTorch, readable top to bottom (reference §5).

The model owns its objective (`WorldModel.__call__(batch)` returns the loss terms, lewm/models/); this loop
owns everything else: AdamW, linear warm-up then cosine decay stepped every optimiser step, gradient
clipping, bf16 autocast where the device computes bf16 natively (`train.precision`), validation and
collapse diagnostics, checkpoints every N steps, and exact resumption: the batch order is a pure function
of (seed, step) and every random state is checkpointed, so an interrupted run that resumes ends with the
same weights as an uninterrupted one. Under `torchrun` it runs DDP: each rank takes its slice of the
global batch, BatchNorm is synchronised and SIGReg reduces its statistics across ranks.

Checkpoint selection during training (e.g. by planning success) is a `CheckpointSelector` passed in by
the caller, so training does not depend on planning or evaluation code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from lewm.checkpoint import (
    CheckpointVersionError,
    ModelMeta,
    bind_settings,
    current_code,
    model_meta,
    read_checkpoint,
    save_checkpoint,
)
from lewm.config import Params, TrainConfig, mapping_differences, section_mapping
from lewm.data.clips import ActionStats, ClipDataset, strided_trajectories
from lewm.data.storage import EpisodeStore
from lewm.diagnostics import embedding_stats, straightness
from lewm.io import atomic_file, write_json
from lewm.progress import progress_bar
from lewm.runtime import autocast, init_distributed, resolve_device, resolve_precision, seed_everything

# Train params that change how a run is executed or logged, not what it computes.
_EXECUTION_ONLY_KEYS = ("checkpoint_every", "log_every", "val_every", "num_workers", "device")


@dataclass
class TrainOutcome:
    """What a finished training run left behind."""

    step: int
    checkpoint: Path
    metrics: dict[str, float]
    run_id: str | None


def loss_terms(out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The scalar terms of a model's output that training logs: `total` and the model's own loss terms (all
    but the `embeddings`), so a model's terms are logged whatever they are named."""
    return {key: value for key, value in out.items() if key != "embeddings"}


class CheckpointSelector(Protocol):
    """Scores the model every `train.plan_eval_every` steps; the best-scoring state is kept as
    checkpoints/best.pt (lewm.evaluation.PlanningCheck scores by planning success)."""

    def __call__(self, model: nn.Module, meta: ModelMeta) -> dict[str, float]:
        """Metrics of `model` (described by `meta`), logged as validation metrics."""

    def is_best(self, metrics: dict[str, float]) -> bool:
        """True when `metrics` beat every earlier call's."""


# ------------------------------------------------------------------------------------ schedule and order


def learning_rate(step: int, total_steps: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up from 0 over `max(1, warmup_fraction·total)` steps, then cosine decay to 0."""
    warmup = max(1, int(warmup_fraction * total_steps))
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Index batches for optimiser steps [start_step, total_steps).

    Each epoch is a permutation seeded by (seed, epoch); step k takes the k-th slice of it (drop_last).
    The batch at step k is therefore the same whether or not training was interrupted before k. Under
    DDP, rank r takes the r-th contiguous part of the global batch.
    """

    def __init__(
        self, num_items: int, batch_size: int, seed: int, start_step: int, total_steps: int,
        rank: int = 0, world_size: int = 1,
    ) -> None:
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.start_step, self.total_steps = start_step, total_steps
        self.rank, self.world_size = rank, world_size
        self.steps_per_epoch = num_items // batch_size

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)

    def __iter__(self) -> Iterator[list[int]]:
        permutation, permutation_epoch = None, -1
        per_rank = self.batch_size // self.world_size
        for step in range(self.start_step, self.total_steps):
            epoch, index = divmod(step, self.steps_per_epoch)
            if epoch != permutation_epoch:
                generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
                permutation = torch.randperm(self.num_items, generator=generator)
                permutation_epoch = epoch
            batch = permutation[index * self.batch_size : (index + 1) * self.batch_size]
            yield batch[self.rank * per_rank : (self.rank + 1) * per_rank].tolist()


# ------------------------------------------------------------------------------- what determines a run


def result_train_params(cfg: TrainConfig) -> dict[str, Any]:
    """The train params that determine a run's result (execution-only settings such as logging left out)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _EXECUTION_ONLY_KEYS}


def run_config(params: Params, env: str, data_identity: str, **extra: Any) -> dict[str, Any]:
    """Everything that determines a training run's result: the world, the model and its settings (bound
    to the run, `bind_settings`: e.g. the hash of the LeWM checkpoint dinowm freezes), the
    result-determining train params, the clips and the dataset (plus `extra`, e.g. what a λ-search trial
    evaluates). Training checkpoints store it, so a refused resume names what differs."""
    settings = bind_settings(params.model.name, params.model.settings, env)
    return {
        "env": env, "model": {"name": params.model.name, **section_mapping(settings)},
        "train": result_train_params(params.train), "clip": dataclasses.asdict(params.clip),
        "data": data_identity, **extra,
    }


def run_fingerprint(params: Params, env: str, data_identity: str, **extra: Any) -> str:
    """Hash of `run_config`: λ-search trials are cached under it."""
    payload = run_config(params, env, data_identity, **extra)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------- data


@dataclass
class TrainingData:
    """The dataset, its train/val clips and the run length they imply."""

    store: EpisodeStore
    action_stats: ActionStats
    train_set: ClipDataset
    val_set: ClipDataset
    steps_per_epoch: int
    total_steps: int


def load_training_data(data_dir: str | Path, params: Params) -> TrainingData:
    """Open `data_dir` and build the clip datasets (actions normalised with train-split statistics)."""
    cfg, clip = params.train, params.clip
    store = EpisodeStore.open(data_dir)
    action_stats = ActionStats.from_store(store)
    train_set = ClipDataset(store, "train", clip, action_stats)
    val_set = ClipDataset(store, "val", clip, action_stats)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"{data_dir}: {len(train_set)} training clips is fewer than one batch of {cfg.batch_size}"
        )
    if len(val_set) == 0:
        raise ValueError(f"{data_dir}: the val split has no clip of {clip.history + clip.num_preds} frames")
    total_steps = cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch
    return TrainingData(store, action_stats, train_set, val_set, steps_per_epoch, total_steps)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch to `device` (non-blocking when pinned)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def fixed_val_batches(dataset: ClipDataset, batch_size: int, count: int, seed: int) -> list[dict[str, Any]]:
    """The same `count` validation batches every time (a seeded subset of the val clips)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[: batch_size * count].tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order), batch_size=batch_size, generator=generator
    )
    return list(loader)


# ------------------------------------------------------------------------------------------- validation


@torch.no_grad()
def validate(
    model: nn.Module, val_batches: list[dict[str, torch.Tensor]], trajectories: torch.Tensor,
    device: torch.device, autocast: Any,
) -> dict[str, float]:
    """Validation losses, collapse diagnostics and latent straightness, in eval mode."""
    model.eval()
    totals: dict[str, float] = {}
    embeddings = []
    for batch in val_batches:
        with autocast:
            out = model(to_device(batch, device))
        for key, value in loss_terms(out).items():
            totals[key] = totals.get(key, 0.0) + float(value) / len(val_batches)
        embeddings.append(out["embeddings"].float().cpu())
    with autocast:
        z = model.encode(trajectories.to(device)).float().cpu()
    model.train()
    metrics = {f"val/{k}_loss": v for k, v in totals.items()}
    metrics.update({f"val/{k}": v for k, v in embedding_stats(torch.cat(embeddings)).items()})
    metrics["val/straightness"] = straightness(z.flatten(2))
    return metrics


def record_validation(rows: list[dict[str, float]], step: int, metrics: dict[str, float]) -> None:
    """Add `metrics` to the validation history: one row per step, so the losses and a planning check made
    at the same step share a row (and a line of val_history.csv)."""
    if rows and rows[-1]["step"] == step:
        rows[-1].update(metrics)
    else:
        rows.append({"step": step, **metrics})


# ------------------------------------------------------------------------------------------ checkpoints


@dataclass
class RunState:
    """What a checkpoint restores besides weights: where the run stands and what it has logged."""

    step: int = 0
    run_id: str | None = None
    history: dict[str, list[dict[str, float]]] = dataclasses.field(
        default_factory=lambda: {"train": [], "val": []}
    )
    rng: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (CPU, CUDA) states to restore


def resume_state(path: Path, config: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                 device: torch.device, announce: bool) -> RunState:
    """Load the checkpoint at `path` into `model` and `optimizer` when it belongs to this run (same run
    config, same model code); a fresh state otherwise, saying what differs."""
    if not path.exists():
        return RunState()
    try:
        state = read_checkpoint(path, device)
    except CheckpointVersionError:  # an earlier format's checkpoint (checkpoints/ persists) is another run's
        state = {}
    differences = ["an earlier checkpoint format"] if not state else (
        state["code"].differences(current_code()) + mapping_differences(state["config"], config))
    if differences:
        if announce:
            print(f"ignoring {path}: it belongs to another run ({'; '.join(differences)})")
        return RunState()
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if announce:
        print(f"resuming from {path} at step {state['step']}")
    return RunState(state["step"], state.get("mlflow_run_id"), state["history"],
                    (state["rng_cpu"], state.get("rng_cuda")))


def save_training_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: ModelMeta, config: dict[str, Any],
    run: RunState, device: torch.device,
) -> None:
    """Everything `resume` and `load_model` need, with the run config, written atomically."""
    save_checkpoint(path, {
        "model": model.state_dict(),  # SyncBatchNorm keeps BatchNorm's keys
        "optimizer": optimizer.state_dict(), "step": run.step, "meta": meta, "config": config,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "mlflow_run_id": run.run_id, "history": run.history,
    })


# -------------------------------------------------------------------------------------------- the loop


class LossWindow:
    """Running means of the loss terms and gradient norm between two log lines, with throughput."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps, self.started = 0, time.perf_counter()

    def add(self, out: dict[str, torch.Tensor], grad_norm: torch.Tensor) -> None:
        for key, value in {**loss_terms(out), "grad_norm": grad_norm}.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
        self.steps += 1

    def row(self, step: int, lr: float, batch_size: int) -> dict[str, float]:
        elapsed = time.perf_counter() - self.started
        row = {f"train/{k}" + ("_loss" if k != "grad_norm" else ""): v / self.steps
               for k, v in self.sums.items()}
        return {**row, "step": step, "lr": lr, "clips_per_s": self.steps * batch_size / max(elapsed, 1e-9)}


def train(
    params: Params,
    env: str,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    resume: bool = True,
    tracker: Any | None = None,
    on_step: Callable[[int], None] | None = None,
    progress: bool = True,
    selector: CheckpointSelector | None = None,
) -> TrainOutcome:
    """Train world model `model.name` on `data_dir`; write checkpoints, history and metrics to `out_dir`.

    `tracker` (see lewm.tracking.RunTracker) receives params, metrics and artifacts; None logs nothing.
    `on_step(step)` is called after every optimiser step (tests use it to simulate an interruption).
    With `train.plan_eval_every > 0`, `selector` scores the model every that many steps and the best state
    is kept as `checkpoints/best.pt`.
    """
    cfg = params.train
    rank, world_size = init_distributed()
    is_main = rank == 0
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % world_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not divisible by {world_size} processes")
    if cfg.plan_eval_every > 0 and selector is None:
        raise ValueError("train.plan_eval_every > 0 needs a checkpoint selector (the validation manifest "
                         "of the manifest stage)")
    data = load_training_data(data_dir, params)
    meta = model_meta(env, params.model.name, params.model.settings, data.store.manifest["image_size"],
                      data.store.manifest["action_dim"], params.clip.frameskip, params.clip.history,
                      data.action_stats)
    config = run_config(params, env, data.store.identity)

    # Model and optimiser; the model is built from the seeded global RNG, then restored if resuming.
    seed_everything(cfg.seed)
    model = meta.build().to(device)
    if hasattr(model, "load_pretrained"):  # frozen pretrained parts its settings name (WorldModel's hook)
        model.load_pretrained()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    out_dir = Path(out_dir)
    last_checkpoint = out_dir / "checkpoints" / "last.pt"
    announce = is_main and progress
    run = RunState()
    if resume:
        run = resume_state(last_checkpoint, config, model, optimizer, device, announce)
    step_model = model
    if world_size > 1:
        step_model = nn.parallel.DistributedDataParallel(
            nn.SyncBatchNorm.convert_sync_batchnorm(model),
            device_ids=[device.index] if device.type == "cuda" else None,
        )

    # Batches: step-indexed order; loaders draw worker seeds from their own generator, never from the
    # global RNG that dropout and SIGReg directions use, so the global RNG state at step k is the same in a
    # resumed run.
    sampler = StepBatchSampler(len(data.train_set), cfg.batch_size, cfg.seed, run.step, data.total_steps,
                               rank, world_size)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_batches = fixed_val_batches(data.val_set, cfg.batch_size, cfg.val_batches, cfg.seed)
    trajectories = strided_trajectories(data.store, params.clip.frameskip)
    precision = resolve_precision(device, cfg.precision)
    mixed = autocast(device, precision)

    if tracker is not None and is_main:
        run.run_id = tracker.start(run.run_id)
        tracker.log_params({**params.raw, "derived": {
            "total_steps": data.total_steps, "steps_per_epoch": data.steps_per_epoch,
            "train_clips": len(data.train_set), "val_clips": len(data.val_set), "world_size": world_size,
            "device": str(device), "precision": precision, "parameters": model.num_parameters()}})

    if run.rng is not None:
        torch.set_rng_state(run.rng[0])
        if device.type == "cuda" and run.rng[1] is not None:
            torch.cuda.set_rng_state(run.rng[1], device)
    bar = progress_bar(total=data.total_steps, initial=run.step, desc=f"train {env}",
                       enabled=progress and is_main)
    window, started, start_step = LossWindow(), time.perf_counter(), run.step
    step_model.train()
    for batch in loader:
        # One optimiser step.
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(run.step, data.total_steps, cfg.lr, cfg.warmup_fraction)
        with mixed:
            out = step_model(to_device(batch, device))
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        run.step += 1
        window.add(out, grad_norm)
        bar.update(1)
        at_end = run.step == data.total_steps

        # Logging, validation, checkpoint selection and checkpoints, each on its own period.
        if run.step % cfg.log_every == 0 or at_end:
            row = window.row(run.step, optimizer.param_groups[0]["lr"], cfg.batch_size)
            run.history["train"].append(row)
            bar.set_postfix({key: f"{row[f'train/{key}_loss']:.4g}" for key in loss_terms(out)})
            if tracker is not None and is_main:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, run.step)
            window = LossWindow()
        if is_main and (run.step % cfg.val_every == 0 or at_end):
            log_validation(run, validate(model, val_batches, trajectories, device, mixed), tracker)
        if is_main and selector is not None and (run.step % cfg.plan_eval_every == 0 or at_end):
            scores = selector(model, meta)
            log_validation(run, scores, tracker)
            if selector.is_best(scores):
                save_training_checkpoint(out_dir / "checkpoints" / "best.pt", model, optimizer, meta,
                                         config, run, device)
        if is_main and (run.step % cfg.checkpoint_every == 0 or at_end):
            save_training_checkpoint(last_checkpoint, model, optimizer, meta, config, run, device)
        if on_step is not None:
            on_step(run.step)
    bar.close()

    metrics = final_metrics(run.history, time.perf_counter() - started, run.step, start_step, cfg.batch_size)
    metrics["bf16"] = float(precision == "bf16")
    final_path = out_dir / "model.pt"
    if is_main:
        save_training_checkpoint(final_path, model, optimizer, meta, config, run, device)
        write_history(run.history, out_dir)
        write_json(out_dir / "metrics.json", metrics)
        if tracker is not None:
            tracker.log_metrics({f"final/{k}": v for k, v in metrics.items()}, run.step)
            tracker.log_training_outputs(out_dir, model)
            tracker.finish()
    if dist.is_initialized():
        dist.barrier()
    return TrainOutcome(step=run.step, checkpoint=final_path, metrics=metrics, run_id=run.run_id)


def log_validation(run: RunState, metrics: dict[str, float], tracker: Any | None) -> None:
    """Record validation `metrics` at the current step in the history and the tracker."""
    record_validation(run.history["val"], run.step, metrics)
    if tracker is not None:
        tracker.log_metrics(metrics, run.step)


def final_metrics(
    history: dict[str, list[dict[str, float]]], seconds: float, step: int, start_step: int, batch_size: int
) -> dict[str, float]:
    """The run's summary for metrics.json: last logged train window, the latest value of every validation
    metric (losses and planning checks need not share the last row), throughput."""
    metrics: dict[str, float] = {"steps": step}
    if history["train"]:
        last = history["train"][-1]
        metrics.update({k.replace("/", "_"): v for k, v in last.items() if k.startswith("train/")})
    for row in history["val"]:
        metrics.update({k.replace("/", "_"): v for k, v in row.items() if k != "step"})
    steps_run = step - start_step
    metrics["train_seconds"] = seconds
    metrics["clips_per_s"] = steps_run * batch_size / seconds if seconds > 0 else 0.0
    return metrics


def write_history(history: dict[str, list[dict[str, float]]], out_dir: Path) -> None:
    """Per-step curves as CSV (for `dvc plots`) and one PNG (offline-viewable)."""
    from lewm.plots import plot_training_curves

    train_df = pd.DataFrame(history["train"])
    val_df = pd.DataFrame(history["val"])
    for name, table in (("train_history.csv", train_df), ("val_history.csv", val_df)):
        with atomic_file(out_dir / name) as tmp:
            table.to_csv(tmp, index=False)
    plot_training_curves(train_df, val_df, out_dir / "curves.png")
