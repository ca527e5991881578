"""Planning lever: score every imagined step against the goal, not only the horizon's last one.

    .venv/bin/python bench/every_step_cost.py --env reacher [--set plan.receding=1]
        [--out runs/reacher/levers/every_step_cost]

The reference's cost is ‖ẑ_H − z_g‖² of the LAST imagined embedding (`goal_distance_cost`): a plan may wander
as long as it arrives at the horizon's end, and after every replan the target moves `horizon` blocks on.
Summing ‖ẑ_h − z_g‖² over h = 1 … H instead rewards plans that get close early and stay there, which is
what an "ever within tolerance" predicate and a short receding step reward. This evaluates the trained
model with that cost, everything else as the plan stage (the same test pairs, solver, budget and MPC loop;
planner only, no floors: compare with the plan stage's rows), and writes <out>/{episodes.parquet,
metrics.json}.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from torch import Tensor

from lewm.config import load_params
from lewm.evaluation import evaluate_model, read_manifest
from lewm.io import atomic_file, write_json
from lewm.models import CostFn
from pipelines._stage import load_model_and_data
from pipelines.plan import describe, solver_settings


class EveryStepCost:
    """A world model whose planning cost sums the squared goal distance over every imagined step; every
    other attribute is the wrapped model's."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def planning_cost(self, z_context: Tensor, z_goal: Tensor, context_actions: Tensor | None = None
                      ) -> CostFn:
        def cost(candidates: Tensor) -> Tensor:
            imagined = self.model.rollout(z_context, candidates, context_actions).float()  # (S, H, *latent)
            goal = z_goal.float().reshape(1, 1, *imagined.shape[2:])
            return (imagined - goal).pow(2).flatten(2).sum(dim=2).sum(dim=1)

        return cost


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="reacher")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter, e.g. --set plan.receding=1 (repeatable)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: runs/<env>/levers/every_step_cost")
    args = parser.parse_args()
    out = args.out or Path(f"runs/{args.env}/levers/every_step_cost")
    params = load_params(None, args.overrides, args.env)
    loaded, store = load_model_and_data(args.env, params, f"runs/{args.env}/train/model.pt",
                                        f"data/{args.env}")
    manifest = read_manifest(f"runs/{args.env}/manifests/test.parquet")
    rows, summary = evaluate_model(EveryStepCost(loaded.model), loaded.meta, manifest, store, params.plan,
                                   params.eval, baselines=[], progress=True)
    summary.update(solver_settings(params.plan))
    summary["plan_receding"] = params.plan.receding
    with atomic_file(out / "episodes.parquet") as tmp:
        rows.to_parquet(tmp, index=False)
    write_json(out / "metrics.json", summary)
    print(describe(summary))


if __name__ == "__main__":
    main()
