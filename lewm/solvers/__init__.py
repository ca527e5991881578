"""Planners: one module per solver, `lewm/solvers/<name>.py`, chosen by `plan.solver` in params.yaml.

A solver module defines `Config` (the frozen dataclass of its `plan.<name>` settings) and `Solver`, built as
`Solver(config, horizon, receding, block_dim, seed, device)` and satisfying the `Solver` protocol below.
A solver sees only a cost function over candidate action blocks (the world model owns the cost, see
`WorldModel.planning_cost`), so solvers stay model-agnostic and models solver-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from torch import Tensor

from lewm.models import CostFn


@dataclass
class PlanResult:
    """One solve: the plan and per-iteration diagnostics."""

    plan: Tensor  # (horizon, block_dim), normalised action blocks
    elite_costs: list[float]  # mean cost of the retained candidates, per iteration
    best_costs: list[float]  # lowest candidate cost, per iteration


class Solver(Protocol):
    """Minimises a cost over `(horizon, block_dim)` action blocks, one MPC episode at a time."""

    def reset(self) -> None:
        """Forget any state kept between solves (start of a new episode)."""

    def solve(self, cost: CostFn) -> PlanResult:
        """Plan once; the MPC loop executes the first `receding` blocks of `PlanResult.plan`."""


def check_horizon(horizon: int, receding: int) -> None:
    """Reject an MPC horizon that cannot run, naming the offending key."""
    if horizon < 1:
        raise ValueError(f"plan.horizon={horizon} must be ≥ 1")
    if not 1 <= receding <= horizon:
        raise ValueError(f"plan.receding={receding} must be in [1, plan.horizon={horizon}]")
