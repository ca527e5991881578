"""A planning evaluation that can be trusted (reference §8.3, with its known pitfalls fixed).

- Start/goal pairs come from HELD-OUT episodes only (`build_manifest`, test split by default), drawn
  uniformly without replacement over every valid (episode, step) row with a seeded rng; the goal is the
  same episode `goal_offset` steps later. The manifest is a file, so every method and every checkpoint is
  scored on exactly the same pairs, and `check_manifest` refuses a manifest that does not match the dataset.
- Every method (the planner, named after its world model, and the `random` / `zero` floor baselines) runs
  the same pairs under each evaluation seed. Evaluation seeds vary only the agents' randomness (solver
  sampling, random actions): agent seed = f(base seed, eval seed, pair), so an episode's result does not
  depend on which other episodes ran, or in which order.
- Every success predicate of the world is scored, and the world's goal errors reported beside the rates
  as goal progress: where an episode started, came closest and ended (`start_`, `best_`, `final_`
  columns), summarised against the start and against the zero-action policy on the same pairs, since a
  rate means little unless the agent ends closer to the goal than standing still does.
- Beside the floors, the simulator oracle (`oracle` in `eval.baselines`, for worlds with a `state_cost`)
  plans with the same solver and budget on the true simulator: the protocol's ceiling.
- `summarize` excludes, per predicate, starts that already satisfy it (reporting how many), gives a Wilson
  95% interval instead of a bare rate, the mean ± std of the per-seed rate across evaluation seeds, and
  planning time per solve (median, p90). Rates are fractions in [0, 1].
- GIFs show the observation beside the goal; given a decoder of the model's latents (lewm/decoder.py), the
  planner's GIFs add a third panel: the decoded imagined rollout of the chosen plan (`imagined_frames`).
  Decoding is display only: the agents, their episodes and every metric are the same with or without it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from lewm.checkpoint import ModelMeta
from lewm.config import EvalConfig, Params, PlanConfig
from lewm.envs import get_world
from lewm.io import atomic_file
from lewm.planning import (
    ORACLE,
    AgentFactory,
    EpisodeResult,
    LatentMPCAgent,
    SimulatorOracleAgent,
    baseline_agents,
    run_episode,
)
from lewm.progress import progress_bar
from lewm.world import World

START, GOAL = "start_state_", "goal_state_"
FINAL, BEST, AT_START = "final_", "best_", "start_"  # goal-error columns of the episode table
PAIR_COLUMNS = ("pair", "split", "episode", "start_step", "goal_step", "start_row", "goal_row")

ImageDecoder = Callable[[Tensor], np.ndarray]
"""Latents `(N, *latent)` → uint8 frames `(N, H, W, 3)` (`lewm.decoder.PixelDecoder.decode_frames`)."""


# ---------------------------------------------------------------------------------------------- manifest


def build_manifest(store: Any, split: str = "test", n: int = 50, goal_offset: int = 25,
                   seed: int = 42) -> pd.DataFrame:
    """Draw `n` start/goal pairs from the `split` episodes of `store`, one row per pair.

    Valid starts are rows with `step ≤ length − 1 − goal_offset`; `n` of them are drawn without replacement,
    uniformly over all valid rows of all episodes (longer episodes contribute more pairs), with
    `np.random.default_rng(seed)`. Rows keep the draw order, so the first k pairs are a uniform subset.
    """
    if split == "train":
        raise ValueError("build_manifest: pairs must come from held-out episodes (val or test), not train")
    if goal_offset < 1 or n < 1:
        raise ValueError(f"goal_offset={goal_offset} and n={n} must be ≥ 1")
    episodes = store.episodes.set_index("episode").loc[store.episode_ids(split)]
    valid_counts = np.maximum(episodes["length"].to_numpy() - goal_offset, 0)
    available = int(valid_counts.sum())
    if n > available:
        raise ValueError(f"{store.path}: the {split} split has {available} valid start rows for goal_offset="
                         f"{goal_offset} ({len(episodes)} episodes), fewer than the {n} pairs requested")
    episode_of_row = np.repeat(episodes.index.to_numpy(), valid_counts)
    first_row = np.repeat(episodes["start"].to_numpy(), valid_counts)
    step_of_row = np.concatenate([np.arange(count) for count in valid_counts])
    chosen = np.random.default_rng(seed).choice(available, size=n, replace=False)
    start_step = step_of_row[chosen].astype(np.int64)
    start_row = first_row[chosen] + start_step
    manifest = pd.DataFrame({
        "pair": np.arange(n, dtype=np.int64),
        "split": split,
        "episode": episode_of_row[chosen].astype(np.int64),
        "start_step": start_step,
        "goal_step": start_step + goal_offset,
        "start_row": start_row.astype(np.int64),
        "goal_row": (start_row + goal_offset).astype(np.int64),
    })
    states = store.states
    for i, name in enumerate(store.state_names):
        manifest[START + name] = states[manifest["start_row"], i]
    for i, name in enumerate(store.state_names):
        manifest[GOAL + name] = states[manifest["goal_row"], i]
    return manifest


def state_names(manifest: pd.DataFrame) -> list[str]:
    """The state names whose start and goal values the manifest holds."""
    return [c.removeprefix(START) for c in manifest.columns if c.startswith(START)]


def start_states(manifest: pd.DataFrame) -> np.ndarray:
    return manifest[[START + n for n in state_names(manifest)]].to_numpy(np.float64)


def goal_states(manifest: pd.DataFrame) -> np.ndarray:
    return manifest[[GOAL + n for n in state_names(manifest)]].to_numpy(np.float64)


def validate_manifest(manifest: pd.DataFrame, where: str = "manifest") -> None:
    """Structural checks: columns, unique pairs and starts, goal after start in the same episode."""
    missing = [c for c in PAIR_COLUMNS if c not in manifest.columns]
    names = state_names(manifest)
    if missing or not names or any(GOAL + n not in manifest.columns for n in names):
        what = missing or "start/goal state"
        raise ValueError(f"{where}: not a start/goal manifest (missing {what} columns)")
    if len(manifest) == 0:
        raise ValueError(f"{where}: no pairs")
    if manifest["pair"].duplicated().any() or manifest.duplicated(["episode", "start_step"]).any():
        raise ValueError(f"{where}: duplicate pairs")
    offsets = manifest["goal_step"] - manifest["start_step"]
    row_offsets = manifest["goal_row"] - manifest["start_row"]
    if (offsets < 1).any() or not np.array_equal(row_offsets.to_numpy(), offsets.to_numpy()):
        raise ValueError(f"{where}: every goal must lie after its start in the same episode")
    if manifest[[START + n for n in names] + [GOAL + n for n in names]].isna().any().any():
        raise ValueError(f"{where}: missing state values")


def check_manifest(manifest: pd.DataFrame, store: Any) -> None:
    """Refuse a manifest that is not made of `store`'s held-out rows: wrong split, wrong rows or states
    (e.g. a manifest built from another dataset, or a dataset regenerated since)."""
    validate_manifest(manifest)
    for split in manifest["split"].unique():
        if split == "train":
            raise ValueError("manifest: pairs from the train split; evaluate on held-out episodes")
        outside = set(manifest.loc[manifest["split"] == split, "episode"]) - set(store.episode_ids(split))
        if outside:
            raise ValueError(f"manifest: episodes {sorted(outside)[:5]} are not in the {split} split of "
                             f"{store.path}")
    if state_names(manifest) != list(store.state_names):
        raise ValueError(f"manifest: state names {state_names(manifest)} differ from the dataset's "
                         f"{store.state_names}")
    first_row = np.array([store.episode_rows(ep).start for ep in manifest["episode"]])
    start_row, goal_row = manifest["start_row"].to_numpy(), manifest["goal_row"].to_numpy()
    rows_match = np.array_equal(start_row, first_row + manifest["start_step"].to_numpy())
    episode_ends = np.array([store.episode_rows(ep).stop for ep in manifest["episode"]])
    if not rows_match or (goal_row >= episode_ends).any() \
            or not np.allclose(store.states[start_row], start_states(manifest)) \
            or not np.allclose(store.states[goal_row], goal_states(manifest)):
        raise ValueError(f"manifest: rows or states do not match {store.path} (rebuild the manifest)")


def write_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    """Write the manifest as Parquet, atomically."""
    validate_manifest(manifest)
    with atomic_file(path) as tmp:
        manifest.to_parquet(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """Read and validate a manifest written by `write_manifest`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: manifest not found (run the manifest stage first)")
    manifest = pd.read_parquet(path)
    validate_manifest(manifest, str(path))
    return manifest


