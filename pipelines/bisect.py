"""λ bisection: search the SIGReg weight by short trainings scored by planning on validation pairs.

    python -m pipelines.bisect --env pusht [--set bisect.trials=3 --set bisect.train_steps=50]

Search logic: lewm/bisection.py. A trial trains `bisect.train_steps` steps at one λ (seed `bisect.seed`
for every trial, so trials differ by λ only), then plans on the first `bisect.val_episodes` start/goal
pairs drawn from the VALIDATION episodes; its criterion is the `reference` success rate, ties broken by
the lower validation prediction loss, a collapsed trial (effective rank fraction below
`bisect.min_effective_rank_fraction` or embedding std below `bisect.min_emb_std`) ranks last.

Writes runs/<env>/bisect/{val_manifest.parquet, search.parquet, search.png, best.json} and one directory
per trial, trials/<key>/ (its training run and result.json). The key hashes λ, every parameter that
determines the trial, the dataset's identity and the lewm package's code, so a re-run reuses finished
trials (marked `cached`) and an interrupted trial resumes from its checkpoint.

MLflow: one parent run `bisect-<env>` holds the trace (search.parquet, search.png) and the best λ; every
trial is a child run (tag mlflow.parentRunId) with its training curves, logged model and validation
planning metrics. The best trial's model is registered as `tracking.registered_model` and given the
alias `champion`. With `bisect.parallel > 1` a round's trials run in that many worker processes.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

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
    trial_key,
)
from lewm.config import PROJECT_ROOT, Params, load_params
from lewm.io import atomic_file, write_json
from pipelines._cli import base_parser, run_cli

CRITERION_PREDICATE = "reference"


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
        cfg = load_params(self.params_path, list(self.overrides)).bisect
        trial = [f"train.lambda={lambda_!r}", f"train.max_steps={cfg.train_steps}", f"train.seed={cfg.seed}",
                 "train.plan_eval_every=0"]
        return load_params(self.params_path, [*self.overrides, *trial])


@dataclass
class BisectOutcome:
    """What a finished search left behind."""

    result: SearchResult
    table_path: Path
    plot_path: Path
    parent_run_id: str | None
    model_version: str | None


# -------------------------------------------------------------------------------------------- identity


def data_identity(data_dir: str | Path) -> str:
    """Hash of the dataset's manifest.json (seeds, counts, splits, creation time: regenerating changes it)."""
    return hashlib.sha256((Path(data_dir) / "manifest.json").read_bytes()).hexdigest()[:16]


