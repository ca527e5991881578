"""The solvers behind `plan.solver` (lewm/solvers/): each reaches the minimum of a quadratic bowl, repeats
under a seed, warm-starts from its shifted state and names a bad setting; iCEM's colored noise, population
and kept elites, MPPI's update, the gradient solver's bound and gradients (candidates only, through a tiny
LeWM and through `LatentMPCAgent`); `make_solver` builds each from params.yaml."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
import torch

from lewm.checkpoint import ModelMeta
from lewm.config import PlanConfig, load_params
from lewm.data.clips import ActionStats
from lewm.models.lewm import LeWM
from lewm.planning import LatentMPCAgent, make_solver
from lewm.solvers import cem, gradient, icem, mppi, shift_plan
from lewm.solvers.icem import colored_noise, icem_plan, population
from lewm.solvers.mppi import mppi_plan

SOLVERS = {"cem": cem, "icem": icem, "mppi": mppi, "gradient": gradient}
HORIZON, BLOCK = 5, 4
TARGET = torch.linspace(-1.5, 1.5, HORIZON * BLOCK).reshape(HORIZON, BLOCK)

# (settings, how close the plan lands to the bowl's minimum): iCEM's colored noise puts little power into the
# bowl's high-frequency directions (1/f^2), so it converges slower there than CEM's white noise
BOWL: dict[str, tuple[dict[str, Any], float]] = {
    "cem": ({"samples": 300, "elites": 30, "iterations": 30}, 0.01),
    "icem": ({"samples": 400, "elites": 40, "iterations": 80, "beta": 2.0, "population_decay": 1.0,
              "keep_fraction": 0.1}, 0.1),
    "mppi": ({"samples": 300, "iterations": 30, "noise_std": 0.1, "temperature": 0.1}, 0.05),
    "gradient": ({"samples": 4, "steps": 200, "lr": 0.05}, 0.01),
}


SMALL: dict[str, dict[str, Any]] = {  # a quick solve each
    "cem": {"samples": 16, "elites": 4, "iterations": 2},
    "icem": {"samples": 16, "elites": 4, "iterations": 2},
    "mppi": {"samples": 16, "iterations": 2},
    "gradient": {"samples": 2, "steps": 2},
}


def plan_config(solver: str, horizon: int = HORIZON, receding: int = 2, **settings: Any) -> PlanConfig:
    """params.yaml's `plan` (the dataclasses hold no defaults) with `solver` chosen and its settings
    changed by `settings`."""
    plan = load_params(overrides=[f"plan.solver={solver}"]).plan
    return dataclasses.replace(plan, horizon=horizon, receding=receding,
                               settings=dataclasses.replace(plan.settings, **settings))


def bowl(candidates: torch.Tensor) -> torch.Tensor:
    """A quadratic bowl over (S, H, D) with its minimum 0 at `TARGET`."""
    return (candidates - TARGET).pow(2).sum(dim=(1, 2))


class Recorder:
    """A cost that records every batch of candidates it scores (and the autograd mode it ran in)."""

    def __init__(self, cost=bowl) -> None:
        self.cost, self.calls, self.inference = cost, [], []

    def __call__(self, candidates: torch.Tensor) -> torch.Tensor:
        self.calls.append(candidates.detach().clone())
        self.inference.append(torch.is_inference_mode_enabled())
        return self.cost(candidates)


def solve(solver: Any, cost: Any) -> Any:
    """One solve the way `LatentMPCAgent` runs it: inference mode unless the solver differentiates."""
    if solver.differentiable:
        return solver.solve(cost)
    with torch.inference_mode():
        return solver.solve(cost)


# ------------------------------------------------------------------------------------------ every solver


@pytest.mark.parametrize("name", SOLVERS)
def test_each_solver_reaches_the_minimum_of_a_quadratic_bowl(name: str) -> None:
    settings, tolerance = BOWL[name]
    result = solve(make_solver(plan_config(name, **settings), BLOCK, seed=0), bowl)
    assert result.plan.shape == (HORIZON, BLOCK)
    assert (result.plan - TARGET).abs().max() < tolerance
    assert bowl(result.plan[None]).item() < 1e-2 * bowl(torch.zeros(1, HORIZON, BLOCK)).item()
    assert len(result.best_costs) == len(result.elite_costs) > 1
    assert result.best_costs[-1] < 1e-2 * result.best_costs[0]


@pytest.mark.parametrize("name", SOLVERS)
def test_same_seed_gives_the_same_plan_and_another_seed_another(name: str) -> None:
    cfg = plan_config(name)
    plans = [solve(make_solver(cfg, BLOCK, seed=seed), bowl).plan for seed in (3, 3, 4)]
    assert torch.equal(plans[0], plans[1])
    assert not torch.equal(plans[0], plans[2])


@pytest.mark.parametrize("name", ["cem", "mppi", "gradient"])
def test_warm_start_begins_from_the_shifted_plan_and_reset_forgets_it(name: str) -> None:
    cfg = plan_config(name, receding=2)
    solver, cost = make_solver(cfg, BLOCK, seed=0), Recorder()
    first = solve(solver, cost).plan
    calls = len(cost.calls)
    solve(solver, cost)
    assert torch.equal(cost.calls[calls][0], shift_plan(first, 2))  # candidate 0 of the next solve
    solver.reset()
    calls = len(cost.calls)
    solve(solver, cost)
    assert torch.equal(cost.calls[calls][0], torch.zeros(HORIZON, BLOCK))
    cold, cost = make_solver(plan_config(name, warm_start=False), BLOCK, seed=0), Recorder()
    solve(cold, cost)
    calls = len(cost.calls)
    solve(cold, cost)
    assert torch.equal(cost.calls[calls][0], torch.zeros(HORIZON, BLOCK))


def test_icem_warm_starts_from_its_shifted_mean_and_kept_elites() -> None:
    cfg = plan_config("icem", receding=2, samples=40, elites=10, iterations=3, keep_fraction=0.3)
    _, carry = icem_plan(bowl, cfg.settings, HORIZON, BLOCK, torch.Generator().manual_seed(0))
    assert carry.shape == (1 + 3, HORIZON, BLOCK)
    solver, cost = make_solver(cfg, BLOCK, seed=0), Recorder()
    solve(solver, cost)  # the same generator state as icem_plan's: the same carry
    calls = len(cost.calls)
    solve(solver, cost)
    warm = shift_plan(carry, 2)
    first = cost.calls[calls]
    assert len(first) == population(cfg.settings, 0) + 3
    assert torch.equal(first[0], warm[0]) and torch.equal(first[-3:], warm[1:])


def test_shift_plan_shifts_along_the_horizon_axis_of_a_stack_of_plans() -> None:
    plans = torch.arange(1.0, 7.0).reshape(2, 3, 1)  # two plans of blocks (1, 2, 3) and (4, 5, 6)
    assert torch.equal(shift_plan(plans, 1)[..., 0], torch.tensor([[2.0, 3.0, 0.0], [5.0, 6.0, 0.0]]))
    assert torch.equal(shift_plan(plans[0], 3), torch.zeros(3, 1))


BAD_SETTINGS = [
    ("icem", "elites", 1), ("icem", "elites", 400), ("icem", "iterations", 0), ("icem", "init_std", 0.0),
    ("icem", "beta", -1.0), ("icem", "population_decay", 0.9), ("icem", "keep_fraction", 1.5),
    ("mppi", "samples", 1), ("mppi", "iterations", 0), ("mppi", "noise_std", 0.0),
    ("mppi", "temperature", 0.0),
    ("gradient", "samples", 0), ("gradient", "steps", 0), ("gradient", "lr", 0.0),
    ("gradient", "init_std", -1.0), ("gradient", "action_bound", 0.0),
]


@pytest.mark.parametrize(("name", "key", "value"), BAD_SETTINGS)
def test_a_bad_setting_is_rejected_naming_its_key(name: str, key: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"plan\.{name}\.{key}="):
        make_solver(plan_config(name, **{key: value}), BLOCK, seed=0)


@pytest.mark.parametrize("name", SOLVERS)
def test_a_bad_horizon_and_a_cost_of_the_wrong_shape_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match=r"plan\.receding"):
        make_solver(plan_config(name, horizon=2, receding=3), BLOCK, seed=0)
    with pytest.raises(ValueError, match="cost_fn returned shape"):
        solve(make_solver(plan_config(name), BLOCK, seed=0), lambda c: c.pow(2).sum(dim=2))


@pytest.mark.parametrize("name", SOLVERS)
def test_make_solver_builds_each_solver_by_name_from_params(name: str) -> None:
    params = load_params(overrides=[f"plan.solver={name}", "plan.horizon=4", "plan.receding=2"])
    solver = make_solver(params.plan, block_dim=6, seed=0)
    assert isinstance(solver, SOLVERS[name].Solver) and isinstance(params.plan.settings, SOLVERS[name].Config)
    assert (solver.cfg, solver.horizon, solver.receding, solver.block_dim) == (params.plan.settings, 4, 2, 6)
    assert solver.differentiable == (name == "gradient")
    assert solve(solver, lambda c: c.pow(2).sum(dim=(1, 2))).plan.shape == (4, 6)


@pytest.mark.parametrize("profile", ["cpu", "smoke", "paper"])
def test_every_profile_configures_every_solver(profile: str) -> None:
    for name, module in SOLVERS.items():
        settings = load_params(overrides=[f"profile={profile}", f"plan.solver={name}"]).plan.settings
        assert isinstance(settings, module.Config)


# ------------------------------------------------------------------------------------------------- iCEM


def test_colored_noise_has_unit_variance_and_its_colour_correlates_neighbouring_blocks() -> None:
    def lag_one_correlation(noise: torch.Tensor) -> float:
        return float(np.corrcoef(noise[:, :-1].flatten(), noise[:, 1:].flatten())[0, 1])

    generator = torch.Generator().manual_seed(0)
    white, smooth = (colored_noise(beta, (20000, 8, 3), generator) for beta in (0.0, 2.0))
    assert white.shape == smooth.shape == (20000, 8, 3)
    for noise in (white, smooth):
        assert abs(noise.std().item() - 1) < 0.02 and abs(noise.mean().item()) < 0.02
    assert abs(lag_one_correlation(white)) < 0.02
    assert lag_one_correlation(smooth) > 0.5
    for horizon in (1, 2, 5):  # odd, even and single-block horizons stay unit-variance
        assert abs(colored_noise(2.0, (20000, horizon, 2), generator).std().item() - 1) < 0.03


def test_icem_decays_its_population_keeps_elites_and_plans_the_best_candidate() -> None:
    cfg = icem.Config(samples=100, elites=10, iterations=5, init_std=1.0, beta=2.0, population_decay=2.0,
                      keep_fraction=0.3, warm_start=True)
    assert [population(cfg, i) for i in range(5)] == [100, 50, 25, 20, 20]  # at least 2·elites
    cost = Recorder()
    result, carry = icem_plan(cost, cfg, HORIZON, BLOCK, torch.Generator().manual_seed(1))
    assert [len(c) for c in cost.calls] == [100, 53, 28, 23, 23]  # + 3 kept elites after the first
    for before, after in itertools.pairwise(cost.calls):
        best = before[torch.argsort(bowl(before))[:3]]
        assert torch.equal(after[-3:], best)
    every = torch.cat(cost.calls)
    assert torch.equal(result.plan, every[bowl(every).argmin()])
    assert result.best_costs == sorted(result.best_costs, reverse=True)  # the best survives: never worse
    assert carry.shape == (4, HORIZON, BLOCK)


# ------------------------------------------------------------------------------------------------- MPPI


def test_mppi_moves_the_mean_to_the_softmax_weighted_candidates() -> None:
    cfg = mppi.Config(samples=50, iterations=3, noise_std=0.5, temperature=2.0, warm_start=True)
    cost = Recorder()
    result = mppi_plan(cost, cfg, HORIZON, BLOCK, torch.Generator().manual_seed(0))
    means = []
    for candidates in cost.calls:
        costs = bowl(candidates)
        weights = torch.exp(-(costs - costs.min()) / cfg.temperature)
        means.append((weights[:, None, None] * candidates).sum(dim=0) / weights.sum())
    for mean, following in zip(means[:-1], cost.calls[1:], strict=True):
        torch.testing.assert_close(following[0], mean)  # candidate 0 is the updated mean
    torch.testing.assert_close(result.plan, means[-1])
    assert all(len(c) == 50 for c in cost.calls) and len(result.elite_costs) == 3


# --------------------------------------------------------------------------------------------- gradient


def test_gradient_candidates_stay_within_the_action_bound() -> None:
    cfg = plan_config("gradient", samples=4, steps=50, lr=0.5, action_bound=2.0)
    cost = Recorder(lambda c: (c - 5.0).pow(2).sum(dim=(1, 2)))  # the minimum lies outside the bound
    result = make_solver(cfg, BLOCK, seed=0).solve(cost)
    assert all(c.abs().max() <= 2.0 for c in cost.calls)
    torch.testing.assert_close(result.plan, torch.full((HORIZON, BLOCK), 2.0))
    assert len(cost.calls) == 50 + 1 and len(result.best_costs) == 51


def test_gradient_solver_needs_autograd_and_a_differentiable_cost() -> None:
    solver = make_solver(plan_config("gradient", steps=2), BLOCK, seed=0)
    with torch.no_grad():  # it turns autograd on itself
        assert solver.solve(bowl).plan.shape == (HORIZON, BLOCK)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        solver.solve(bowl)

    def detached(candidates: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return bowl(candidates)

    with pytest.raises(ValueError, match="not differentiable"):
        solver.solve(detached)


@pytest.fixture(scope="module")
def tiny_lewm(tiny_model_config: Any) -> LeWM:
    """A tiny LeWM in eval mode whose actions matter (its AdaLN modulation is randomised: at init every
    predictor block is the identity)."""
    torch.manual_seed(0)
    model = LeWM(tiny_model_config.settings, 32, action_dim=2, frameskip=5, history=3).eval()
    with torch.no_grad():
        for block in model.predictor.blocks:
            block.modulation[1].weight.normal_(0, 0.2)
    return model


def test_gradient_solver_plans_through_a_lewm_rollout_without_touching_the_model(tiny_lewm: LeWM) -> None:
    generator = torch.Generator().manual_seed(0)
    z_context, z_goal = torch.randn(1, 16, generator=generator), torch.randn(16, generator=generator)
    cfg = plan_config("gradient", horizon=3, samples=4, steps=20, lr=0.1)
    result = make_solver(cfg, 10, seed=0).solve(tiny_lewm.planning_cost(z_context, z_goal))
    assert result.plan.shape == (3, 10) and not result.plan.requires_grad
    assert result.best_costs[-1] < result.best_costs[0]
    assert all(p.grad is None for p in tiny_lewm.parameters())


@pytest.mark.parametrize("name", SOLVERS)
def test_the_agent_runs_sampling_solvers_in_inference_mode_and_the_gradient_one_with_autograd(
        name: str, tiny_lewm: LeWM) -> None:
    meta = ModelMeta(env="test", model="lewm", settings={}, image_size=32, action_dim=2, frameskip=5,
                     history=3, action_stats=ActionStats(np.zeros(2), np.ones(2)))
    cfg = plan_config(name, horizon=3, receding=1, **SMALL[name])
    agent = LatentMPCAgent(tiny_lewm, meta, cfg, seed=0)
    modes, solve_once = [], agent.solver.solve

    def recording_solve(cost: Any) -> Any:
        def recorded(candidates: torch.Tensor) -> torch.Tensor:
            modes.append(torch.is_inference_mode_enabled())
            return cost(candidates)

        return solve_once(recorded)

    agent.solver.solve = recording_solve
    frames = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    agent.start({"pixels": frames[0]})
    actions = agent.act({"pixels": frames[1]})
    assert actions.shape == (5, 2) and np.isfinite(actions).all()
    assert modes and all(mode == (name != "gradient") for mode in modes)
    assert all(p.grad is None for p in tiny_lewm.parameters())
