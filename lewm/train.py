"""The LeWM training loop: plain PyTorch, readable top to bottom (reference §5).

AdamW, linear warm-up then cosine decay stepped every optimiser step, gradient clipping, bf16 autocast on
GPU (fp32 on CPU), checkpoints every N steps, and exact resumption: the batch order is a pure function of
(seed, step) and every random state is checkpointed, so an interrupted run that resumes ends with the same
weights as an uninterrupted one. Under `torchrun` it runs DDP: each rank takes its slice of the global
batch, BatchNorm is synchronised and SIGReg reduces its statistics across ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from lewm.checkpoint import build_model, model_meta, read_checkpoint, save_checkpoint
from lewm.config import Params, TrainConfig
from lewm.data.clips import ActionStats, ClipDataset
from lewm.data.storage import EpisodeStore
from lewm.diagnostics import embedding_stats, straightness
from lewm.evaluation import evaluate_model, read_manifest
from lewm.io import write_json
from lewm.losses import lewm_loss
from lewm.progress import progress_bar
from lewm.sigreg import SIGReg

# Train params that change how a run is executed or logged, not what it computes.
_EXECUTION_ONLY_KEYS = ("checkpoint_every", "log_every", "val_every", "num_workers", "device")


@dataclass
class TrainOutcome:
    """What a finished training run left behind."""

    step: int
    checkpoint: Path
    metrics: dict[str, float]
    run_id: str | None


def resolve_device(name: str) -> torch.device:
    """`auto` → the local CUDA device if there is one, else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            return torch.device("cuda", local_rank)
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


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


class LossModule(nn.Module):
    """Model + SIGReg behind one `forward`, so DDP sees a single forward per step."""

    def __init__(self, model: nn.Module, sigreg: SIGReg, lambda_: float) -> None:
        super().__init__()
        self.model, self.sigreg, self.lambda_ = model, sigreg, lambda_

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return lewm_loss(self.model, batch, self.sigreg, self.lambda_)


