"""The speed suite: every figure beside a reference measured in the same run, written to bench/results.json.

    .venv/bin/python bench/suite.py [--repeats 5] [--out bench/results.json] [--set key=value ...]

Sections (medians over repeats, after a warm-up):
- `gemm`: the machine's matmul peak, large square fp32 and bf16 GEMMs through torch (reference: fp32).
- `train`: one optimiser step of the params.yaml model on a batch of `train.batch_size` clips, in fp32
  (reference: what training ran before `train.precision`) and at `train.precision`; clips/s, and the
  achieved FLOP/s as a fraction of the GEMM peak of the same precision. FLOPs per clip are counted by
  `torch.utils.flop_counter.FlopCounterMode` over one forward and backward (matmuls, convolutions and
  attention; element-wise work is not counted, so the fraction is a lower bound of the compute use).
- `loader`: clips/s of the training DataLoader on the dataset (`data/<env>`, if generated) against the
  training step's clips/s: above 1 the loader is never the bottleneck.
- `plan`: one CEM solve (encode + `plan.cem.samples` candidates × iterations × horizon rollouts), at 10 and
  30 iterations, of the agent at `plan.precision` against a plain reference loop: fp32, and the
  predictor's action conditioning recomputed for every window position (the rollout before caching).
- `env`: per world in `envs`, physics steps/s (reference), render frames/s at its `data` image size, and
  data-generation transitions/s (one worker, writing a dataset).
- `compile` (only when asked for with `--sections`): the training step through `torch.compile` against
  eager, and the compile time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from lewm.checkpoint import ModelMeta, model_meta
from lewm.config import PROJECT_ROOT, Params, load_params
from lewm.data.clips import ActionStats, ClipDataset
from lewm.data.generate import generate_dataset
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world
from lewm.io import write_json
from lewm.models import CostFn, goal_distance_cost
from lewm.planning import LatentMPCAgent
from lewm.runtime import autocast, native_bf16, resolve_precision
from lewm.train import StepBatchSampler

Row = dict[str, Any]


def median_seconds(run: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `run()` over `repeats` calls after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def row(section: str, figure: str, value: float, unit: str, reference: str = "", ratio: float | None = None,
        ) -> Row:
    """One line of the table (and of results.json)."""
    return {"section": section, "figure": figure, "value": value, "unit": unit, "reference": reference,
            "ratio": ratio}


# ------------------------------------------------------------------------------------------------ gemm


def gemm_peak(dtype: torch.dtype, repeats: int, size: int = 2048) -> float:
    """FLOP/s of a (size × size) @ (size × size) matmul in `dtype`."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    return 2 * size**3 / median_seconds(lambda: a @ b, repeats, warmup=2)


def gemm_rows(repeats: int) -> tuple[list[Row], dict[str, float]]:
    peaks = {"fp32": gemm_peak(torch.float32, repeats), "bf16": gemm_peak(torch.bfloat16, repeats)}
    return [
        row("gemm", "fp32 GEMM 2048³", peaks["fp32"] / 1e9, "GFLOP/s"),
        row("gemm", "bf16 GEMM 2048³", peaks["bf16"] / 1e9, "GFLOP/s", "fp32 GEMM",
            peaks["bf16"] / peaks["fp32"]),
    ], peaks


# ----------------------------------------------------------------------------------------------- train


def profile_meta(params: Params) -> ModelMeta:
    """The meta of the params.yaml model on the first world, with identity action statistics."""
    env = params.envs[0]
    action_dim = get_world(env).env_class.action_dim
    return model_meta(env, params.model.name, params.model.settings, params.data_for(env).image_size,
                      action_dim, params.clip.frameskip, params.clip.history,
                      ActionStats(np.zeros(action_dim), np.ones(action_dim)))


def synthetic_batch(params: Params, meta: ModelMeta) -> dict[str, torch.Tensor]:
    """A batch of `train.batch_size` clips of random pixels and actions (timing does not need real data)."""
    frames = params.clip.history + params.clip.num_preds
    generator = torch.Generator().manual_seed(0)
    size = meta.image_size
    return {
        "pixels": torch.randint(0, 256, (params.train.batch_size, frames, 3, size, size), dtype=torch.uint8,
                                generator=generator),
        "actions": torch.randn(params.train.batch_size, frames, meta.frameskip * meta.action_dim,
                               generator=generator),
    }


