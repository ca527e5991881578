"""The trials of the λ search (the search itself is lewm/bisection.py): a trial trains the world model for
`bisect.train_steps` steps at one λ, the weight of the anti-collapse term (`model.<name>.lambda`), then
plans on `bisect.val_episodes` start/goal pairs from the VALIDATION episodes; its criterion is the world's
headline predicate's success rate (`World.headline`), ties broken by the lower validation prediction loss;
a collapsed trial (effective rank fraction below `bisect.min_effective_rank_fraction` or embedding std
below `bisect.min_emb_std`) ranks last.

Trials are cached under `<out>/trials/<key>/`, the key being the training run's fingerprint
(`lewm.train.run_fingerprint`) extended by what the trial evaluates and the lewm package's code, so a
re-run reuses finished trials and an interrupted one resumes from its checkpoint. With tracking, each
trial is an MLflow child run of the search's parent run; the best trial's model is registered and given
the alias `champion`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lewm.bisection import (
    RunRound,
    SearchResult,
    TrialCache,
    TrialResult,
    bracket,
    is_collapsed,
    plot_search,
    run_sequentially,
    search_lambda,
    search_table,
)
from lewm.config import PROJECT_ROOT, Params, load_params
from lewm.data.storage import EpisodeStore
from lewm.envs import get_world
from lewm.io import atomic_file, write_json


@dataclass(frozen=True)
class SearchSetup:
    """Everything a trial needs, plain and picklable (trials may run in worker processes)."""

    env: str
    params_path: str | None
    overrides: tuple[str, ...]
    data_dir: str
    out_dir: str
    manifest_path: str
    parent_run_id: str | None  # None: nothing is tracked

    @property
    def trials_dir(self) -> Path:
        return Path(self.out_dir) / "trials"

    def trial_params(self, lambda_: float) -> Params:
        """The parameters of the trial at `lambda_`: the search's, with λ, steps and seed overridden (and
        no planning checks during training: the trial plans once, at the end)."""
        params = load_params(self.params_path, list(self.overrides), self.env)
        cfg = params.bisect
        trial = [f"model.{params.model.name}.lambda={lambda_!r}", f"train.max_steps={cfg.train_steps}",
                 f"train.seed={cfg.seed}", "train.plan_eval_every=0"]
        return load_params(self.params_path, [*self.overrides, *trial], self.env)


@dataclass
class SearchOutcome:
    """What a finished search left behind."""

    result: SearchResult
    table_path: Path
    plot_path: Path
    parent_run_id: str | None
    model_version: str | None


def code_version() -> str:
    """Hash of the lewm package's sources: a change to the model, training or planning code invalidates
    cached trials, a change to the pipelines or docs does not."""
    digest = hashlib.sha256()
    for path in sorted((PROJECT_ROOT / "lewm").rglob("*.py")):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def trial_key(params: Params, env: str, data_identity: str) -> str:
    """The training fingerprint of the trial, extended by its evaluation and the code."""
    from lewm.train import run_fingerprint

    return run_fingerprint(
        params, env, data_identity, plan=dataclasses.asdict(params.plan),
        eval={"goal_offset": params.eval.goal_offset, "budget": params.eval.budget,
              "eval_seeds": params.eval.eval_seeds},
        val_pairs={"n": params.bisect.val_episodes, "seed": params.bisect.seed}, code=code_version(),
    )


def run_trial(setup: SearchSetup, lambda_: float) -> TrialResult:
    """The trial at `lambda_`: from the cache if it already ran, else trained and evaluated now."""
    params = setup.trial_params(lambda_)
    key = trial_key(params, setup.env, EpisodeStore.open(setup.data_dir).identity)
    result = TrialCache(setup.trials_dir).get_or_run(
        key, lambda directory: train_and_evaluate(setup, params, lambda_, directory)
    )
    # the threshold is not part of the key: apply the current one to cached trials too
    collapsed = is_collapsed(result.effective_rank_fraction, result.emb_std, result.val_pred_loss,
                             params.bisect.min_effective_rank_fraction, params.bisect.min_emb_std)
    return dataclasses.replace(result, collapsed=collapsed)


def train_and_evaluate(setup: SearchSetup, params: Params, lambda_: float, directory: Path) -> TrialResult:
    """Short training at `lambda_` into `directory/train`, then planning on the validation pairs."""
    from lewm.checkpoint import load_model
    from lewm.evaluation import evaluate_model, read_manifest
    from lewm.tracking import RunTracker, log_to_run
    from lewm.train import train

    tracker = None
    if setup.parent_run_id is not None:
        tags = {"env": setup.env, "stage": "bisect-trial", "lambda": f"{lambda_:.6g}",
                "trial": directory.name}
        tracker = RunTracker(params.tracking, run_name=f"trial-{setup.env}-lambda={lambda_:.4g}",
                             tags=tags, parent_run_id=setup.parent_run_id, log_checkpoint=False)
    out_dir = directory / "train"
    outcome = train(params, setup.env, setup.data_dir, out_dir, resume=True, tracker=tracker, progress=False)

    loaded = load_model(outcome.checkpoint)
    eval_cfg = dataclasses.replace(params.eval, gifs=0)
    rows, summary = evaluate_model(loaded.model, loaded.meta, read_manifest(setup.manifest_path),
                                   EpisodeStore.open(setup.data_dir), params.plan, eval_cfg, baselines=())
    with atomic_file(directory / "val_episodes.parquet") as tmp:
        rows.to_parquet(tmp, index=False)
    prefix = f"{loaded.meta.model}."
    planning = {key.removeprefix(prefix): value for key, value in summary.items() if key.startswith(prefix)}
    if outcome.run_id is not None:
        log_to_run(outcome.run_id, {f"val_plan/{k}": v for k, v in planning.items()},
                   [directory / "val_episodes.parquet"], artifact_path="bisect")

    # finished: model.pt holds the same final state (until now last.pt let a failed evaluation resume)
    (out_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
    metrics = outcome.metrics
    loss = float(metrics.get("val_pred_loss", float("nan")))
    rank_fraction = float(metrics.get("val_effective_rank_fraction", 0.0))
    emb_std = float(metrics.get("val_emb_std", float("nan")))
    headline = get_world(setup.env).headline
    return TrialResult(
        lambda_=lambda_, success_rate=float(planning[f"{headline}.success_rate"]),
        val_pred_loss=loss, effective_rank_fraction=rank_fraction,
        collapsed=is_collapsed(rank_fraction, emb_std, loss, params.bisect.min_effective_rank_fraction,
                               params.bisect.min_emb_std),
        run_id=outcome.run_id, emb_std=emb_std,
    )


def open_dataset(env: str, data_dir: str | Path) -> EpisodeStore:
    """The `EpisodeStore` at `data_dir`, checked to hold `env` episodes."""
    store = EpisodeStore.open(data_dir)
    if store.manifest["env"] != env:
        raise ValueError(f"{data_dir}: a {store.manifest['env']!r} dataset, not {env!r}")
    return store


def prepare(
    env: str, params_path: str | None, overrides: list[str], data_dir: str | Path | None,
    out_dir: str | Path | None, parent_run_id: str | None,
) -> SearchSetup:
    """Check the dataset and write the validation manifest every trial is scored on."""
    from lewm.evaluation import build_manifest, write_manifest

    params = load_params(params_path, overrides, env)
    data_dir = Path(data_dir or f"data/{env}")
    out_dir = Path(out_dir or f"runs/{env}/bisect")
    store = open_dataset(env, data_dir)
    manifest = build_manifest(store, split="val", n=params.bisect.val_episodes,
                              goal_offset=params.eval.goal_offset, seed=params.bisect.seed)
    manifest_path = out_dir / "val_manifest.parquet"
    write_manifest(manifest, manifest_path)
    return SearchSetup(env=env, params_path=params_path, overrides=tuple(overrides),
                       data_dir=str(data_dir.resolve()), out_dir=str(out_dir.resolve()),
                       manifest_path=str(manifest_path.resolve()), parent_run_id=parent_run_id)


def write_search(result: SearchResult, out_dir: str | Path) -> tuple[Path, Path]:
    """search.parquet (the trace), search.png (criterion vs λ) and best.json, atomically."""
    out_dir = Path(out_dir)
    table = search_table(result)
    table_path, plot_path = out_dir / "search.parquet", out_dir / "search.png"
    with atomic_file(table_path) as tmp:
        table.to_parquet(tmp, index=False)
    plot_search(table, plot_path)
    best = result.best
    low, high = bracket(result.trials)
    write_json(out_dir / "best.json", {**dataclasses.asdict(best), "criterion": best.criterion,
                                       "bracket": [low, high], "trials": len(result.trials)})
    return table_path, plot_path


def publish_search(setup: SearchSetup, params: Params, result: SearchResult) -> str | None:
    """Log the trace to the parent run, register the best trial's model and make it the champion.
    Returns the registered version (None when the best trial collapsed: no champion from a failure)."""
    from lewm.registry import model_name, register, set_champion
    from lewm.tracking import log_to_run, set_run_tag

    assert setup.parent_run_id is not None
    out_dir = Path(setup.out_dir)
    best = result.best
    log_to_run(setup.parent_run_id,
               {"best/lambda": best.lambda_, "best/criterion": best.criterion,
                "best/val_pred_loss": best.val_pred_loss, "trials": len(result.trials)},
               [out_dir / name for name in ("search.parquet", "search.png", "best.json",
                                            "val_manifest.parquet")],
               artifact_path="bisect")
    if best.collapsed or best.run_id is None:
        return None
    name = model_name(params.tracking, setup.env, params.model.name)
    version = register(best.run_id, name, tags={"lambda": best.lambda_, "criterion": best.criterion,
                                                "bisect_run_id": setup.parent_run_id})
    set_champion(name, version)
    set_run_tag(setup.parent_run_id, "champion_version", version)
    return version


Publish = Callable[[SearchSetup, Params, SearchResult], str | None]
"""Logs a finished search to MLflow and sets the champion; returns the registered version."""


def run_search(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    run_round: RunRound = run_sequentially,
    publish: Publish = publish_search,
) -> SearchOutcome:
    """Run the λ search for `env`. `run_round` evaluates one round's trials (sequentially by default);
    `publish` logs the result to MLflow and sets the champion."""
    import functools

    from lewm.tracking import create_run, end_run

    overrides = list(overrides or [])
    params = load_params(params_path, overrides, env)
    cfg = params.bisect
    parent_run_id = None
    if track:
        parent_run_id = create_run(params.tracking, f"bisect-{env}",
                                   {"env": env, "stage": "bisect", "profile": params.profile},
                                   {"bisect": dataclasses.asdict(cfg)})
    try:
        setup = prepare(env, params_path, overrides, data_dir, out_dir, parent_run_id)
        evaluate = functools.partial(run_trial, setup)  # picklable: trials may run in worker processes
        result = search_lambda(evaluate, cfg.lambda_lo, cfg.lambda_hi, cfg.trials, run_round)
        table_path, plot_path = write_search(result, setup.out_dir)
        version = publish(setup, params, result) if track else None
    except BaseException:
        if parent_run_id is not None:
            end_run(parent_run_id, "FAILED")
        raise
    if parent_run_id is not None:
        end_run(parent_run_id, "FINISHED")
    return SearchOutcome(result, table_path, plot_path, parent_run_id, version)