# ----------------------------------------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when n = 0 (no information)."""
    if n == 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} must be in [0, n={n}]")
    rate = successes / n
    denominator = 1 + z * z / n
    centre = (rate + z * z / (2 * n)) / denominator
    half_width = z * np.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / denominator
    return float(max(0.0, centre - half_width)), float(min(1.0, centre + half_width))


def episode_seed(base_seed: int, eval_seed: int, pair: int) -> int:
    """The policy seed of one episode, independent of every other episode."""
    return int(np.random.SeedSequence([base_seed, eval_seed, pair]).generate_state(1)[0])


def summarize(df: pd.DataFrame) -> dict[str, float]:
    """Flat metrics (`<method>.<predicate>.success_rate`, `<method>.final_<error>_mean`,
    `<method>.plan_time_median_s`, ...) from the per-episode table of `evaluate`.

    Goal progress, per method and goal error e (`goal_progress`): the means of `start_e`, `best_e` and
    `final_e`; `final_e_vs_start` and `best_e_vs_start` (ratios of means: below 1 is closer than at the
    start); `closer_fraction_e`, the fraction of episodes that ended closer than they started; and, with
    the `zero` policy in the table, `final_e_vs_zero`, the mean final error over zero's on the same pairs.

    Per method × predicate, over episodes whose start did NOT already satisfy the predicate (`excluded`
    counts the others): `n`, `successes`, `success_rate`, Wilson 95% `ci_low`/`ci_high` (all evaluation
    seeds pooled, treated as independent episodes), `steps_to_success_mean` (successes only), and, with
    two or more evaluation seeds, `seed_mean`/`seed_std` (sample std) of the per-seed rate. Undefined
    values (a rate over no episodes, a mean over no successes) are NaN.
    """
    predicates = [c.removeprefix("success_") for c in df.columns if c.startswith("success_")]
    metrics: dict[str, float] = {"pairs": int(df["pair"].nunique()),
                                 "eval_seeds": int(df["eval_seed"].nunique())}
    zero_rows = df[df["method"] == "zero"]
    for method, rows in df.groupby("method", sort=False):
        for predicate in predicates:
            for key, value in _predicate_metrics(rows, predicate).items():
                metrics[f"{method}.{predicate}.{key}"] = value
        metrics.update({f"{method}.{k}": v for k, v in goal_progress(rows, zero_rows).items()})
        solve_times = _concat(rows["plan_times_s"])
        if len(solve_times):
            metrics.update({f"{method}.{k}": v for k, v in _time_metrics(solve_times).items()})
    return metrics