def init_distributed() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun; return (rank, world_size)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def result_train_params(cfg: TrainConfig) -> dict[str, Any]:
    """The train params that determine a run's result (execution-only settings such as logging left out)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _EXECUTION_ONLY_KEYS}


def run_fingerprint(params: Params, meta: dict[str, Any], data_id: str) -> str:
    """Hash of everything that determines the result; a checkpoint resumes only into the same run."""
    payload = {
        "train": result_train_params(params.train), "meta": meta, "clip": dataclasses.asdict(params.clip),
        "data": data_id,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """Move the tensors of a batch to `device` (non-blocking when pinned)."""
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def validation_trajectories(
    store: EpisodeStore, frameskip: int, max_episodes: int = 16, split: str = "val"
) -> torch.Tensor:
    """Frames of up to `max_episodes` held-out episodes every `frameskip` steps, (E, T, 3, H, W) uint8,
    for the straightening metric. Episodes are cut to the shortest one so they stack."""
    episodes = store.episode_ids(split)[:max_episodes]
    sequences = [np.asarray(store.frames[store.episode_rows(ep)][::frameskip]) for ep in episodes]
    length = min(len(s) for s in sequences)
    stacked = np.stack([s[:length] for s in sequences])
    return torch.from_numpy(stacked).permute(0, 1, 4, 2, 3).contiguous()


@torch.no_grad()
def validate(
    loss_module: LossModule, val_batches: list[dict[str, torch.Tensor]], trajectories: torch.Tensor,
    device: torch.device, autocast: Any,
) -> dict[str, float]:
    """Validation losses, collapse diagnostics and latent straightness, in eval mode."""
    loss_module.eval()
    totals: dict[str, float] = {"pred": 0.0, "sigreg": 0.0, "total": 0.0}
    embeddings = []
    for batch in val_batches:
        with autocast:
            out = loss_module(to_device(batch, device))
        for key in totals:
            totals[key] += float(out[key]) / len(val_batches)
        embeddings.append(out["embeddings"].float().cpu())
    with autocast:
        z = loss_module.model.encode(trajectories.to(device)).float().cpu()
    loss_module.train()
    metrics = {f"val/{k}_loss": v for k, v in totals.items()}
    metrics.update({f"val/{k}": v for k, v in embedding_stats(torch.cat(embeddings)).items()})
    metrics["val/straightness"] = straightness(z)
    return metrics


def _fixed_val_batches(dataset: ClipDataset, batch_size: int, count: int, seed: int) -> list[dict[str, Any]]:
    """The same `count` validation batches every time (a seeded subset of the val clips)."""
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator)[: batch_size * count].tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order), batch_size=batch_size, generator=generator
    )
    return list(loader)


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
    plan_manifest: str | Path | None = None,
) -> TrainOutcome:
    """Train LeWM on `data_dir`; write checkpoints, history and metrics to `out_dir`.

    `tracker` (see lewm.tracking.RunTracker) receives params, metrics and artifacts; None logs nothing.
    `on_step(step)` is called after every optimiser step (tests use it to simulate an interruption).
    With `train.plan_eval_every > 0` and a `plan_manifest` (validation start/goal pairs), planning success
    is measured every that many steps and the best checkpoint by success rate is kept as
    `checkpoints/best.pt`.
    """
    cfg, clip = params.train, params.clip
    rank, world_size = init_distributed()
    is_main = rank == 0
    device = resolve_device(cfg.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if cfg.batch_size % world_size:
        raise ValueError(f"train.batch_size={cfg.batch_size} is not divisible by {world_size} processes")

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

    meta = model_meta(
        env=env, model_cfg=params.model, image_size=store.manifest["image_size"],
        action_dim=store.manifest["action_dim"], frameskip=clip.frameskip, history=clip.history,
        action_stats=action_stats,
    )
    fingerprint = run_fingerprint(params, meta, store.manifest.get("created", ""))

    seed_everything(cfg.seed)
    model = build_model(meta).to(device)
    sigreg = SIGReg(num_projections=cfg.sigreg_projections, knots=cfg.sigreg_knots, t_max=cfg.sigreg_t_max)
    loss_module: nn.Module = LossModule(model, sigreg, cfg.lambda_)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    out_dir = Path(out_dir)
    checkpoint_dir = out_dir / "checkpoints"
    last_checkpoint = checkpoint_dir / "last.pt"
    start_step, run_id, history = 0, None, {"train": [], "val": []}
    resumed_rng = None
    if resume and last_checkpoint.exists():
        state = read_checkpoint(last_checkpoint, device)
        if state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            resumed_rng = state["rng_cpu"], state.get("rng_cuda")
            start_step, run_id, history = state["step"], state.get("mlflow_run_id"), state["history"]
            if is_main and progress:
                print(f"resuming from {last_checkpoint} at step {start_step}/{total_steps}")
        elif is_main and progress:
            print(f"ignoring {last_checkpoint}: it belongs to a run with other parameters or data")

    if world_size > 1:
        loss_module.model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    core: LossModule = loss_module.module if world_size > 1 else loss_module  # type: ignore[assignment]

    sampler = StepBatchSampler(
        len(train_set), cfg.batch_size, cfg.seed, start_step, total_steps, rank, world_size
    )
    # Loaders draw worker seeds from their own generator, never from the global RNG that dropout and
    # SIGReg directions use, so the global RNG state at step k is the same in a resumed run.
    loader = torch.utils.data.DataLoader(
        train_set, batch_sampler=sampler, num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    plan_check = None
    if cfg.plan_eval_every > 0:
        if plan_manifest is None:
            raise ValueError("train.plan_eval_every > 0 needs a validation manifest (run the manifest stage)")
        plan_check = PlanCheck(params, store, meta, read_manifest(plan_manifest))
    val_batches = _fixed_val_batches(val_set, cfg.batch_size, cfg.val_batches, cfg.seed)
    trajectories = validation_trajectories(store, clip.frameskip)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_bf16)

    if tracker is not None and is_main:
        run_id = tracker.start(run_id)
        tracker.log_params(
            {**params.raw, "derived": {"total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                                       "train_clips": len(train_set), "val_clips": len(val_set),
                                       "world_size": world_size, "device": str(device),
                                       "parameters": model.num_parameters()}}
        )

    def checkpoint(step: int, path: Path) -> None:
        save_checkpoint(path, {
            "model": core.model.state_dict(),  # SyncBatchNorm keeps BatchNorm's keys
            "optimizer": optimizer.state_dict(), "step": step, "meta": meta, "fingerprint": fingerprint,
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "mlflow_run_id": run_id, "history": history,
        })

    window: dict[str, float] = {"pred": 0.0, "sigreg": 0.0, "total": 0.0, "grad_norm": 0.0}
    window_steps, window_start = 0, time.perf_counter()
    started = time.perf_counter()
    if resumed_rng is not None:
        torch.set_rng_state(resumed_rng[0])
        if device.type == "cuda" and resumed_rng[1] is not None:
            torch.cuda.set_rng_state(resumed_rng[1], device)
    bar = progress_bar(total=total_steps, initial=start_step, desc=f"train {env}",
                       enabled=progress and is_main)
    loss_module.train()
    step = start_step
    for batch in loader:
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, total_steps, cfg.lr, cfg.warmup_fraction)
        with autocast:
            out = loss_module(to_device(batch, device))
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        for key in ("pred", "sigreg", "total"):
            window[key] += float(out[key].detach())
        window["grad_norm"] += float(grad_norm)
        window_steps += 1
        bar.update(1)

        if step % cfg.log_every == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            row = {f"train/{k}" + ("_loss" if k != "grad_norm" else ""): v / window_steps
                   for k, v in window.items()}
            row.update({"step": step, "lr": optimizer.param_groups[0]["lr"],
                        "clips_per_s": window_steps * cfg.batch_size / max(elapsed, 1e-9)})
            history["train"].append(row)
            bar.set_postfix(pred=f"{row['train/pred_loss']:.4f}", sigreg=f"{row['train/sigreg_loss']:.3f}")
            if tracker is not None and is_main:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step)
            window = dict.fromkeys(window, 0.0)
            window_steps, window_start = 0, time.perf_counter()

        if (step % cfg.val_every == 0 or step == total_steps) and is_main:
            val_metrics = validate(core, val_batches, trajectories, device, autocast)
            record_validation(history["val"], step, val_metrics)
            if tracker is not None:
                tracker.log_metrics(val_metrics, step)

        if plan_check is not None and is_main and (step % cfg.plan_eval_every == 0 or step == total_steps):
            plan_metrics = plan_check(core.model)
            record_validation(history["val"], step, plan_metrics)
            if tracker is not None:
                tracker.log_metrics(plan_metrics, step)
            if plan_check.is_best(plan_metrics):
                checkpoint(step, checkpoint_dir / "best.pt")

        if is_main and (step % cfg.checkpoint_every == 0 or step == total_steps):
            checkpoint(step, last_checkpoint)
        if on_step is not None:
            on_step(step)
    bar.close()

    metrics = final_metrics(history, time.perf_counter() - started, step, start_step, cfg.batch_size)
    final_path = out_dir / "model.pt"
    if is_main:
        checkpoint(step, final_path)
        write_history(history, out_dir)
        write_json(out_dir / "metrics.json", metrics)
        if tracker is not None:
            tracker.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step)
            tracker.log_training_outputs(out_dir, core.model)
            tracker.finish()
    if dist.is_initialized():
        dist.barrier()
    return TrainOutcome(step=step, checkpoint=final_path, metrics=metrics, run_id=run_id)


class PlanCheck:
    """Planning success on the first `train.plan_eval_episodes` validation pairs, for checkpoint choice."""

    def __init__(self, params: Params, store: EpisodeStore, meta: dict[str, Any], manifest: Any) -> None:
        self.params, self.store, self.manifest = params, store, manifest
        self.meta = {**meta, "action_stats": ActionStats.from_dict(meta["action_stats"])}
        self.best = -1.0

    def __call__(self, model: nn.Module) -> dict[str, float]:
        _, summary = evaluate_model(
            model, self.meta, self.manifest, self.store, self.params.plan, self.params.eval,
            episodes=self.params.train.plan_eval_episodes, baselines=(),
        )
        return {f"val/plan_{k.removeprefix('lewm.')}": v for k, v in summary.items()
                if k.startswith("lewm.") and k.endswith("success_rate")}

    def is_best(self, metrics: dict[str, float]) -> bool:
        """True when the reference-predicate success rate beats every earlier check."""
        rate = metrics.get("val/plan_reference.success_rate", float("nan"))
        if math.isfinite(rate) and rate > self.best:
            self.best = rate
            return True
        return False


def record_validation(rows: list[dict[str, float]], step: int, metrics: dict[str, float]) -> None:
    """Add `metrics` to the validation history: one row per step, so the losses and a planning check made
    at the same step share a row (and a line of val_history.csv)."""
    if rows and rows[-1]["step"] == step:
        rows[-1].update(metrics)
    else:
        rows.append({"step": step, **metrics})


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
    train_df.to_csv(out_dir / "train_history.csv", index=False)
    val_df.to_csv(out_dir / "val_history.csv", index=False)
    plot_training_curves(train_df, val_df, out_dir / "curves.png")
