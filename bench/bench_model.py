"""LeWM micro-benchmarks at the CPU profile of params.yaml (runs in well under a minute on 2 cores).

- training step (encode + predict + SIGReg, backward, AdamW step) → seconds/step and clips/s;
- SIGReg forward+backward at M = 1024 against M = 256 (baseline), and its share of the training step;
- CEM-sized rollout (300 candidates × 5 blocks, eval + inference mode) against one `predict` call on the
  same number of candidates (baseline), and the implied time of a 30-iteration CEM solve.
Every time is the median of ≥ 3 repeats after a warm-up; ratios compare timings from this same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from lewm.config import load_params
from lewm.models.lewm import LeWM
from lewm.sigreg import SIGReg

ACTION_DIM = 2  # Push-T


def median_seconds(fn: Callable[[], object], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    params = load_params()
    if params.model.name != "lewm":
        raise SystemExit(f"bench_model measures LeWM; params.yaml has model.name={params.model.name!r}")
    clip, train, plan, cem = params.clip, params.train, params.plan, params.plan.settings
    model_cfg = params.model.settings
    image_size = params.data_for(params.envs[0]).image_size
    frames = clip.history + clip.num_preds
    torch.manual_seed(0)
    model = LeWM(model_cfg, image_size, ACTION_DIM, clip.frameskip, clip.history)
    sizes = model.num_parameters()
    print(
        f"profile {params.profile}: {model_cfg.encoder} encoder, image {image_size}, "
        f"batch {train.batch_size} × {frames} frames, {torch.get_num_threads()} threads; parameters "
        + ", ".join(f"{k} {v:,}" for k, v in sizes.items())
    )

    batch = {
        "pixels": torch.randint(
            0, 256, (train.batch_size, frames, 3, image_size, image_size), dtype=torch.uint8
        ),
        "actions": torch.randn(train.batch_size, frames, clip.frameskip * ACTION_DIM),
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)

    def train_step() -> None:
        out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        optimizer.step()

    model.train()
    step_s = median_seconds(train_step)
    print(f"train step (fwd+bwd+SIGReg+AdamW): {step_s:.3f} s  → {train.batch_size / step_s:.1f} clips/s")

    embeddings = torch.randn(train.batch_size, frames, model_cfg.embed_dim, requires_grad=True)

    def sigreg_seconds(num_projections: int) -> float:
        module = SIGReg(num_projections, model_cfg.sigreg_knots, model_cfg.sigreg_t_max)
        return median_seconds(lambda: module(embeddings).backward(), repeats=5)

    sigreg_256, sigreg_1024 = sigreg_seconds(256), sigreg_seconds(1024)
    print(
        f"SIGReg fwd+bwd on {tuple(embeddings.shape)}: M=256 {sigreg_256 * 1e3:.1f} ms (baseline), "
        f"M=1024 {sigreg_1024 * 1e3:.1f} ms = {sigreg_1024 / sigreg_256:.2f}× baseline, "
        f"{100 * sigreg_1024 / step_s:.1f}% of a training step"
    )

    model.eval()
    z0 = torch.randn(1, model_cfg.embed_dim)
    plans = torch.randn(cem.samples, plan.horizon, clip.frameskip * ACTION_DIM)
    context = torch.randn(cem.samples, clip.history, model_cfg.embed_dim)
    with torch.inference_mode():
        predict_s = median_seconds(lambda: model.predict(context, plans[:, : clip.history]), repeats=5)
        rollout_s = median_seconds(lambda: model.rollout(z0, plans), repeats=5)
    print(
        f"rollout {cem.samples} candidates × {plan.horizon} blocks: {rollout_s * 1e3:.1f} ms "
        f"= {rollout_s / predict_s:.2f}× one predict call on {cem.samples} × {clip.history} tokens "
        f"({predict_s * 1e3:.1f} ms, baseline); CEM solve of {cem.iterations} iterations ≈ "
        f"{cem.iterations * rollout_s:.2f} s"
    )


if __name__ == "__main__":
    main()