def train_step_seconds(params: Params, meta: ModelMeta, precision: str, repeats: int,
                       compiled: bool = False) -> tuple[float, float]:
    """(median seconds per optimiser step, FLOPs per step) of the training step at `precision`; with
    `compiled`, the model goes through `torch.compile` and the FLOPs slot holds the compile seconds."""
    torch.manual_seed(0)
    model = meta.build().train()
    cfg = params.train
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    batch = synthetic_batch(params, meta)
    device = torch.device("cpu")

    def step() -> None:
        with autocast(device, precision):
            out = model(batch)
        optimizer.zero_grad(set_to_none=True)
        out["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()

    if compiled:
        model.compile()
        started = time.perf_counter()
        step()  # compiles forward and backward
        return median_seconds(step, repeats, warmup=1), time.perf_counter() - started
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return median_seconds(step, repeats, warmup=2), float(counter.get_total_flops())


def train_rows(params: Params, meta: ModelMeta, peaks: dict[str, float], repeats: int,
               ) -> tuple[list[Row], float]:
    precision = resolve_precision(torch.device("cpu"), params.train.precision)
    batch_size = params.train.batch_size
    reference_s, flops = train_step_seconds(params, meta, "fp32", repeats)
    rows = [row("train", "step fp32 (reference)", batch_size / reference_s, "clips/s"),
            row("train", "FLOPs per clip (fwd+bwd)", flops / batch_size / 1e9, "GFLOP"),
            row("train", "achieved fp32", flops / reference_s / 1e9, "GFLOP/s", "fp32 GEMM peak",
                flops / reference_s / peaks["fp32"])]
    step_s = reference_s
    if precision != "fp32":
        step_s, _ = train_step_seconds(params, meta, precision, repeats)
        rows += [row("train", f"step {precision} (train.precision)", batch_size / step_s, "clips/s",
                     "step fp32", reference_s / step_s),
                 row("train", f"achieved {precision}", flops / step_s / 1e9, "GFLOP/s",
                     f"{precision} GEMM peak", flops / step_s / peaks[precision])]
    return rows, batch_size / step_s


def compile_rows(params: Params, meta: ModelMeta, repeats: int) -> list[Row]:
    """The training step through `torch.compile` at `train.precision`, against eager, with compile time."""
    precision = resolve_precision(torch.device("cpu"), params.train.precision)
    eager_s, _ = train_step_seconds(params, meta, precision, repeats)
    compiled_s, compile_s = train_step_seconds(params, meta, precision, repeats, compiled=True)
    batch_size = params.train.batch_size
    return [row("compile", f"step {precision} eager (reference)", batch_size / eager_s, "clips/s"),
            row("compile", f"step {precision} torch.compile", batch_size / compiled_s, "clips/s",
                "eager", eager_s / compiled_s),
            row("compile", "compile time (first step)", compile_s, "s", "eager steps",
                compile_s / eager_s)]


# ---------------------------------------------------------------------------------------------- loader


def loader_rows(params: Params, train_clips_per_s: float, batches: int = 30) -> list[Row]:
    """The DataLoader's clips/s on the real dataset against the training step's rate."""
    data_dir = PROJECT_ROOT / "data" / params.envs[0]
    if not (data_dir / "manifest.json").is_file():
        print(f"loader: skipped, no dataset in {data_dir} (run the generate stage)")
        return []
    store = EpisodeStore.open(data_dir)
    dataset = ClipDataset(store, "train", params.clip, ActionStats.from_store(store))
    cfg = params.train
    sampler = StepBatchSampler(len(dataset), cfg.batch_size, cfg.seed, 0, batches)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    started = time.perf_counter()
    for _ in loader:
        pass
    rate = batches * cfg.batch_size / (time.perf_counter() - started)
    return [row("loader", f"DataLoader, {cfg.num_workers} workers", rate, "clips/s",
                "training step", rate / train_clips_per_s)]


# ------------------------------------------------------------------------------------------------ plan


def reference_rollout(model: torch.nn.Module, z_context: torch.Tensor, action_blocks: torch.Tensor,
                      ) -> torch.Tensor:
    """The rollout as a plain loop: every window computed whole (no cached keys and values, every output
    of the last block) and its action conditioning recomputed for every window position."""
    batch, horizon = action_blocks.shape[:2]
    action_emb = model.action_encoder(action_blocks)
    sequence = list(z_context.reshape(1, 1, -1).expand(batch, -1, -1).unbind(1))
    for end in range(1, 1 + horizon):
        start = max(0, end - model.history)
        window = torch.stack(sequence[start:end], dim=1)
        sequence.append(model.pred_proj(model.predictor(window, action_emb[:, start:end])[:, -1]))
    return torch.stack(sequence[1:], dim=1)


class ReferenceModel(torch.nn.Module):
    """The model with the reference rollout, for the plain-loop baseline of the same agent and solver."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.image_size, self.history = model.image_size, model.history

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode(pixels)

    def rollout(self, z_context: torch.Tensor, action_blocks: torch.Tensor,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        if context_actions is not None:
            raise ValueError("the reference loop plans from one observed frame (plan.context_frames: 1)")
        return reference_rollout(self.model, z_context, action_blocks)

    def planning_cost(self, z_context: torch.Tensor, z_goal: torch.Tensor,
                      context_actions: torch.Tensor | None = None, steps: str = "last") -> CostFn:
        return goal_distance_cost(self, z_context, z_goal, context_actions, steps)


def solve_seconds(model: torch.nn.Module, meta: ModelMeta, params: Params, iterations: int, precision: str,
                  repeats: int) -> float:
    """Median seconds of one `LatentMPCAgent.act` (a full solve) at `iterations` and `precision`."""
    cem = dataclasses.replace(params.plan.settings, iterations=iterations)
    plan_cfg = dataclasses.replace(params.plan, settings=cem, precision=precision)
    frames = np.random.default_rng(0).integers(0, 256, (2, meta.image_size, meta.image_size, 3), np.uint8)
    agent = LatentMPCAgent(model, meta, plan_cfg, seed=0)
    agent.start({"pixels": frames[0]})
    return median_seconds(lambda: agent.act({"pixels": frames[1]}), repeats)


def plan_rows(params: Params, meta: ModelMeta, repeats: int) -> list[Row]:
    precision = resolve_precision(torch.device("cpu"), params.plan.precision)
    torch.manual_seed(0)
    model = meta.build().eval()
    reference = ReferenceModel(model).eval()
    rows = []
    for iterations in (10, 30):
        reps = repeats if iterations == 10 else max(2, repeats // 2)
        reference_s = solve_seconds(reference, meta, params, iterations, "fp32", reps)
        rows.append(row("plan", f"CEM {iterations} it, plain fp32 loop (reference)", reference_s, "s/solve"))
        for mode in dict.fromkeys(("fp32", precision)):
            solve_s = solve_seconds(model, meta, params, iterations, mode, reps)
            rows.append(row("plan", f"CEM {iterations} it, agent {mode}", solve_s, "s/solve",
                            "plain fp32 loop", reference_s / solve_s))
    return rows


# ------------------------------------------------------------------------------------------------- env


def env_rows(params: Params, env_name: str, repeats: int, steps: int = 400) -> list[Row]:
    """Physics, render, step + render and data-generation rates of one world at its `data` image size."""
    world = get_world(env_name)
    data = params.data_for(env_name)
    env = world.make_env(image_size=data.image_size, max_steps=steps)
    render = env.render
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (steps, world.env_class.action_dim)).astype(np.float32)

    def rollout() -> None:
        env.reset(seed=0)
        for action in actions:
            env.step(action)

    blank = np.zeros((data.image_size, data.image_size, 3), np.uint8)
    env.render = lambda: blank
    physics = steps / median_seconds(rollout, repeats)
    env.render = render
    stepped = steps / median_seconds(rollout, repeats)
    renders = steps / median_seconds(lambda: [render() for _ in range(steps)], repeats)
    env.close()
    cfg = dataclasses.replace(data, episodes=20, workers=1)
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as root:
        generated = cfg.episodes * cfg.max_steps / median_seconds(
            lambda: generate_dataset(env_name, cfg, Path(root) / f"d{time.monotonic_ns()}", progress=False),
            max(1, repeats // 2), warmup=0)
    return [row("env", f"{env_name} physics only", physics, "steps/s"),
            row("env", f"{env_name} render {data.image_size} px", renders, "frames/s", "physics",
                renders / physics),
            row("env", f"{env_name} step + render", stepped, "steps/s", "physics", stepped / physics),
            row("env", f"{env_name} generation, 1 worker", generated, "transitions/s", "physics",
                generated / physics)]


# ---------------------------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "native_bf16": native_bf16(torch.device("cpu")), "python": sys.version.split()[0],
            "commit": commit + ("+dirty" if dirty else ""), "load_average": os.getloadavg()[0]}


def print_table(rows: list[Row]) -> None:
    print(f"{'section':8} {'figure':44} {'value':>12} {'unit':14} {'ratio':>8}  reference")
    for r in rows:
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else ""
        print(f"{r['section']:8} {r['figure']:44} {r['value']:12.4g} {r['unit']:14} {ratio:>8}  "
              f"{r['reference']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per figure (median)")
    parser.add_argument("--out", default=str(PROJECT_ROOT / "bench" / "results.json"))
    parser.add_argument("--sections", default="gemm,train,loader,plan,env",
                        help="comma-separated; `compile` (torch.compile of the training step) is extra")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    params = load_params(overrides=args.overrides)
    sections = args.sections.split(",")
    meta = profile_meta(params)
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} "
          f"({info['threads']} threads), "
          f"native bf16 {info['native_bf16']}, commit {info['commit']}, profile {params.profile}")
    rows, peaks = gemm_rows(args.repeats)
    train_rate = float("nan")
    if "train" in sections or "loader" in sections:
        train, train_rate = train_rows(params, meta, peaks, args.repeats)
        rows += train if "train" in sections else []
    if "loader" in sections:
        rows += loader_rows(params, train_rate)
    if "compile" in sections:
        rows += compile_rows(params, meta, args.repeats)
    if "plan" in sections:
        rows += plan_rows(params, meta, args.repeats)
    if "env" in sections:
        for env_name in params.envs:
            rows += env_rows(load_params(overrides=args.overrides, env=env_name), env_name, args.repeats)
    print_table(rows)
    out = Path(args.out)
    write_json(out, {"machine": info, "profile": params.profile, "overrides": args.overrides,
                     "repeats": args.repeats, "rows": rows})
    print(f"-> {out}")


if __name__ == "__main__":
    main()
