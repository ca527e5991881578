"""Which true quantities does the latent planning cost track? A diagnostic for worlds where planning fails.

    .venv/bin/python bench/cost_attribution.py --env cube [--model runs/cube/train/model.pt]
        [--data data/cube] [--pairs 3000] [--out runs/cube/levers/cost_attribution]

Planning minimises the squared latent distance to the goal's embedding (`goal_distance_cost`). This encodes
random pairs of held-out test frames and relates that distance to each probed quantity's true distance
(`quantity_error`: Euclidean, or wrapped for angles): the Spearman rank correlation per quantity, and the R²
of a linear fit on each quantity alone and on all together. A quantity the planner must move (Cube's cube)
that adds no R² beyond another (the hand) is one the cost cannot see apart from it.

Writes <out>/cost_attribution.json and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.linear_model import LinearRegression

from lewm.checkpoint import load_model
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world
from lewm.imagination import quantity_error, rank_correlation
from lewm.io import write_json
from lewm.probing import encode_frames, split_rows


def attribute(env: str, model_path: Path, data_dir: Path, pairs: int, seed: int = 0) -> dict[str, float]:
    """Spearman ρ and R² of the squared latent distance against each probed quantity's true distance over
    `pairs` random pairs of test frames; `all.r2` fits every quantity together."""
    model = load_model(model_path, "cpu").model
    store = EpisodeStore.open(data_dir)
    rng = np.random.default_rng(seed)
    rows = split_rows(store, "test", len(store))  # every test frame
    frames = np.unique(rng.choice(rows, size=min(len(rows), 2 * pairs), replace=False))
    latents = encode_frames(model, store.frames, rows=frames).reshape(len(frames), -1).numpy()
    states = store.states[frames]
    a, b = rng.integers(len(frames), size=(2, pairs))
    latent_distance = ((latents[a] - latents[b]) ** 2).sum(axis=1)
    distances = {q.name: quantity_error(q, q.values(states[a]), q.values(states[b]))
                 for q in get_world(env).probe_targets}
    summary: dict[str, float] = {"pairs": float(pairs)}
    for name, distance in distances.items():
        summary[f"{name}.spearman"] = rank_correlation(latent_distance, distance)
        summary[f"{name}.r2"] = linear_r2(distance[:, None], latent_distance)
    summary["all.r2"] = linear_r2(np.stack(list(distances.values()), axis=1), latent_distance)
    return summary


def linear_r2(features: np.ndarray, target: np.ndarray) -> float:
    """R² of the least-squares linear fit (with intercept) of `target` on `features` (N, F)."""
    return float(LinearRegression().fit(features, target).score(features, target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="cube")
    parser.add_argument("--model", type=Path, default=None, help="default: runs/<env>/train/model.pt")
    parser.add_argument("--data", type=Path, default=None, help="default: data/<env>")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=None, help="default: runs/<env>/levers/cost_attribution")
    args = parser.parse_args()
    if args.pairs < 10:
        parser.error(f"--pairs must be at least 10, got {args.pairs}")
    try:
        summary = attribute(args.env, args.model or Path(f"runs/{args.env}/train/model.pt"),
                            args.data or Path(f"data/{args.env}"), args.pairs)
    except (ValueError, FileNotFoundError, KeyError) as error:
        parser.error(str(error))
    out = args.out or Path(f"runs/{args.env}/levers/cost_attribution")
    write_json(out / "cost_attribution.json", summary)
    for key, value in summary.items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main()
