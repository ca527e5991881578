"""Offline dataset generation: roll out a data-collection policy in an environment and store the episodes.

Reproducibility: every episode's randomness (env reset seed, policy rng) is derived from the dataset seed
and the episode index alone (`episode_seeds`), so the data is identical whatever the number of worker
processes. Workers are spawned processes, each with its own env; results are consumed in episode order
and streamed to disk by `write_dataset` (atomic: a failure leaves nothing at the target).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lewm.config import DataConfig
from lewm.data.storage import MANIFEST, EpisodeRecord, write_dataset
from lewm.envs import get_world, make_env
from lewm.progress import progress_bar

_EPISODE_STREAM, _SPLIT_STREAM = 0, 1  # independent SeedSequence streams under the dataset seed


@dataclass(frozen=True)
class EpisodeJob:
    """Everything a worker needs to record one episode (small and picklable)."""

    env: str  # the world's name
    episode: int
    seed: int  # the dataset seed
    policy: str
    action_noise: float
    max_steps: int
    policy_kwargs: dict[str, float] = field(default_factory=dict)


def episode_seeds(seed: int, episode: int) -> tuple[int, np.random.Generator]:
    """The env reset seed and the policy rng of `episode`, from the dataset seed and the index alone."""
    reset_seq, policy_seq = np.random.SeedSequence(seed, spawn_key=(_EPISODE_STREAM, episode)).spawn(2)
    return int(reset_seq.generate_state(1)[0]), np.random.default_rng(policy_seq)


def split_episodes(
    episodes: int, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[int]]:
    """Assign episode ids to train/val/test by a seeded permutation.

    A split with a positive fraction gets `round(fraction·episodes)` episodes but at least one; train keeps
    the rest and must keep at least one.
    """
    n_val, n_test = _split_size(episodes, val_fraction), _split_size(episodes, test_fraction)
    if episodes - n_val - n_test < 1:
        needed = 1 + (n_val > 0) + (n_test > 0)
        raise ValueError(
            f"{episodes} episodes are too few for the train/val/test split (val_fraction="
            f"{val_fraction}, test_fraction={test_fraction}): need at least {needed}"
        )
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLIT_STREAM,)))
    order = rng.permutation(episodes)
    return {
        "train": sorted(order[n_val + n_test :].tolist()),
        "val": sorted(order[n_test : n_test + n_val].tolist()),
        "test": sorted(order[:n_test].tolist()),
    }


def _split_size(episodes: int, fraction: float) -> int:
    return 0 if fraction == 0 else max(1, round(fraction * episodes))


def record_episode(env: Any, job: EpisodeJob) -> EpisodeRecord:
    """Reset `env` with the episode's seed and run the policy for `max_steps` steps (max_steps + 1 frames).

    Actions are clipped to [-1, 1] before stepping, so the stored action is the executed one.
    """
    reset_seed, policy_rng = episode_seeds(job.seed, job.episode)
    obs, _ = env.reset(seed=reset_seed)
    policy = get_world(job.env).make_policy(job.policy, policy_rng, job.action_noise, **job.policy_kwargs)
    policy.reset(obs)
    observations, actions, contacts = [obs], [], []
    for _ in range(job.max_steps):
        action = np.clip(np.asarray(policy.act(obs), dtype=np.float32), -1.0, 1.0)
        obs, _, _, _, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        contacts.append(int(info.get("n_contacts", 0)))
    return EpisodeRecord(
        episode=job.episode,
        seed=reset_seed,
        frames=np.stack([o["pixels"] for o in observations]),
        actions=np.stack(actions),
        states=np.stack([o["state"] for o in observations]),
        proprio=np.stack([o["proprio"] for o in observations]),
        n_contacts=np.asarray(contacts),
    )


def generate_dataset(env_name: str, cfg: DataConfig, target: str | Path, progress: bool = True) -> Path:
    """Generate `cfg.episodes` episodes of `env_name` with `cfg.workers` processes into `target`.

    Input is checked before any work starts (ValueError naming the problem); the dataset appears at
    `target` only once complete, replacing an older dataset there.
    """
    target = Path(target)
    check_config(cfg, section=f"data.{env_name}")
    splits = split_episodes(cfg.episodes, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    check_target(target)
    env_kwargs = {"image_size": cfg.image_size, "max_steps": cfg.max_steps}
    env = make_env(env_name, **env_kwargs)
    try:
        # raises if the policy or its options are unknown
        get_world(env_name).make_policy(cfg.policy, np.random.default_rng(cfg.seed), cfg.action_noise,
                                        **cfg.policy_kwargs)
        manifest = _base_manifest(env_name, env_kwargs, env.unwrapped, cfg, splits)
        jobs = [
            EpisodeJob(env_name, i, cfg.seed, cfg.policy, cfg.action_noise, cfg.max_steps,
                       dict(cfg.policy_kwargs))
            for i in range(cfg.episodes)
        ]
        workers = min(cfg.workers, cfg.episodes)
        with contextlib.closing(_episodes(env, env_name, env_kwargs, jobs, workers)) as records:
            bar = progress_bar(records, total=len(jobs), desc=f"generate {env_name}", unit="ep",
                               enabled=progress)
            return write_dataset(target, bar, manifest)
    finally:
        env.close()


def check_config(cfg: DataConfig, section: str = "data") -> None:
    """Raise one ValueError listing every invalid field of `cfg` (named `<section>.<field>`)."""
    problems = [
        f"{section}.{name} must be positive, got {getattr(cfg, name)}"
        for name in ("episodes", "max_steps", "image_size", "workers")
        if getattr(cfg, name) < 1
    ]
    if cfg.action_noise < 0:
        problems.append(f"{section}.action_noise must be ≥ 0, got {cfg.action_noise}")
    for name in ("val_fraction", "test_fraction"):
        if not 0 <= getattr(cfg, name) < 1:
            problems.append(f"{section}.{name} must be in [0, 1), got {getattr(cfg, name)}")
    held_out = cfg.val_fraction + cfg.test_fraction
    if held_out >= 1:
        problems.append(f"{section}.val_fraction + test_fraction must be < 1, got {held_out:g}")
    if problems:
        raise ValueError("; ".join(problems))


def check_target(target: Path) -> None:
    """Fail early when `target` cannot be written, or would replace something that is not a dataset."""
    is_dataset_or_empty = target.is_dir() and ((target / MANIFEST).is_file() or not any(target.iterdir()))
    if target.exists() and not is_dataset_or_empty:
        raise ValueError(f"{target}: exists and is not a dataset; refusing to replace it")
    ancestor = target.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ValueError(f"{target}: cannot be created, {ancestor} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as exc:
        raise ValueError(f"{target}: cannot write in {ancestor} ({exc.strerror})") from None


def _base_manifest(
    env_name: str, env_kwargs: dict[str, Any], env: Any, cfg: DataConfig, splits: dict[str, list[int]]
) -> dict[str, Any]:
    """What the writer cannot know: how the data was made."""
    return {
        "env": env_name,
        "env_kwargs": env_kwargs,
        "policy": cfg.policy,
        "action_noise": cfg.action_noise,
        "policy_kwargs": dict(cfg.policy_kwargs),
        "seed": cfg.seed,
        "max_steps": cfg.max_steps,
        "val_fraction": cfg.val_fraction,
        "test_fraction": cfg.test_fraction,
        "splits": splits,
        "split_sizes": {name: len(ids) for name, ids in splits.items()},
        "state_names": list(env.state_names),
        "proprio_names": list(env.proprio_names),
        "action_dim": int(env.action_dim),
    }


def _episodes(
    env: Any, env_name: str, env_kwargs: dict[str, Any], jobs: list[EpisodeJob], workers: int
) -> Iterator[EpisodeRecord]:
    """Recorded episodes in job order: in this process for one worker, else from a spawned pool."""
    if workers == 1:
        for job in jobs:
            yield record_episode(env, job)
        return
    context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(env_name, env_kwargs)) as pool:
        yield from pool.imap(_record_in_worker, jobs)


_worker_env: Any = None


def _init_worker(env_name: str, env_kwargs: dict[str, Any]) -> None:
    """Build this worker's env once; Ctrl-C is handled by the parent, which terminates the pool."""
    global _worker_env
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_env = make_env(env_name, **env_kwargs)


def _record_in_worker(job: EpisodeJob) -> EpisodeRecord:
    return record_episode(_worker_env, job)
