"""Model-predictive path integral control (MPPI) in normalised action-block space.

Each iteration perturbs the mean plan with Gaussian noise of fixed std `noise_std` (candidate 0 is the mean
itself), weights the candidates by softmax(−(cost − min cost)/temperature) and moves the mean to their
weighted average; after `iterations` the mean is the plan (MPPI's update: an average the weights keep near
the best candidates, itself never evaluated). The temperature is in cost units: a LeWM cost is a squared
latent distance, hundreds between random candidates and a few units between good ones, so a low temperature
makes the update almost the best candidate and a high one a plain average. The cost of all candidates is one
batched call per iteration; randomness comes from one seeded `torch.Generator`.

With `warm_start`, each solve after the first starts from the previous plan shifted by the `receding`
executed blocks, as CEM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lewm.models import CostFn
from lewm.solvers import PlanResult, WarmStartSolver, evaluate, plan_result


@dataclass(frozen=True)
class Config:
    """`plan.mppi`: population, iterations, perturbation std and softmax temperature of MPPI."""

    samples: int
    iterations: int
    noise_std: float
    temperature: float  # in cost units
    warm_start: bool


def check_config(cfg: Config) -> None:
    """Reject MPPI settings that cannot run, naming the offending key."""
    if cfg.samples < 2:
        raise ValueError(f"plan.mppi.samples={cfg.samples} must be ≥ 2")
    if cfg.iterations < 1:
        raise ValueError(f"plan.mppi.iterations={cfg.iterations} must be ≥ 1")
    if cfg.noise_std <= 0:
        raise ValueError(f"plan.mppi.noise_std={cfg.noise_std} must be > 0")
    if cfg.temperature <= 0:
        raise ValueError(f"plan.mppi.temperature={cfg.temperature} must be > 0")


def mppi_plan(cost_fn: CostFn, cfg: Config, horizon: int, block_dim: int, generator: torch.Generator,
              init_mean: Tensor | None = None) -> PlanResult:
    """Minimise `cost_fn` over `(horizon, block_dim)` action blocks with MPPI, from `init_mean` (zeros
    when None). `elite_costs` holds the weighted mean cost of each iteration."""
    check_config(cfg)
    device = generator.device
    shape = (horizon, block_dim)
    mean = torch.zeros(shape, device=device) if init_mean is None else init_mean.to(device).clone()
    weighted_costs, best_costs = [], []
    for _ in range(cfg.iterations):
        noise = torch.randn((cfg.samples, *shape), generator=generator, device=device)
        candidates = mean + cfg.noise_std * noise
        candidates[0] = mean
        costs = evaluate(cost_fn, candidates)
        best = costs.min()
        weights = torch.softmax(-(costs - best) / cfg.temperature, dim=0)
        mean = (weights[:, None, None] * candidates).sum(dim=0)  # elementwise: fp32 also under autocast
        weighted_costs.append((weights * costs).sum())
        best_costs.append(best)
    return plan_result(mean, weighted_costs, best_costs)


class Solver(WarmStartSolver):
    """MPPI with its own seeded generator and warm-start state (the shifted plan), for one MPC episode."""

    def __init__(self, cfg: Config, horizon: int, receding: int, block_dim: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        check_config(cfg)
        super().__init__(cfg, horizon, receding, block_dim, seed, device)

    def plan(self, cost: CostFn, warm: Tensor | None) -> tuple[PlanResult, Tensor]:
        result = mppi_plan(cost, self.cfg, self.horizon, self.block_dim, self.generator, warm)
        return result, result.plan
