"""A dataset card: what a stored dataset holds, for a person deciding whether it is the data they want
(`lewm inspect`, pipelines/cli.py).

The card reads the manifest (env, policy, seed), counts episodes, transitions and frames per split, and
measures coverage with the world's own definitions (`World.bodies`, lewm/world.py), never with per-world
column indices of its own:
- per position axis and angle of every body: min, quantiles and max over every frame of every split;
- positions: the fraction of a `GRID` × `GRID` grid over the world's extent (the first two axes: x, y) in
  which at least one frame puts the body;
- angles: the fraction of `ANGLE_BINS` equal bins of one period (2π/k for a shape with k-fold symmetry)
  holding at least one frame;
- contact: the fraction of transitions (steps between consecutive frames of an episode) whose stored
  `n_contacts` is positive; the world says what its env counts (`World.contacts`);
- object motion: for each object, the fraction of transitions in which its stored pose changed, by more
  than `MOVE_TOLERANCE` of the world's extent along a position axis or `TURN_TOLERANCE` rad in an angle.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np

from lewm.data.storage import SPLITS, EpisodeStore
from lewm.world import Body, Quantity, World

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
GRID = 10  # occupancy cells per axis
ANGLE_BINS = 36  # bins per period of an angle
MOVE_TOLERANCE = 1e-3  # a position change counts as motion above this fraction of the world's extent
TURN_TOLERANCE = 1e-3  # rad: an angle change counts as motion above this


def dataset_card(store: EpisodeStore, world: World) -> dict[str, Any]:
    """The card of `store` (a dataset of `world`) as plain JSON-serialisable data."""
    manifest = store.manifest
    if manifest["env"] != world.name:
        raise ValueError(f"{store.path}: a {manifest['env']!r} dataset, not {world.name!r}")
    if store.state_names != list(world.env_class.state_names):
        raise ValueError(f"{store.path}: state columns {store.state_names} are not the {world.name} world's "
                         f"{list(world.env_class.state_names)} (regenerate the dataset)")
    states, has_next = store.states, transition_rows(store)
    frames = store.frames
    episodes = store.episodes
    contact = int(np.count_nonzero(store.n_contacts[has_next] > 0))
    transitions = int(has_next.sum())
    return {
        "path": str(store.path),
        "identity": store.identity,
        "env": world.name,
        "env_kwargs": manifest.get("env_kwargs", {}),
        "policy": {
            "name": manifest.get("policy"),
            "action_noise": manifest.get("action_noise"),
            "options": manifest.get("policy_kwargs", {}),
        },
        "seed": manifest.get("seed"),
        "episodes": len(episodes),
        "transitions": transitions,
        "frames": len(frames),
        "episode_frames": {"min": int(episodes["length"].min()), "mean": float(episodes["length"].mean()),
                           "max": int(episodes["length"].max())},
        "image_size": [int(frames.shape[1]), int(frames.shape[2])],
        "action_dim": store.action_dim,
        "splits": {
            split: {
                "episodes": len(part),
                "transitions": int((part["length"] - 1).sum()),
                "frames": int(part["length"].sum()),
            }
            for split in SPLITS
            for part in [episodes[episodes["split"] == split]]
        },
        "coverage": {
            "over": "every frame of every split",
            "quantiles": list(QUANTILES),
            "bodies": [_body_coverage(body, states, store.state_names) for body in world.bodies],
        },
        "contact": {
            "fraction": contact / max(transitions, 1),
            "transitions": contact,
            "how": f"transitions whose stored n_contacts > 0; n_contacts counts {world.contacts}",
        },
        "object_motion": [_motion(body, states, has_next, store.state_names)
                          for body in world.bodies if body.role == "object"],
    }


def transition_rows(store: EpisodeStore) -> np.ndarray:
    """A bool per frame row: True where a transition starts (every frame but each episode's last)."""
    has_next = np.ones(len(store.steps), dtype=bool)
    episodes = store.episodes
    has_next[(episodes["start"] + episodes["length"] - 1).to_numpy()] = False
    return has_next


def occupancy(positions: np.ndarray, extent: tuple[tuple[float, float], ...], grid: int = GRID) -> float:
    """The fraction of a `grid` × `grid` partition of `extent` (x, y ranges) holding at least one of
    `positions` (N, 2); positions outside the extent count in the nearest edge cell."""
    cells = [
        np.clip(np.floor((positions[:, axis] - low) / (high - low) * grid), 0, grid - 1).astype(np.int64)
        for axis, (low, high) in enumerate(extent[:2])
    ]
    return len(np.unique(cells[0] * grid + cells[1])) / grid**2


def angle_coverage(angles: np.ndarray, folds: int = 1, bins: int = ANGLE_BINS) -> float:
    """The fraction of `bins` equal bins of one period (2π/`folds`) holding at least one of `angles`."""
    period = 2 * math.pi / folds
    index = np.minimum(np.floor(np.mod(angles, period) / period * bins), bins - 1).astype(np.int64)
    return len(np.unique(index)) / bins


def quantile_key(q: float) -> str:
    """The card's key of quantile `q` (0.05 → `q05`)."""
    return f"q{round(100 * q):02d}"


def _summary(values: np.ndarray) -> dict[str, float]:
    """min, the `QUANTILES` and max of `values`."""
    quantiles = np.quantile(values, QUANTILES)
    return {"min": float(values.min()), **{quantile_key(q): float(v) for q, v in zip(QUANTILES, quantiles,
                                                                                     strict=True)},
            "max": float(values.max())}


def _body_coverage(body: Body, states: np.ndarray, names: list[str]) -> dict[str, Any]:
    positions = [] if body.position is None else list(body.position.columns)
    angles = [angle.columns[0] for angle in body.angles]
    coverage: dict[str, Any] = {
        "name": body.name,
        "role": body.role,
        "positions": [{"name": names[c], **_summary(states[:, c])} for c in positions],
        "occupancy": None,
        "angles": [
            {"name": names[c], **_summary(states[:, c]), "folds": angle.folds, "bins": ANGLE_BINS,
             "coverage": angle_coverage(states[:, c], angle.folds)}
            for c, angle in zip(angles, body.angles, strict=True)
        ],
    }
    if len(positions) >= 2:
        coverage["occupancy"] = {
            "axes": [names[c] for c in positions[:2]],
            "extent": [list(axis) for axis in body.extent[:2]],
            "grid": GRID,
            "fraction": occupancy(states[:, positions[:2]], body.extent, GRID),
        }
    return coverage


def _motion(body: Body, states: np.ndarray, has_next: np.ndarray, names: list[str]) -> dict[str, Any]:
    """How often `body` moved: transitions whose pose change exceeds the tolerances."""
    change = states[1:] - states[:-1]
    moved = np.zeros(len(change), dtype=bool)
    if body.position is not None:
        spans = np.array([high - low for low, high in body.extent])
        moved |= np.any(np.abs(change[:, list(body.position.columns)]) > MOVE_TOLERANCE * spans, axis=1)
    for angle in body.angles:
        moved |= np.abs(wrapped_difference(change[:, angle.columns[0]], angle)) > TURN_TOLERANCE
    valid = has_next[:-1]
    count = int(np.count_nonzero(moved[valid]))
    parts = [f"turned more than {TURN_TOLERANCE:g} rad in {names[angle.columns[0]]}" for angle in body.angles]
    if body.position is not None:
        axes = "/".join(names[c] for c in body.position.columns)
        parts.insert(0, f"moved more than {MOVE_TOLERANCE:g} of the world's extent along {axes}")
    return {
        "body": body.name,
        "fraction": count / max(int(valid.sum()), 1),
        "transitions": count,
        "how": f"transitions in which the stored {body.name} pose " + ", or ".join(parts),
    }


def wrapped_difference(difference: np.ndarray, angle: Quantity) -> np.ndarray:
    """An angle difference wrapped to [−period/2, period/2), period = 2π/folds."""
    period = 2 * math.pi / angle.folds
    return np.mod(difference + period / 2, period) - period / 2


# --------------------------------------------------------------------------------------------- as text


def format_card(card: dict[str, Any]) -> str:
    """The card as readable text."""
    policy = card["policy"]
    options = ", ".join(f"{k}={v}" for k, v in policy["options"].items())
    env_kwargs = ", ".join(f"{k}={v}" for k, v in card["env_kwargs"].items())
    splits = card["splits"]
    lengths = card["episode_frames"]
    height, width = card["image_size"]
    lines = [
        f"dataset      {card['path']} (identity {card['identity']})",
        f"env          {card['env']}" + (f" ({env_kwargs})" if env_kwargs else ""),
        f"policy       {policy['name']}, action noise {policy['action_noise']}"
        + (f", {options}" if options else "") + f"; seed {card['seed']}",
        "episodes     " + _with_splits(card["episodes"], splits, "episodes"),
        "transitions  " + _with_splits(card["transitions"], splits, "transitions"),
        "frames       " + _with_splits(card["frames"], splits, "frames") + f"; {height}×{width} px; "
        + (f"{lengths['min']} frames per episode" if lengths["min"] == lengths["max"] else
           f"{lengths['min']}–{lengths['max']} frames per episode (mean {lengths['mean']:.1f})"),
        f"actions      {card['action_dim']}-D",
        "",
        f"coverage over {card['coverage']['over']}:",
    ]
    header = ["min", *(quantile_key(q) for q in card["coverage"]["quantiles"]), "max"]
    lines.append(f"  {'':<22}" + "".join(f"{h:>10}" for h in header))
    for body in card["coverage"]["bodies"]:
        lines.append(f"  {body['name']} ({body['role']})")
        for dim in [*body["positions"], *body["angles"]]:
            lines.append(f"    {dim['name']:<20}" + "".join(f"{dim[h]:>10.4g}" for h in header))
        grid = body["occupancy"]
        if grid is not None:
            ranges = " × ".join(f"{name} [{low:g}, {high:g}]"
                                for name, (low, high) in zip(grid["axes"], grid["extent"], strict=True))
            cells = f"{grid['grid']}×{grid['grid']}"
            lines.append(f"    occupancy: {grid['fraction']:.0%} of a {cells} grid over {ranges}")
        for angle in body["angles"]:
            folds = angle["folds"]
            period = "2π" if folds == 1 else f"2π/{folds} (a {folds}-fold symmetry)"
            lines.append(f"    angle coverage: {angle['name']} {angle['coverage']:.0%} of {angle['bins']} "
                         f"bins over {period}")
    if not card["coverage"]["bodies"]:
        lines.append("  (the world declares no bodies)")
    lines.append("")
    for label, fraction in [("contact", card["contact"]),
                            *((f"{m['body']} moved", m) for m in card["object_motion"])]:
        lines.append(f"{label:<12} {fraction['fraction']:.1%} of transitions ({fraction['transitions']} of "
                     f"{card['transitions']})")
        lines += textwrap.wrap(f"how: {fraction['how']}", 110, initial_indent=" " * 13,
                               subsequent_indent=" " * 18)
    return "\n".join(lines)


def _with_splits(total: int, splits: dict[str, dict[str, int]], key: str) -> str:
    return f"{total} (" + ", ".join(f"{split} {counts[key]}" for split, counts in splits.items()) + ")"
