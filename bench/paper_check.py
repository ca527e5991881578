"""The paper profile end to end at small size: shapes, memory and speed of training and planning.

    .venv/bin/python bench/paper_check.py --device cpu --steps 3 --batch-size 8 --episodes 12 --pairs 1
    python3 bench/paper_check.py --device cuda --steps 300 --episodes 200 --pairs 6   # on a GPU

Generates a small Push-T dataset at the paper's 224 px, trains the paper model (ViT-tiny/14, predictor
6×16×64, `profiles.paper`) for `--steps` optimiser steps at `--batch-size` (paper: 128) with the real
training loop, then plans on `--pairs` held-out start/goal pairs with the paper's CEM (300 samples, 30
iterations, horizon 5). Prints and writes (`--out`) the training step time, clips/s, peak memory and time
per CEM solve beside the paper's 0.98 s. Nothing is tracked in MLflow; everything lives in a temp directory.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from lewm.checkpoint import load_model
from lewm.config import load_params
from lewm.data.generate import generate_dataset
from lewm.data.storage import EpisodeStore
from lewm.evaluation import build_manifest, evaluate_model
from lewm.io import write_json
from lewm.runtime import resolve_precision
from lewm.train import train

PAPER_SOLVE_SECONDS = 0.98  # reference §8.5: LeWM's time per planning solve on a GPU


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--workers", type=int, default=16, help="generation processes")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--out", default="paper_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    overrides = [
        "profile=paper", f"data.pusht.episodes={args.episodes}", f"data.pusht.workers={args.workers}",
        f"train.max_steps={args.steps}", f"train.batch_size={args.batch_size}", f"train.device={args.device}",
        f"train.val_every={args.steps}", f"train.checkpoint_every={args.steps}", "train.val_batches=2",
        f"train.log_every={max(1, args.steps // 10)}",
        f"train.num_workers={6 if device.type == 'cuda' else 0}",
    ]
    params = load_params(overrides=overrides)
    report: dict[str, object] = {"device": str(device), "overrides": overrides,
                                 "precision": resolve_precision(device, params.train.precision)}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    with tempfile.TemporaryDirectory(prefix="paper-check-") as root:
        started = time.perf_counter()
        data_dir = generate_dataset("pusht", params.data_for("pusht"), Path(root) / "data", progress=False)
        report["generate_seconds"] = time.perf_counter() - started

        outcome = train(params, "pusht", data_dir, Path(root) / "train", resume=False, progress=False)
        history = pd.read_csv(Path(root) / "train" / "train_history.csv")
        steady = float(history["clips_per_s"].iloc[-1])  # the last log window: no start-up, no validation
        report.update({
            "train_steps": outcome.step, "train_seconds": outcome.metrics["train_seconds"],
            "clips_per_s_overall": outcome.metrics["clips_per_s"], "clips_per_s_steady": steady,
            "step_seconds_steady": args.batch_size / steady,
            "train_pred_loss_first_last": [float(history["train/pred_loss"].iloc[0]),
                                           float(history["train/pred_loss"].iloc[-1])],
            "val_pred_loss": outcome.metrics.get("val_pred_loss"),
            "train_peak_memory_gib": peak_memory_gib(device),
        })

        loaded = load_model(outcome.checkpoint, device)
        store = EpisodeStore.open(data_dir)
        manifest = build_manifest(store, split="test", n=args.pairs, goal_offset=params.eval.goal_offset,
                                  seed=params.eval.seed)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _, summary = evaluate_model(loaded.model, loaded.meta, manifest, store, params.plan, params.eval,
                                    baselines=())
        report.update({
            "cem": {"samples": params.plan.settings.samples, "iterations": params.plan.settings.iterations,
                    "horizon": params.plan.horizon},
            "solves": summary["num_solves"], "solve_median_s": summary["plan_time_median_s"],
            "solve_p90_s": summary["plan_time_p90_s"],
            "solve_vs_paper": summary["plan_time_median_s"] / PAPER_SOLVE_SECONDS,
            "plan_peak_memory_gib": peak_memory_gib(device),
            "parameters": loaded.model.num_parameters()["total"],
        })
    for key, value in report.items():
        print(f"{key}: {value}")
    write_json(args.out, report)


if __name__ == "__main__":
    main()
