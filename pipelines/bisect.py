"""λ bisection as a Prefect flow: search the SIGReg weight by short trainings scored by planning on
validation pairs.

    python -m pipelines.bisect --env pusht [--set bisect.trials=3 --set bisect.train_steps=50]

The search is lewm/bisection.py, its trials lewm/lambda_trials.py; this module runs the trials as Prefect
tasks (in `bisect.parallel` worker processes) and publishes to MLflow in a retried task. Writes
runs/<env>/bisect/{val_manifest.parquet, search.parquet, search.png, best.json} and trials/<key>/.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lewm.bisection import RunRound, SearchResult, TrialResult, bracket
from lewm.config import Params, load_params
from lewm.lambda_trials import SearchOutcome, SearchSetup, open_dataset, publish_search, run_search
from pipelines._cli import base_parser, run_cli
from pipelines._reaper import watch_process


def summary(outcome: SearchOutcome) -> dict[str, Any]:
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


def init_trial_worker(threads: int) -> None:
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
        with ProcessPoolTaskRunner(max_workers=workers, initializer=init_trial_worker,
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
    watch_process()  # a killed search also stops its temporary Prefect server and trial workers
    parallel = load_params(params_path, overrides).bisect.parallel
    outcome = run_search(env, params_path, overrides, data_dir, out_dir, track,
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
