"""Planning-time benchmark: one full CEM solve with a randomly initialised world model (`model.name`) at
the params.yaml profile.

A solve is exactly what the evaluation times per MPC step (`LatentMPCAgent.act`): encode the current
frame, run CEM (samples × iterations × horizon-block rollouts) against the goal embedding, de-normalise the
executed blocks. It is timed at the configured iterations and at 10 (the paper's setting for the other
environments); the ratio shows how much of a solve is the per-iteration rollout (ideally ≈ iterations/10).
The median time of one CEM iteration (300 rollouts) is printed too: on a shared machine a few iterations
stall for seconds, which a median over only a few long solves cannot hide.

On 2 shared CPU cores a 30-iteration solve takes ~20 s, so the default is 2 timed solves per setting
(< ~1.5 min in all); pass `--repeats 5` (or more) for a meaningful p90.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
import torch

from lewm.checkpoint import model_meta
from lewm.config import PlanConfig, load_params
from lewm.data.clips import ActionStats
from lewm.models import CostFn
from lewm.planning import LatentMPCAgent

ACTION_DIM = 2  # Push-T


def time_iterations(agent: LatentMPCAgent) -> list[float]:
    """Make `agent` record the wall time of every batched cost call (one CEM iteration's rollouts) into
    the returned list: a per-iteration median is robust to the stalls that a shared machine inflicts on a
    few long solves."""
    times: list[float] = []
    solve = agent.solver.solve

    def timed(cost_fn: CostFn) -> CostFn:
        def cost(candidates: torch.Tensor) -> torch.Tensor:
            started = time.perf_counter()
            costs = cost_fn(candidates)
            times.append(time.perf_counter() - started)
            return costs

        return cost

    agent.solver.solve = lambda cost_fn: solve(timed(cost_fn))
    return times


def time_solves(agent: LatentMPCAgent, frames: np.ndarray) -> list[float]:
    """Wall time of one `act` (full solve) per frame."""
    times = []
    for frame in frames:
        started = time.perf_counter()
        agent.act(frame)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed solves per setting")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    params = load_params()
    env = params.envs[0]
    image_size = params.data_for(env).image_size
    meta = model_meta(env, params.model.name, params.model.settings, image_size, ACTION_DIM,
                      params.clip.frameskip, params.clip.history,
                      ActionStats(np.zeros(ACTION_DIM), np.ones(ACTION_DIM)))
    torch.manual_seed(0)
    model = meta.build().to(args.device).eval()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.repeats + 1, image_size, image_size, 3), dtype=np.uint8)
    plan = params.plan
    cem = plan.settings
    print(f"profile {params.profile}: model {params.model.name}, image {image_size}, {cem.samples} samples × "
          f"top-{cem.elites}, horizon {plan.horizon} blocks, device {args.device}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}")

    def with_iterations(iterations: int) -> PlanConfig:
        return dataclasses.replace(plan, settings=dataclasses.replace(cem, iterations=iterations))

    warmup = LatentMPCAgent(model, meta, with_iterations(1), seed=0)
    warmup.start(frames[0])
    time_solves(warmup, frames[:1])

    medians = {}
    for iterations in (cem.iterations, 10):
        agent = LatentMPCAgent(model, meta, with_iterations(iterations), seed=0)
        agent.start(frames[0])
        iteration_times = time_iterations(agent)
        times = time_solves(agent, frames[1:])
        medians[iterations] = statistics.median(times)
        print(f"{iterations:3d} iterations: median {medians[iterations]:.3f} s, "
              f"p90 {np.percentile(times, 90):.3f} s per solve over {len(times)} solves; per iteration "
              f"median {statistics.median(iteration_times):.3f} s, max {max(iteration_times):.3f} s")
    print(f"ratio {cem.iterations}/10 iterations: {medians[cem.iterations] / medians[10]:.2f}")


if __name__ == "__main__":
    main()