def goal_progress(rows: pd.DataFrame, zero_rows: pd.DataFrame) -> dict[str, float]:
    """The goal-progress metrics of one method's episodes `rows` (see `summarize`); `zero_rows` are the
    zero-action policy's episodes (may be empty), matched to `rows` by evaluation seed and pair."""
    metrics: dict[str, float] = {}
    keys = ["eval_seed", "pair"]
    for error in (c.removeprefix(FINAL) for c in rows.columns if c.startswith(FINAL)):
        start, best, final = rows[AT_START + error], rows[BEST + error], rows[FINAL + error]
        metrics[f"{AT_START}{error}_mean"] = float(start.mean())
        metrics[f"{BEST}{error}_mean"] = float(best.mean())
        metrics[f"{FINAL}{error}_mean"] = float(final.mean())
        metrics[f"{FINAL}{error}_vs_start"] = _ratio(final.mean(), start.mean())
        metrics[f"{BEST}{error}_vs_start"] = _ratio(best.mean(), start.mean())
        metrics[f"closer_fraction_{error}"] = float((final < start).mean())
        matched = rows[[*keys, FINAL + error]].merge(zero_rows[[*keys, FINAL + error]], on=keys,
                                                     suffixes=("", "_zero"))
        if len(matched):  # the pairs both ran
            metrics[f"{FINAL}{error}_vs_zero"] = _ratio(matched[FINAL + error].mean(),
                                                        matched[f"{FINAL}{error}_zero"].mean())
    return metrics


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator > 0 else float("nan")


