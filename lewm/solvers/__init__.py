"""Planners: one module per solver, `lewm/solvers/<name>.py`, chosen by `plan.solver` in params.yaml.

A solver module defines `Config` (the frozen dataclass of its `plan.<name>` settings) and `Solver`, built as
`Solver(config, horizon, receding, block_dim, seed, device)` and satisfying the `Solver` protocol below.
A solver sees only a cost function over candidate action blocks (the world model owns the cost, see
`WorldModel.planning_cost`), so solvers stay model-agnostic and models solver-agnostic.

Every solver works in normalised action-block space (the train split's z-scored actions, stacked in blocks),
where the prior over a block is centred at 0 with unit spread. This module also holds what the solvers
share: the MPC checks, the batched cost call, the warm-start shift and `WarmStartSolver`, their plumbing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Protocol

import torch
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

    differentiable: bool
    """True if `solve` back-propagates through the cost: the caller then runs it with autograd on (and
    context tensors that may be saved for backward); False lets it run under `torch.inference_mode()`."""

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


def evaluate(cost_fn: CostFn, candidates: Tensor) -> Tensor:
    """The costs `(S,)` of candidates `(S, H, block_dim)`, one batched call; a cost of another shape is an
    error (e.g. a model that forgot to reduce over its latent axes)."""
    costs = cost_fn(candidates)
    if costs.shape != (len(candidates),):
        raise ValueError(f"cost_fn returned shape {tuple(costs.shape)}, expected ({len(candidates)},)")
    return costs


def plan_result(plan: Tensor, elite_costs: list[Tensor], best_costs: list[Tensor]) -> PlanResult:
    """A `PlanResult` from per-iteration 0-d cost tensors, read back once at the end: no device sync per
    iteration."""
    return PlanResult(plan=plan, elite_costs=torch.stack(elite_costs).tolist(),
                      best_costs=torch.stack(best_costs).tolist())


def shift_plan(plan: Tensor, executed: int) -> Tensor:
    """Warm start: drop the `executed` blocks of `plan` `(..., H, block_dim)` along its horizon axis and pad
    the end with zeros (the prior mean)."""
    remainder = plan[..., executed:, :]
    padding = torch.zeros((*plan.shape[:-2], min(executed, plan.shape[-2]), plan.shape[-1]),
                          dtype=plan.dtype, device=plan.device)
    return torch.cat([remainder, padding], dim=-2)


class WarmStartSolver(ABC):
    """What every solver here shares: the MPC checks, one seeded `torch.Generator` on the device, and the
    warm start. A subclass checks its own settings (which include `warm_start`), then implements
    `plan(cost, warm) -> (PlanResult, carry)`: `carry` `(..., H, block_dim)` is the state the next solve
    starts from once shifted by the `receding` executed blocks (the CEM mean, say), `warm` that shifted state
    (None on the first solve of an episode, or without `warm_start`)."""

    differentiable = False

    def __init__(self, cfg: Any, horizon: int, receding: int, block_dim: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        check_horizon(horizon, receding)
        self.cfg, self.horizon, self.receding, self.block_dim = cfg, horizon, receding, block_dim
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self._warm: Tensor | None = None

    def reset(self) -> None:
        self._warm = None

    def solve(self, cost: CostFn) -> PlanResult:
        result, carry = self.plan(cost, self._warm if self.cfg.warm_start else None)
        self._warm = shift_plan(carry, self.receding)
        return result

    @abstractmethod
    def plan(self, cost: CostFn, warm: Tensor | None) -> tuple[PlanResult, Tensor]:
        """One solve from the shifted state `warm`; returns the result and the state to carry."""