def code_version() -> str:
    """Hash of the lewm package's sources: a change to the model, training or planning code invalidates
    cached trials, a change to the pipelines or docs does not."""
    digest = hashlib.sha256()
    for path in sorted((PROJECT_ROOT / "lewm").rglob("*.py")):
        digest.update(str(path.relative_to(PROJECT_ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def trial_payload(params: Params, lambda_: float, data_id: str, code: str) -> dict[str, Any]:
    """Everything that determines a trial's result (execution-only settings such as logging excluded)."""
    from lewm.train import result_train_params

    return {
        "lambda": lambda_, "train": result_train_params(params.train),
        "model": dataclasses.asdict(params.model),
        "clip": dataclasses.asdict(params.clip), "plan": dataclasses.asdict(params.plan),
        "eval": {"goal_offset": params.eval.goal_offset, "budget": params.eval.budget,
                 "eval_seeds": params.eval.eval_seeds, "predicate": CRITERION_PREDICATE},
        "val_pairs": {"n": params.bisect.val_episodes, "seed": params.bisect.seed},
        "data": data_id, "code": code,
    }


# ---------------------------------------------------------------------------------------------- trials


def run_trial(setup: SearchSetup, lambda_: float) -> TrialResult:
    """The trial at `lambda_`: from the cache if it already ran, else trained and evaluated now."""
    params = setup.trial_params(lambda_)
    key = trial_key(trial_payload(params, lambda_, data_identity(setup.data_dir), code_version()))
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
    from lewm.data.storage import EpisodeStore
    from lewm.evaluation import evaluate_model, read_manifest
    from lewm.tracking import RunTracker
    from lewm.train import train

    tracker = None
    if setup.parent_run_id is not None:
        tags = {"env": setup.env, "stage": "bisect-trial", "lambda": f"{lambda_:.6g}",
                "trial": directory.name}
        tracker = RunTracker(params.tracking, run_name=f"trial-{setup.env}-lambda={lambda_:.4g}",
                             tags=tags, parent_run_id=setup.parent_run_id, log_checkpoint=False)
    out_dir = directory / "train"
    outcome = train(params, setup.env, setup.data_dir, out_dir, resume=True, tracker=tracker, progress=False)

    model, meta = load_model(outcome.checkpoint)
    eval_cfg = dataclasses.replace(params.eval, predicates=[CRITERION_PREDICATE], gifs=0)
    rows, summary = evaluate_model(model, meta, read_manifest(setup.manifest_path),
                                   EpisodeStore.open(setup.data_dir), params.plan, eval_cfg, baselines=())
    rows.to_parquet(directory / "val_episodes.parquet", index=False)
    planning = {key.removeprefix("lewm."): value for key, value in summary.items() if key.startswith("lewm.")}
    if outcome.run_id is not None:
        _log_trial_evaluation(outcome.run_id, planning, directory / "val_episodes.parquet")

    # finished: model.pt holds the same final state (until now last.pt let a failed evaluation resume)
    (out_dir / "checkpoints" / "last.pt").unlink(missing_ok=True)
    metrics = outcome.metrics
    loss = float(metrics.get("val_pred_loss", float("nan")))
    rank_fraction = float(metrics.get("val_effective_rank_fraction", 0.0))
    emb_std = float(metrics.get("val_emb_std", float("nan")))
    return TrialResult(
        lambda_=lambda_, success_rate=float(planning[f"{CRITERION_PREDICATE}.success_rate"]),
        val_pred_loss=loss, effective_rank_fraction=rank_fraction,
        collapsed=is_collapsed(rank_fraction, emb_std, loss, params.bisect.min_effective_rank_fraction,
                               params.bisect.min_emb_std),
        run_id=outcome.run_id, emb_std=emb_std,
    )


def _log_trial_evaluation(run_id: str, planning: dict[str, float], episodes: Path) -> None:
    """Validation planning metrics (`val_plan/...`) and per-episode table into the trial's own run."""
    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    metrics = [Metric(f"val_plan/{k}", float(v), 0, 0) for k, v in planning.items()
               if isinstance(v, int | float)]
    client.log_batch(run_id, metrics=metrics)
    client.log_artifact(run_id, str(episodes), artifact_path="bisect")


# ------------------------------------------------------------------------------------------ the search


def prepare(
    env: str, params_path: str | None, overrides: Sequence[str], data_dir: str | Path | None,
    out_dir: str | Path | None, parent_run_id: str | None,
) -> SearchSetup:
    """Check the dataset and write the validation manifest every trial is scored on."""
    from lewm.evaluation import build_manifest, write_manifest

    params = load_params(params_path, list(overrides))
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


def open_dataset(env: str, data_dir: str | Path) -> Any:
    """The `EpisodeStore` at `data_dir`, checked to hold `env` episodes."""
    from lewm.data.storage import EpisodeStore

    store = EpisodeStore.open(data_dir)
    if store.manifest["env"] != env:
        raise ValueError(f"{data_dir}: a {store.manifest['env']!r} dataset, not {env!r}")
    return store


def start_parent_run(params: Params, env: str) -> str:
    """The MLflow run that holds the search (created, not activated: trials may run in other threads)."""
    import mlflow
    from mlflow.entities import Param

    from lewm.tracking import configure

    configure(params.tracking)
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    client = mlflow.MlflowClient()
    run = client.create_run(experiment.experiment_id, run_name=f"bisect-{env}",
                            tags={"env": env, "stage": "bisect", "profile": params.profile})
    cfg = dataclasses.asdict(params.bisect)
    client.log_batch(run.info.run_id, params=[Param(f"bisect.{k}", str(v)) for k, v in cfg.items()])
    return run.info.run_id


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
    import mlflow
    from mlflow.entities import Metric

    from lewm.registry import model_name, register, set_champion

    assert setup.parent_run_id is not None
    client = mlflow.MlflowClient()
    out_dir = Path(setup.out_dir)
    for name in ("search.parquet", "search.png", "best.json", "val_manifest.parquet"):
        client.log_artifact(setup.parent_run_id, str(out_dir / name), artifact_path="bisect")
    best = result.best
    client.log_batch(setup.parent_run_id, metrics=[
        Metric("best/lambda", best.lambda_, 0, 0), Metric("best/criterion", best.criterion, 0, 0),
        Metric("best/val_pred_loss", best.val_pred_loss, 0, 0), Metric("trials", len(result.trials), 0, 0),
    ])
    if best.collapsed or best.run_id is None:
        return None
    name = model_name(params.tracking, setup.env)
    version = register(best.run_id, name, tags={"lambda": best.lambda_, "criterion": best.criterion,
                                                "bisect_run_id": setup.parent_run_id})
    set_champion(name, version)
    client.set_tag(setup.parent_run_id, "champion_version", version)
    return version


def bisect_stage(
    env: str,
    params_path: str | None = None,
    overrides: list[str] | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    track: bool = True,
    run_round: RunRound = run_sequentially,
    publish: Callable[[SearchSetup, Params, SearchResult], str | None] = publish_search,
) -> BisectOutcome:
    """Run the λ search for `env`. `run_round` evaluates one round's trials (sequentially by default);
    `publish` logs the result to MLflow and sets the champion (the Prefect flow passes a retried task)."""
    overrides = list(overrides or [])
    params = load_params(params_path, overrides)
    cfg = params.bisect
    parent_run_id = start_parent_run(params, env) if track else None
    try:
        setup = prepare(env, params_path, overrides, data_dir, out_dir, parent_run_id)
        evaluate = functools.partial(run_trial, setup)  # picklable: trials may run in worker processes
        result = search_lambda(evaluate, cfg.lambda_lo, cfg.lambda_hi, cfg.trials, run_round)
        table_path, plot_path = write_search(result, setup.out_dir)
        version = publish(setup, params, result) if track else None
    except BaseException:
        _end_run(parent_run_id, "FAILED")
        raise
    _end_run(parent_run_id, "FINISHED")
    return BisectOutcome(result, table_path, plot_path, parent_run_id, version)


def _end_run(run_id: str | None, status: str) -> None:
    if run_id is not None:
        import mlflow

        mlflow.MlflowClient().set_terminated(run_id, status)


def summary(outcome: BisectOutcome) -> dict[str, Any]:
    """The search's result in a few JSON-able numbers (what the flow returns and the CLI prints)."""
    best, trials = outcome.result.best, outcome.result.trials
    return {
        "best_lambda": best.lambda_, "criterion": best.criterion, "success_rate": best.success_rate,
        "val_pred_loss": best.val_pred_loss, "collapsed": best.collapsed, "trials": len(trials),
        "cached": sum(t.cached for t in trials), "bracket": list(bracket(trials)),
        "model_version": outcome.model_version, "parent_run_id": outcome.parent_run_id,
        "table": str(outcome.table_path), "plot": str(outcome.plot_path),
    }


# --------------------------------------------------------------------------------------------- Prefect


def limit_torch_threads(threads: int) -> None:
    """Worker-process initializer: share the cores among parallel trials instead of oversubscribing."""
    import torch

    torch.set_num_threads(threads)


@task(name="bisect-trial", cache_policy=NO_CACHE, task_run_name="trial-lambda={lambda_:.4g}")
def trial_task(evaluate: Callable[[float], TrialResult], lambda_: float) -> TrialResult:
    """One trial (no retries: a failing trial is a bug or a bad parameter, not flaky I/O)."""
    return evaluate(lambda_)


@task(name="publish-bisection", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def publish_task(setup: SearchSetup, params: Params, result: SearchResult) -> str | None:
    """MLflow logging and registration: I/O against the tracking server, retried."""
    return publish_search(setup, params, result)


def prefect_round(parallel: int) -> RunRound:
    """A `run_round` running each trial as a Prefect task; with `parallel > 1`, in that many worker
    processes (processes, not threads: training seeds torch's global RNG, which threads would share)."""

    def run_round(evaluate: Callable[[float], TrialResult], lambdas: Sequence[float]) -> list[TrialResult]:
        if parallel <= 1 or len(lambdas) == 1:
            return [trial_task(evaluate, lam) for lam in lambdas]
        from prefect.task_runners import ProcessPoolTaskRunner

        workers = min(parallel, len(lambdas))
        threads = max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolTaskRunner(max_workers=workers, initializer=limit_torch_threads,
                                   initargs=(threads,)) as runner:
            futures = [runner.submit(trial_task, parameters={"evaluate": evaluate, "lambda_": lam})
                       for lam in lambdas]
            return [future.result() for future in futures]

    return run_round


@flow(name="bisect")
def bisect_flow(
    env: str = "pusht", params_path: str | None = None, overrides: list[str] | None = None,
    data_dir: str | None = None, out_dir: str | None = None, track: bool = True,
) -> dict[str, Any]:
    """Prefect flow of the λ search (the same function the tests call): trials are tasks, run in
    parallel worker processes when `bisect.parallel > 1`; publishing to MLflow is a retried task."""
    parallel = load_params(params_path, overrides).bisect.parallel
    outcome = bisect_stage(env, params_path, overrides, data_dir, out_dir, track,
                           run_round=prefect_round(parallel), publish=publish_task)
    return summary(outcome)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--data", default=None, help="dataset directory (default: data/<env>)")
    parser.add_argument("--out", default=None, help="output directory (default: runs/<env>/bisect)")
    parser.add_argument("--no-track", action="store_true", help="no MLflow runs, no registration")
    args = parser.parse_args()
    load_params(args.params, args.overrides)  # user errors as one line, before Prefect starts its server
    open_dataset(args.env, args.data or f"data/{args.env}")
    result = bisect_flow(args.env, args.params, args.overrides, args.data, args.out, not args.no_track)
    version = result["model_version"]
    champion = f", registered version {version} as champion" if version else ""
    print(f"best λ = {result['best_lambda']:.4g} (success {result['success_rate']:.0%}, val pred loss "
          f"{result['val_pred_loss']:.4f}) after {result['trials']} trials ({result['cached']} cached), "
          f"bracket [{result['bracket'][0]:.4g}, {result['bracket'][1]:.4g}]{champion} -> {result['table']}")


if __name__ == "__main__":
    run_cli(main)
