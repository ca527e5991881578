"""The whole pipeline as one Prefect flow: per environment generate → manifest → train → decode → plan, probe,
imagine, voe, and for the worlds in `compare.envs` the comparison of world models and solvers
(pipelines/compare.py).

    python -m pipelines.full [--env pusht] [--stages generate,train] [--set key=value]

Each stage is a Prefect task calling the stage's plain function (`pipelines.<stage>.<stage>_stage`, the
same function its CLI and DVC stage run), so a run shows up stage by stage in the Prefect UI and writes
the same outputs as `dvc repro`. Stage modules are imported when their task runs: a missing one fails
that task with a clear message instead of breaking the import of this module. Stages run one after the
other: generation already spreads episodes over `data.<env>.workers` processes, and torch uses every
core for a single stage. Tasks have no retries: stages are computations, and a failure is a bug or a bad
parameter, not flaky I/O (MLflow logging inside them is cheap to redo by re-running).

`dvc repro` is the way to reproduce results (it skips up-to-date stages and records dvc.lock); this flow
is what the Prefect schedule (pipelines/serve.py) runs nightly: the full pipeline from scratch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from lewm.config import load_params
from pipelines._cli import base_parser, run_cli
from pipelines._reaper import watch_process

STAGES = ("generate", "manifest", "train", "decode", "plan", "probe", "imagine", "voe", "compare")
"""Every stage, in an order that respects dvc.yaml's dependencies: generate → manifest → train (its
planning checks read the validation manifest) → decode (the pixel decoder, which plan's GIFs and voe's plot
show) → plan, probe, imagine and voe → compare (runs the DVC stages in `COMPARE_PARTS`)."""

COMPARE_PARTS = ("train_baseline", "plan_baseline", "compare_curves", "compare_solvers", "compare")
"""The DVC stages that the flow's `compare` step runs, in this order (`pipelines.compare.compare_stage`)."""


class StageUnavailable(ValueError):
    """A stage's module is not part of this checkout (yet)."""


def stage_function(stage: str) -> Callable[..., Any]:
    """`pipelines.<stage>.<stage>_stage`, imported now; StageUnavailable if the module does not exist."""
    check_stages([stage])
    module_name = f"pipelines.{stage}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise  # the stage exists but one of its own imports is missing
        raise StageUnavailable(
            f"stage {stage!r}: module {module_name} is not available in this checkout; run the other "
            f"stages with --stages (e.g. --stages {','.join(s for s in STAGES if s != stage)})"
        ) from None
    function = getattr(module, f"{stage}_stage", None)
    if function is None:
        raise StageUnavailable(f"stage {stage!r}: {module_name} has no function {stage}_stage")
    return function


def check_stages(stages: Sequence[str]) -> None:
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown stages {unknown} (known: {', '.join(STAGES)})")


def pipeline_steps(envs: Sequence[str], stages: Sequence[str] | None = None,
                   compare_envs: Sequence[str] = ()) -> list[tuple[str, str]]:
    """The (stage, env) pairs to run, in order: all stages of one environment, then the next; `compare`
    only for the environments in `compare_envs`."""
    selected = list(STAGES) if stages is None else list(stages)
    check_stages(selected)
    if not envs:
        raise ValueError("no environment to run (params `envs` is empty)")
    return [(stage, env) for env in envs for stage in STAGES
            if stage in selected and (stage != "compare" or env in compare_envs)]


def run_stage(stage: str, env: str, params_path: str | None, overrides: list[str] | None) -> Any:
    """Run one stage's plain function with the pipeline's parameters."""
    return stage_function(stage)(env, params_path, overrides)


@task(name="stage", task_run_name="{stage}-{env}", cache_policy=NO_CACHE)
def stage_task(stage: str, env: str, params_path: str | None, overrides: list[str] | None) -> Any:
    return run_stage(stage, env, params_path, overrides)


@flow(name="full-pipeline")
def full_flow(
    envs: list[str] | None = None, stages: list[str] | None = None,
    params_path: str | None = None, overrides: list[str] | None = None,
) -> list[str]:
    """Run `stages` (default: all) for `envs` (default: params `envs`); returns the steps run."""
    watch_process()  # a killed run also stops its temporary Prefect server
    params = load_params(params_path, overrides)
    steps = pipeline_steps(envs or params.envs, stages, params.compare.envs)
    for stage, env in steps:
        stage_task(stage, env, params_path, overrides)
    return [f"{stage}@{env}" for stage, env in steps]


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", default=None,
                        help="environment (repeatable; default: params `envs`)")
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    args = parser.parse_args()
    stages = args.stages.split(",") if args.stages else None
    check_stages(stages or [])  # before Prefect starts its server
    done = full_flow(args.env, stages, args.params, args.overrides)
    print(f"ran {', '.join(done)}")


if __name__ == "__main__":
    run_cli(main)
