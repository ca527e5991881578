"""Improved CEM (iCEM, Pinneri et al. 2020) in normalised action-block space.

CEM (lewm/solvers/cem.py, whose elite refit this reuses) with four changes:
- colored noise: the noise ε of a candidate has a power spectrum ∝ 1/f^β along the horizon axis (β = 0 is
  CEM's white noise; β ≈ 2 gives smooth, temporally correlated plans that travel further for the same
  per-block variance);
- population decay: iteration i samples max(⌊samples·γ^−i⌋, 2·elites) candidates, γ = `population_decay`;
- kept elites: the best ⌊keep_fraction·elites⌋ elites of an iteration are candidates again in the next one;
  with `warm_start` the last iteration's, shifted by the executed blocks, join the next solve's first
  iteration together with the shifted mean (the state carried between solves: mean, then kept elites);
- the plan is the lowest-cost candidate evaluated in the solve, not the final mean, as the paper executes
  the best elite: a mean of elites was never evaluated and, for a non-convex cost, can be worse than all of
  them (with kept elites the best candidate is re-evaluated in every iteration anyway).

Candidate 0 is the mean in every iteration, as in CEM. The paper's momentum on the refit and its clipping to
the action bounds are left out: the refit is CEM's, and the normalised space is unbounded, as CEM's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lewm.models import CostFn
from lewm.solvers import PlanResult, WarmStartSolver, evaluate, plan_result
from lewm.solvers.cem import fit_elites


@dataclass(frozen=True)
class Config:
    """`plan.icem`: CEM's settings plus the noise colour, population decay and kept elites."""

    samples: int  # population of the first iteration
    elites: int
    iterations: int
    init_std: float
    beta: float  # noise colour: power spectrum ∝ 1/f^beta along the horizon (0: white)
    population_decay: float  # γ ≥ 1: iteration i samples max(samples·γ^−i, 2·elites)
    keep_fraction: float  # fraction of the elites kept as candidates of the next iteration (and solve)
    warm_start: bool


def check_config(cfg: Config) -> None:
    """Reject iCEM settings that cannot run, naming the offending key."""
    if not 2 <= cfg.elites <= cfg.samples // 2:
        raise ValueError(f"plan.icem.elites={cfg.elites} must be in [2, plan.icem.samples/2="
                         f"{cfg.samples // 2}] (the decayed population never falls below 2·elites)")
    if cfg.iterations < 1:
        raise ValueError(f"plan.icem.iterations={cfg.iterations} must be ≥ 1")
    if cfg.init_std <= 0:
        raise ValueError(f"plan.icem.init_std={cfg.init_std} must be > 0")
    if cfg.beta < 0:
        raise ValueError(f"plan.icem.beta={cfg.beta} must be ≥ 0")
    if cfg.population_decay < 1:
        raise ValueError(f"plan.icem.population_decay={cfg.population_decay} must be ≥ 1")
    if not 0 <= cfg.keep_fraction <= 1:
        raise ValueError(f"plan.icem.keep_fraction={cfg.keep_fraction} must be in [0, 1]")


def population(cfg: Config, iteration: int) -> int:
    """Fresh candidates sampled in `iteration` (from 0): the decayed population, at least 2·elites."""
    return max(int(cfg.samples * cfg.population_decay ** -iteration), 2 * cfg.elites)


def colored_noise(beta: float, shape: tuple[int, int, int], generator: torch.Generator) -> Tensor:
    """Gaussian noise `(n, H, D)` with unit variance per entry whose power spectrum along the horizon axis
    H falls as 1/f^beta (beta = 0: white noise).

    Drawn in the frequency domain, as the `colorednoise` package: each frequency bin gets a complex Gaussian
    of amplitude f^(−beta/2) (the zero frequency that of the lowest non-zero one, 1/H); the zero and, for
    even H, the Nyquist bin must be real, so their real part carries both parts' variance; the inverse real
    FFT is divided by its exact standard deviation.
    """
    n, horizon, dim = shape
    device = generator.device
    freqs = torch.fft.rfftfreq(horizon, device=device)
    freqs[0] = 1 / horizon
    amplitude = freqs.pow(-beta / 2)
    real_bin = torch.zeros_like(freqs, dtype=torch.bool)
    real_bin[0] = True
    if horizon % 2 == 0:
        real_bin[-1] = True
    real_scale = torch.where(real_bin, amplitude * math.sqrt(2), amplitude)
    imag_scale = torch.where(real_bin, torch.zeros_like(amplitude), amplitude)
    parts = torch.randn((2, n, dim, len(freqs)), generator=generator, device=device)
    noise = torch.fft.irfft(torch.complex(real_scale * parts[0], imag_scale * parts[1]), n=horizon)
    std = ((2 * amplitude[real_bin].pow(2)).sum() + (4 * amplitude[~real_bin].pow(2)).sum()).sqrt() / horizon
    return (noise / std).transpose(1, 2)


def icem_plan(cost_fn: CostFn, cfg: Config, horizon: int, block_dim: int, generator: torch.Generator,
              warm: Tensor | None = None) -> tuple[PlanResult, Tensor]:
    """Minimise `cost_fn` over `(horizon, block_dim)` action blocks with iCEM.

    `warm` `(1 + kept, horizon, block_dim)` is the previous solve's carry, shifted: the initial mean, then
    elites to evaluate again (None: zero mean, no elites). Returns the result (the plan is the best candidate
    seen) and the carry of this solve: the final mean and the last iteration's kept elites, stacked.
    """
    check_config(cfg)
    device = generator.device
    shape = (horizon, block_dim)
    warm = torch.zeros((1, *shape), device=device) if warm is None else warm.to(device)
    mean, kept = warm[0], warm[1:]
    std = torch.full(shape, float(cfg.init_std), device=device)
    keep = int(cfg.keep_fraction * cfg.elites)
    best_plan, best_cost = mean, torch.tensor(math.inf, device=device)
    elite_costs, best_costs = [], []
    for iteration in range(cfg.iterations):
        noise = colored_noise(cfg.beta, (population(cfg, iteration), *shape), generator)
        candidates = torch.cat([mean + std * noise, kept])
        candidates[0] = mean
        elites, elite_cost, mean, std = fit_elites(candidates, evaluate(cost_fn, candidates), cfg.elites)
        kept = elites[:keep]
        best_plan = torch.where(elite_cost[0] < best_cost, elites[0], best_plan)
        best_cost = torch.minimum(elite_cost[0], best_cost)
        elite_costs.append(elite_cost.mean())
        best_costs.append(elite_cost[0])
    return plan_result(best_plan, elite_costs, best_costs), torch.cat([mean[None], kept])


class Solver(WarmStartSolver):
    """iCEM with its own seeded generator and warm-start state (shifted mean and kept elites), for one MPC
    episode."""

    def __init__(self, cfg: Config, horizon: int, receding: int, block_dim: int, seed: int,
                 device: str | torch.device = "cpu") -> None:
        check_config(cfg)
        super().__init__(cfg, horizon, receding, block_dim, seed, device)

    def plan(self, cost: CostFn, warm: Tensor | None) -> tuple[PlanResult, Tensor]:
        return icem_plan(cost, self.cfg, self.horizon, self.block_dim, self.generator, warm)