def _predicate_metrics(rows: pd.DataFrame, predicate: str) -> dict[str, float]:
    eligible = rows[~rows[f"start_satisfied_{predicate}"].astype(bool)]
    success = eligible[f"success_{predicate}"].astype(bool)
    n, successes = len(eligible), int(success.sum())
    low, high = wilson_interval(successes, n)
    metrics = {
        "success_rate": successes / n if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "successes": successes,
        "excluded": len(rows) - n,
        "steps_to_success_mean": float(eligible.loc[success, f"steps_to_success_{predicate}"].mean()),
    }
    per_seed = success.groupby(eligible["eval_seed"]).mean()
    if len(per_seed) > 1:
        metrics.update(seed_mean=float(per_seed.mean()), seed_std=float(per_seed.std(ddof=1)))
    return metrics


def _time_metrics(solve_times: np.ndarray) -> dict[str, float]:
    return {
        "plan_time_median_s": float(np.median(solve_times)),
        "plan_time_p90_s": float(np.percentile(solve_times, 90)),
        "num_solves": len(solve_times),
    }


def _concat(lists: Iterable[Sequence[float]]) -> np.ndarray:
    return np.concatenate([np.asarray(x, dtype=np.float64) for x in lists] or [np.empty(0)])


# ---------------------------------------------------------------------------------------------- evaluation


def evaluate(
    manifest: pd.DataFrame,
    store: Any,
    env: Any,
    agents: Mapping[str, AgentFactory],
    eval_cfg: EvalConfig,
    base_seed: int = 0,
    gif_dir: str | Path | None = None,
    progress: bool = False,
    world: World | None = None,
    decoder: ImageDecoder | None = None,
) -> pd.DataFrame:
    """Run every method on every pair under every evaluation seed; one row per (eval seed, pair, method).

    `agents` maps method names to factories called with the episode's seed (`episode_seed(base_seed,
    eval_seed, pair)`). `world` (default: the dataset's) gives the predicates and final errors. With
    `gif_dir`, the first `eval_cfg.gifs` pairs of the first evaluation seed are written as
    `<method>_pair<id>.gif`; with `decoder` too, a planner's GIF shows its decoded imagined rollouts.
    """
    check_manifest(manifest, store)
    world = world or get_world(store.manifest["env"])
    predicates = list(world.predicates)
    starts, goals = start_states(manifest), goal_states(manifest)
    gif_pairs = set(manifest["pair"].iloc[: eval_cfg.gifs]) if gif_dir else set()
    rows = []
    bar = progress_bar(total=len(eval_cfg.eval_seeds) * len(manifest), desc="evaluate", unit="pair",
                       enabled=progress)
    for seed_index, eval_seed in enumerate(eval_cfg.eval_seeds):
        for i, pair in enumerate(manifest.itertuples(index=False)):
            bar.update(1)
            goal_pixels = np.asarray(store.frames[pair.goal_row])
            record = seed_index == 0 and pair.pair in gif_pairs
            for method, make_agent in agents.items():
                agent = make_agent(episode_seed(base_seed, eval_seed, pair.pair))
                imagines = record and decoder is not None and isinstance(agent, LatentMPCAgent)
                if imagines:
                    agent.imagine = True
                result = run_episode(env, agent, starts[i], goals[i], goal_pixels, eval_cfg.budget,
                                     predicates, world.success, record_frames=record,
                                     errors_fn=world.final_errors)
                if record:
                    imagined = imagined_frames(result.act_steps, agent.imagined, agent.frameskip,
                                               len(result.frames), decoder) if imagines else None
                    write_episode_gif(result.frames, goal_pixels,
                                      Path(gif_dir) / f"{method}_pair{pair.pair:03d}.gif", imagined=imagined)
                rows.append({"eval_seed": eval_seed, "pair": pair.pair, "episode": pair.episode,
                             "start_step": pair.start_step, "goal_step": pair.goal_step, "method": method,
                             **episode_columns(result, predicates)})
    bar.close()
    return pd.DataFrame(rows)


