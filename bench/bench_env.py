"""Push-T throughput: physics, rendering, and expert data collection; and the expert's contact fraction.

    .venv/bin/python bench/bench_env.py [--episodes 50] [--steps 100] [--noise 0.2] [--repeats 3]

Every rate is the median of `--repeats` runs. "Physics only" is `env.step` with rendering stubbed out (the
same env otherwise), the baseline the other rates are compared with.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from lewm.envs import get_world
from lewm.envs.pusht.env import PushTEnv, angle_difference


def median_rate(run: Callable[[], int], repeats: int) -> float:
    """Median over `repeats` of items/s, where `run()` does the work and returns its item count."""
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        items = run()
        rates.append(items / (time.perf_counter() - started))
    return statistics.median(rates)


def physics_steps(episodes: int, steps: int) -> int:
    env = PushTEnv(max_steps=steps)
    blank = np.zeros((env.image_size, env.image_size, 3), dtype=np.uint8)
    env.render = lambda: blank  # physics only
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 2))
    for episode in range(episodes):
        env.reset(seed=episode)
        for action in actions:
            env.step(action)
    return episodes * steps


def renders(image_size: int, frames: int) -> int:
    env = PushTEnv(image_size=image_size)
    env.reset(seed=0)
    for _ in range(frames):
        env.render()
    return frames


def expert_rollouts(episodes: int, steps: int, noise: float, stats: dict[str, list[float]]) -> int:
    """Step + render at 64 px with the expert; per-episode contact fraction and block motion into `stats`."""
    env = PushTEnv(image_size=64, max_steps=steps)
    for key in ("contact", "displacement", "rotation", "path", "turning"):
        stats[key] = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=episode)
        policy = get_world("pusht").make_policy("expert", np.random.default_rng(episode), noise)
        policy.reset(obs)
        first = previous = obs["state"]
        touching, path, turning = 0, 0.0, 0.0
        for _ in range(steps):
            obs, _, _, _, info = env.step(policy.act(obs))
            state = obs["state"]
            touching += info["n_contacts"] > 0
            path += float(np.linalg.norm(state[2:4] - previous[2:4]))
            turning += abs(float(angle_difference(state[4], previous[4])))
            previous = state
        stats["contact"].append(touching / steps)
        stats["displacement"].append(float(np.linalg.norm(state[2:4] - first[2:4])))
        stats["rotation"].append(abs(float(angle_difference(state[4], first[4]))))
        stats["path"].append(path)
        stats["turning"].append(turning)
    return episodes * steps


def percentiles(values: list[float]) -> str:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return f"p10 {p10:7.2f}  median {p50:7.2f}  p90 {p90:7.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--frames", type=int, default=2000, help="frames per render timing")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    physics = median_rate(lambda: physics_steps(args.episodes // 2 or 1, args.steps), args.repeats)
    print(f"physics only (10 substeps/step): {physics:8.0f} steps/s")
    for size in (64, 224):
        frames = args.frames if size == 64 else args.frames // 4
        fps = median_rate(lambda size=size, frames=frames: renders(size, frames), args.repeats)
        print(f"render only {size:3d} px:           {fps:8.0f} frames/s  ({fps / physics:.2f}x physics)")
    stats: dict[str, list[float]] = {}
    rate = median_rate(lambda: expert_rollouts(args.episodes, args.steps, args.noise, stats), args.repeats)
    print(f"expert step + render 64 px:     {rate:8.0f} transitions/s  ({rate / physics:.2f}x physics)")
    print(f"expert, {args.episodes} episodes x {args.steps} steps, action noise {args.noise}:")
    print(f"  contact fraction (steps with n_contacts > 0): {np.mean(stats['contact']):.3f} "
          f"(per episode: {percentiles(stats['contact'])})")
    print(f"  block net displacement (px):   {percentiles(stats['displacement'])}")
    print(f"  block path length (px):        {percentiles(stats['path'])}")
    print(f"  block net |rotation| (rad):    {percentiles(stats['rotation'])}")
    print(f"  block summed |rotation| (rad): {percentiles(stats['turning'])}")


if __name__ == "__main__":
    main()
