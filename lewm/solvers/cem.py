"""The cross-entropy method in normalised action-block space (reference §8.1).

Candidates (S, H, block_dim) = μ + σ·ε with candidate 0 = μ; the k lowest-cost candidates are the elites;
μ ← mean(elites), σ ← std(elites) (unbiased); the final μ is the plan. The cost of all S candidates is one
batched call per iteration. Randomness comes from one seeded `torch.Generator`.

With `warm_start`, each solve after the first starts from the previous plan shifted by the `receding`
executed blocks (σ always restarts at `init_std`). With receding = horizon (the reference setting) the
shifted plan is all zeros, i.e. the same as no warm start.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lewm.models import CostFn
from lewm.solvers import PlanResult, WarmStartSolver, evaluate, plan_result


@dataclass(frozen=True)
class Config:
    """`plan.cem`: population, elites, iterations and the initial spread of CEM."""

    samples: int
    elites: int
    iterations: int
    init_std: float
    warm_start: bool


def check_config(cfg: Config) -> None:
    """Reject CEM settings that cannot run, naming the offending key."""
    if cfg.samples < 2 or not 2 <= cfg.elites <= cfg.samples:
        raise ValueError(f"plan.cem.elites={cfg.elites} must be in [2, plan.cem.samples={cfg.samples}]")
    if cfg.iterations < 1:
        raise ValueError(f"plan.cem.iterations={cfg.iterations} must be ≥ 1")
    if cfg.init_std <= 0:
        raise ValueError(f"plan.cem.init_std={cfg.init_std} must be > 0")


def fit_elites(candidates: Tensor, costs: Tensor, elites: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The `elites` lowest-cost candidates (best first), their costs, and the Gaussian they refit: the
    elites' mean and unbiased std per entry."""
    elite_cost, elite_index = torch.topk(costs, elites, largest=False)
    chosen = candidates[elite_index]
    return chosen, elite_cost, chosen.mean(dim=0), chosen.std(dim=0)


def cem_plan(cost_fn: CostFn, cfg: Config, horizon: int, block_dim: int, generator: torch.Generator,
             init_mean: Tensor | None = None) -> PlanResult:
    """Minimise `cost_fn` over `(horizon, block_dim)` action blocks with the cross-entropy method.

    Starts from μ = `init_mean` (zeros when None) and σ = `cfg.init_std`; samples are drawn from `generator`
    on its device.
    """
    check_config(cfg)
    device = generator.device
    shape = (horizon, block_dim)
    mean = torch.zeros(shape, device=device) if init_mean is None else init_mean.to(device).clone()
    std = torch.full(shape, float(cfg.init_std), device=device)
    elite_costs, best_costs = [], []
    for _ in range(cfg.iterations):
        noise = torch.randn((cfg.samples, *shape), generator=generator, device=device)
        candidates = mean + std * noise
        candidates[0] = mean
        _, elite_cost, mean, std = fit_elites(candidates, evaluate(cost_fn, candidates), cfg.elites)
        elite_costs.append(elite_cost.mean())
        best_costs.append(elite_cost[0])
    return plan_result(mean, elite_costs, best_costs)


class Solver(WarmStartSolver):
    """CEM with its own seeded generator and warm-start state (the shifted plan), for one MPC episode."""

    def __init__(self, cfg: Config, horizon: int, receding: int, block_dim: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        check_config(cfg)
        super().__init__(cfg, horizon, receding, block_dim, seed, device)

    def plan(self, cost: CostFn, warm: Tensor | None) -> tuple[PlanResult, Tensor]:
        result = cem_plan(cost, self.cfg, self.horizon, self.block_dim, self.generator, warm)
        return result, result.plan
