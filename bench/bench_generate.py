"""Dataset generation throughput (transitions/s) with 1 and 2 worker processes, and disk bytes per frame.

    .venv/bin/python bench/bench_generate.py [--env pusht] [--episodes 60] [--max-steps 100] [--repeats 3]

Times the whole `generate_dataset` call (worker start-up included), median of `--repeats` runs each.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from lewm.config import DataConfig, load_params
from lewm.data.generate import generate_dataset


def time_generation(env: str, cfg: DataConfig, repeats: int, root: Path) -> tuple[float, Path]:
    """Median seconds of `repeats` generations under `root`; also returns the last dataset's directory."""
    seconds = []
    for repeat in range(repeats):
        target = root / f"workers{cfg.workers}-run{repeat}"
        started = time.perf_counter()
        generate_dataset(env, cfg, target, progress=False)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds), target


def disk_bytes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_size for path in directory.iterdir()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="pusht")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    base = dataclasses.replace(load_params().data["pusht"], episodes=args.episodes, max_steps=args.max_steps,
                               image_size=args.image_size)
    transitions = args.episodes * args.max_steps
    throughput = {}
    with tempfile.TemporaryDirectory(prefix="bench-generate-") as root:
        for workers in (1, 2):
            cfg = dataclasses.replace(base, workers=workers)
            seconds, directory = time_generation(args.env, cfg, args.repeats, Path(root))
            throughput[workers] = transitions / seconds
            print(
                f"workers={workers}: {throughput[workers]:7.0f} transitions/s "
                f"({transitions} transitions, median {seconds:.2f} s of {args.repeats})"
            )
        sizes = disk_bytes(directory)
    print(f"speed-up workers=2 / workers=1: {throughput[2] / throughput[1]:.2f}x")

    frames = args.episodes * (args.max_steps + 1)
    print(
        f"disk at {args.image_size} px: {sizes['frames.npy'] / frames:.0f} B/frame in frames.npy, "
        f"{sum(sizes.values()) / frames:.0f} B/frame in total "
        f"({', '.join(f'{name} {size / 1024:.0f} KiB' for name, size in sorted(sizes.items()))})"
    )


if __name__ == "__main__":
    main()
