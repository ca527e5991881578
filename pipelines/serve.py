"""Register the scheduled deployments with a Prefect server and run their flows when due.

    prefect server start --host 127.0.0.1                      # terminal 1: the server and its UI
    export PREFECT_API_URL=http://127.0.0.1:4200/api           # terminal 2:
    python -m pipelines.serve [--set key=value] [--limit 1]    # serves until Ctrl-C
    python -m pipelines.serve --work-pool lewm                 # or: register them for workers, and exit

Deployments (schedules in UTC unless `--timezone`):
- `full-pipeline/nightly`: the whole pipeline (pipelines/full.py) for every environment, `0 2 * * *`;
- `bisect/weekly-<env>`: the λ search (pipelines/bisect.py) for each environment, `0 3 * * 0`.
Both also run on demand: "Run" in the UI, or `prefect deployment run full-pipeline/nightly`.
`--set` overrides become the deployments' default `overrides` parameter. Served flow runs execute in
this process's machine and working directory (run it from the project root); `--limit` bounds how many
run at once (default 1: a 2-core machine gains nothing from overlapping trainings). With `--work-pool`,
the deployments go to that process work pool instead (created if missing) and any
`prefect worker start --pool <name>` runs them, in `--working-dir` (default: the current directory):
the docker/ stack works this way.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from lewm.config import load_params
from pipelines._cli import base_parser, run_cli

NIGHTLY_CRON = "0 2 * * *"
WEEKLY_CRON = "0 3 * * 0"


def deployments(
    params_path: str | None = None, overrides: list[str] | None = None,
    nightly_cron: str = NIGHTLY_CRON, weekly_cron: str = WEEKLY_CRON, timezone: str = "UTC",
    job_variables: dict[str, Any] | None = None,
) -> list[Any]:
    """The project's deployments (not yet registered): nightly full pipeline, weekly λ search per env.
    `job_variables` configure the runs of a work pool (e.g. the process worker's `working_dir`)."""
    from prefect.deployments.runner import EntrypointType
    from prefect.schedules import Cron

    from pipelines.bisect import bisect_flow
    from pipelines.full import full_flow

    params = load_params(params_path, overrides)
    common = {"params_path": params_path, "overrides": list(overrides or [])}
    options = {"entrypoint_type": EntrypointType.MODULE_PATH, "concurrency_limit": 1, "tags": ["lewm"],
               "job_variables": job_variables or {}}
    nightly = full_flow.to_deployment(
        name="nightly", schedules=[Cron(nightly_cron, timezone=timezone)], parameters=common,
        description="The whole pipeline, every environment, from scratch.", **options,
    )
    weekly = [
        bisect_flow.to_deployment(
            name=f"weekly-{env}", schedules=[Cron(weekly_cron, timezone=timezone)],
            parameters={"env": env, **common}, description=f"λ bisection for {env}; sets the champion model.",
            **options,
        )
        for env in params.envs
    ]
    return [nightly, *weekly]


def require_server() -> str:
    """The API URL of the Prefect server to serve against; schedules need a long-running server."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ValueError("PREFECT_API_URL is not set: start `prefect server start --host 127.0.0.1` and "
                         "export PREFECT_API_URL=http://127.0.0.1:4200/api")
    return url


def register_for_workers(served: list[Any], pool: str) -> None:
    """Create or update the deployments on process work pool `pool` (created if missing)."""
    from prefect import deploy
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template))
    deploy(*served, work_pool_name=pool, build=False, push=False, print_next_steps_message=False,
           ignore_warnings=True)


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--nightly-cron", default=NIGHTLY_CRON, help=f"default: {NIGHTLY_CRON!r}")
    parser.add_argument("--weekly-cron", default=WEEKLY_CRON, help=f"default: {WEEKLY_CRON!r}")
    parser.add_argument("--timezone", default="UTC", help="time zone of the schedules (default: UTC)")
    parser.add_argument("--limit", type=int, default=1, help="flow runs at once (default: 1)")
    parser.add_argument("--work-pool", default=None, help="register for workers of this pool, don't serve")
    parser.add_argument("--working-dir", default=None, help="workers' directory (default: current one)")
    args = parser.parse_args()
    url = require_server()
    job_variables = {"working_dir": str(Path(args.working_dir or ".").resolve())} if args.work_pool else None
    served = deployments(args.params, args.overrides, args.nightly_cron, args.weekly_cron, args.timezone,
                         job_variables)
    names = ", ".join(f"{d.flow_name}/{d.name}" for d in served)
    if args.work_pool:
        register_for_workers(served, args.work_pool)
        print(f"registered {names} on work pool {args.work_pool!r} at {url}")
        return
    from prefect import serve

    print(f"serving {names} against {url}", flush=True)
    serve(*served, limit=args.limit, print_starting_message=False)


if __name__ == "__main__":
    run_cli(main)
