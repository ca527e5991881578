"""Gradient-based planning: Adam on the action blocks themselves, through the differentiable cost.

`samples` candidates start from N(0, init_std²), candidate 0 from the warm-start plan (zeros without one),
and take `steps` Adam steps in parallel on the sum of their costs (each candidate's cost depends on it alone
for a model in eval mode, so the sum's gradient is each candidate's own). Candidates are clamped to
[−action_bound, action_bound] after every step (projected gradient descent): the sampling solvers draw
around 0 with unit std in this z-scored space, so a bound of 3 holds what they explore, and the MPC loop
clips the executed raw actions to [−1, 1] anyway. Clamping rather than tanh-squashing keeps Adam's steps in
action units and an interior optimum exactly reachable. The plan is the lowest-cost candidate after the last
step (one more batched cost call, without gradients); `elite_costs` and `best_costs` hold the mean and the
lowest cost of each of the `steps + 1` evaluations.

Gradients reach the candidates only: they are taken with `torch.autograd.grad` with respect to the
candidates, so the model's parameters never get `.grad`. `solve` turns autograd on itself (so it also runs
under `torch.no_grad()`) and refuses to run under `torch.inference_mode()`, which no tensor can leave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lewm.models import CostFn
from lewm.solvers import PlanResult, WarmStartSolver, evaluate, plan_result


@dataclass(frozen=True)
class Config:
    """`plan.gradient`: parallel candidates, Adam steps and step size, initial spread and the action bound."""

    samples: int  # candidates optimised in parallel (one of them the warm start)
    steps: int
    lr: float
    init_std: float
    action_bound: float  # candidates are clamped to [−bound, bound] in normalised units
    warm_start: bool


def check_config(cfg: Config) -> None:
    """Reject gradient-planner settings that cannot run, naming the offending key."""
    if cfg.samples < 1:
        raise ValueError(f"plan.gradient.samples={cfg.samples} must be ≥ 1")
    if cfg.steps < 1:
        raise ValueError(f"plan.gradient.steps={cfg.steps} must be ≥ 1")
    if cfg.lr <= 0:
        raise ValueError(f"plan.gradient.lr={cfg.lr} must be > 0")
    if cfg.init_std <= 0:
        raise ValueError(f"plan.gradient.init_std={cfg.init_std} must be > 0")
    if cfg.action_bound <= 0:
        raise ValueError(f"plan.gradient.action_bound={cfg.action_bound} must be > 0")


def gradient_plan(cost_fn: CostFn, cfg: Config, horizon: int, block_dim: int, generator: torch.Generator,
                  init_mean: Tensor | None = None) -> PlanResult:
    """Minimise `cost_fn` over `(horizon, block_dim)` action blocks by Adam from `samples` starts, one of
    them `init_mean` (zeros when None)."""
    check_config(cfg)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("the gradient solver cannot run under torch.inference_mode(): it differentiates "
                           "the cost (LatentMPCAgent runs a differentiable solver outside it)")
    device = generator.device
    shape = (horizon, block_dim)
    start = cfg.init_std * torch.randn((cfg.samples, *shape), generator=generator, device=device)
    start[0] = 0 if init_mean is None else init_mean.to(device)
    candidates = start.clamp(-cfg.action_bound, cfg.action_bound).requires_grad_(True)
    optimizer = torch.optim.Adam([candidates], lr=cfg.lr)
    mean_costs, best_costs = [], []
    with torch.enable_grad():
        for _ in range(cfg.steps):
            costs = evaluate(cost_fn, candidates)
            if not costs.requires_grad:
                raise ValueError("the cost is not differentiable in the candidate actions (did it run under "
                                 "torch.no_grad() or torch.inference_mode()?)")
            (candidates.grad,) = torch.autograd.grad(costs.sum(), candidates)
            optimizer.step()
            with torch.no_grad():
                candidates.clamp_(-cfg.action_bound, cfg.action_bound)
            mean_costs.append(costs.detach().mean())
            best_costs.append(costs.detach().min())
    with torch.no_grad():
        costs = evaluate(cost_fn, candidates)
    mean_costs.append(costs.mean())
    best_costs.append(costs.min())
    return plan_result(candidates.detach()[costs.argmin()], mean_costs, best_costs)


class Solver(WarmStartSolver):
    """The gradient planner with its own seeded generator and warm-start state (the shifted plan), for one
    MPC episode; its cost must be differentiable."""

    differentiable = True

    def __init__(self, cfg: Config, horizon: int, receding: int, block_dim: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        check_config(cfg)
        super().__init__(cfg, horizon, receding, block_dim, seed, device)

    def plan(self, cost: CostFn, warm: Tensor | None) -> tuple[PlanResult, Tensor]:
        result = gradient_plan(cost, self.cfg, self.horizon, self.block_dim, self.generator, warm)
        return result, result.plan