def episode_columns(result: EpisodeResult, predicates: Sequence[str]) -> dict[str, Any]:
    """The per-episode columns of the evaluation table for one `run_episode` result."""
    times = result.solve_times
    columns: dict[str, Any] = {
        "steps": result.steps,
        "num_solves": len(times),
        "plan_time_mean_s": float(np.mean(times)) if times else float("nan"),
        "plan_time_max_s": max(times, default=float("nan")),
        "plan_times_s": [float(t) for t in times],
        **{AT_START + name: float(value) for name, value in result.start_errors.items()},
        **{BEST + name: float(value) for name, value in result.best_errors.items()},
        **{FINAL + name: float(value) for name, value in result.final_errors.items()},
    }
    for predicate in predicates:
        first = result.first_success[predicate]
        columns[f"success_{predicate}"] = first is not None
        columns[f"steps_to_success_{predicate}"] = float("nan") if first is None else float(first)
        columns[f"start_satisfied_{predicate}"] = first == 0
    return columns


def make_eval_env(store: Any) -> Any:
    """The environment the dataset was recorded in, with the same settings (rendering included)."""
    return get_world(store.manifest["env"]).make_env(**store.manifest.get("env_kwargs", {}))


def evaluate_model(
    model: Any,
    meta: ModelMeta,
    manifest: pd.DataFrame,
    store: Any,
    plan_cfg: PlanConfig,
    eval_cfg: EvalConfig,
    episodes: int | None = None,
    baselines: Iterable[str] | None = None,
    gif_dir: str | Path | None = None,
    env: Any = None,
    progress: bool = False,
    decoder: ImageDecoder | None = None,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Evaluate the world model + solver (method `meta.model`, e.g. `lewm`) and the baselines
    (`baselines`, default `eval.baselines`: `random`, `zero`, `oracle`) on the manifest: `(rows, summary)`.

    `episodes` keeps the first pairs only (a uniform subset, for checkpoint selection inside a training
    loop). The model is put in eval mode for the duration and restored afterwards. `decoder` (the model's
    latents → frames) adds the decoded imagined rollouts to the planner's GIFs.
    """
    if meta.env != store.manifest["env"] or meta.image_size != store.manifest["image_size"]:
        raise ValueError(f"model trained on {meta.env} at {meta.image_size} px, dataset is "
                         f"{store.manifest['env']} at {store.manifest['image_size']} px")
    subset = manifest if episodes is None else manifest.iloc[:episodes]
    agents: dict[str, AgentFactory] = {meta.model: lambda seed: LatentMPCAgent(model, meta, plan_cfg, seed)}
    for name in eval_cfg.baselines if baselines is None else baselines:
        agents[name] = oracle_factory(meta, store, plan_cfg) if name == ORACLE \
            else baseline_agents(meta.action_dim, [name])[name]
    was_training = model.training
    model.eval()
    try:
        rows = evaluate(subset, store, env if env is not None else make_eval_env(store), agents,
                        eval_cfg, base_seed=plan_cfg.seed, gif_dir=gif_dir, progress=progress,
                        decoder=decoder)
    finally:
        model.train(was_training)
    return rows, summarize(rows)


def oracle_factory(meta: ModelMeta, store: Any, plan_cfg: PlanConfig) -> AgentFactory:
    """Factory of the simulator oracle (`SimulatorOracleAgent`) in the dataset's world and env settings,
    with the model's action statistics and frameskip; refuses a world without one before any episode."""
    world, env_kwargs = get_world(store.manifest["env"]), store.manifest.get("env_kwargs", {})

    def make(seed: int) -> SimulatorOracleAgent:
        return SimulatorOracleAgent(world, env_kwargs, meta.action_stats, meta.action_dim, meta.frameskip,
                                    plan_cfg, seed)

    try:
        make(0)
    except ValueError as error:
        raise ValueError(f"eval.baselines: {error} (remove `{ORACLE}` for this world)") from None
    return make


class PlanningCheck:
    """Planning success of the model on the first `train.plan_eval_episodes` validation pairs: the
    checkpoint selector of training (lewm.train.CheckpointSelector), by the world's headline predicate."""

    def __init__(self, params: Params, store: Any, manifest: pd.DataFrame) -> None:
        self.params, self.store, self.manifest = params, store, manifest
        self.headline = get_world(store.manifest["env"]).headline
        self.best = -1.0

    def __call__(self, model: Any, meta: ModelMeta) -> dict[str, float]:
        _, summary = evaluate_model(
            model, meta, self.manifest, self.store, self.params.plan, self.params.eval,
            episodes=self.params.train.plan_eval_episodes, baselines=(),
        )
        prefix = f"{meta.model}."
        return {f"val/plan_{k.removeprefix(prefix)}": v for k, v in summary.items()
                if k.startswith(prefix) and k.endswith("success_rate")}

    def is_best(self, metrics: dict[str, float]) -> bool:
        """True when the headline predicate's success rate beats every earlier check."""
        rate = metrics.get(f"val/plan_{self.headline}.success_rate", float("nan"))
        if math.isfinite(rate) and rate > self.best:
            self.best = rate
            return True
        return False


# ---------------------------------------------------------------------------------------------------- GIFs


def imagined_frames(act_steps: Sequence[int] | None, imagined: Sequence[Tensor], frameskip: int,
                    num_frames: int, decoder: ImageDecoder) -> list[np.ndarray] | None:
    """The decoded imagination shown beside each of an episode's `num_frames` observed frames, or None when
    the agent never planned (an episode that started at its goal).

    `imagined[i]` is what the plan chosen at env step `act_steps[i]` imagines (`LatentMPCAgent.imagined`):
    latent 0 that frame's own, latent k the predicted frame k·`frameskip` steps later. Frame t shows, of the
    latest plan chosen at or before t, the imagined frame nearest in time (the last one past its horizon), so
    the panel runs in step with the observation, and jumps back to a fresh imagination at every replanning.
    """
    if not act_steps or not imagined:
        return None
    if len(act_steps) != len(imagined):
        raise ValueError(f"{len(act_steps)} planning steps but {len(imagined)} imagined rollouts")
    decoded = decoder(torch.cat(list(imagined)))  # one batch: (solves · (1 + H), H, W, 3)
    offsets = np.cumsum([0, *(len(latents) for latents in imagined)])
    shown = []
    for t in range(num_frames):
        solve = max(0, bisect.bisect_right(act_steps, t) - 1)
        ahead = min((t - act_steps[solve] + frameskip // 2) // frameskip, len(imagined[solve]) - 1)
        shown.append(decoded[offsets[solve] + max(0, ahead)])
    return shown


def write_episode_gif(frames: Sequence[np.ndarray], goal_frame: np.ndarray, path: str | Path,
                      scale: int = 4, fps: int = 10, imagined: Sequence[np.ndarray] | None = None) -> None:
    """Write an animated GIF of `observation | goal` side by side, or `observation | goal | imagined` with
    the decoded imagination of each frame (`imagined_frames`), upscaled `scale`× (nearest), atomically."""
    from PIL import Image

    if not frames:
        raise ValueError("write_episode_gif: no frames")
    if imagined is not None and len(imagined) != len(frames):
        raise ValueError(f"write_episode_gif: {len(imagined)} imagined frames for {len(frames)} observations")
    separator = np.full((goal_frame.shape[0], 2, 3), 255, dtype=np.uint8)
    images = []
    for t, frame in enumerate(frames):
        panels = [frame, separator, goal_frame]
        if imagined is not None:
            panels += [separator, imagined[t]]
        side_by_side = np.concatenate(panels, axis=1)
        upscaled = side_by_side.repeat(scale, axis=0).repeat(scale, axis=1)
        images.append(Image.fromarray(np.ascontiguousarray(upscaled, dtype=np.uint8)))
    with atomic_file(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=round(1000 / fps), loop=0)
