"""Planning: CEM on known optima, its sampling rules, seeding and warm start; solver choice by `plan.solver`;
the world model's goal cost (one vector per frame, or patch tokens); the MPC loop on a point world whose
model is exact (so success is guaranteed) and on Push-T (floor baselines)."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
import torch

from lewm.checkpoint import ModelMeta
from lewm.config import ConfigError, PlanConfig, load_params
from lewm.data.clips import ActionStats
from lewm.envs import get_world, make_env
from lewm.models import CostFn, goal_distance_cost
from lewm.models.lewm import LeWM
from lewm.planning import (
    BASELINES,
    LatentMPCAgent,
    RandomAgent,
    ZeroAgent,
    baseline_agents,
    make_solver,
    run_episode,
)
from lewm.solvers import PlanResult, cem, shift_plan
from lewm.solvers.cem import cem_plan

_LOADED_PLAN: PlanConfig = load_params().plan


def plan_config(horizon: int, receding: int, seed: int, **cem_settings: Any) -> PlanConfig:
    """A CEM `PlanConfig` (params.yaml's `plan`, the dataclasses hold no defaults) with the given MPC and
    `plan.cem` settings."""
    settings = dataclasses.replace(_LOADED_PLAN.settings, **cem_settings)
    return dataclasses.replace(_LOADED_PLAN, solver="cem", horizon=horizon, receding=receding, seed=seed,
                               settings=settings)


def changed(cfg: PlanConfig, **changes: Any) -> PlanConfig:
    """`cfg` with `changes` applied to the MPC fields (`horizon`, `receding`, ...) or the CEM settings."""
    plan_fields = {f.name for f in dataclasses.fields(PlanConfig)}
    cem_changes = {k: v for k, v in changes.items() if k not in plan_fields}
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if k in plan_fields},
                               settings=dataclasses.replace(cfg.settings, **cem_changes))


SMALL = plan_config(horizon=3, receding=2, seed=7, samples=64, elites=8, iterations=6, init_std=1.0,
                    warm_start=True)


def quadratic_cost(target: torch.Tensor):
    """Sum of squared distances to `target` (H, D): the optimum is `target` itself."""
    return lambda candidates: (candidates - target).pow(2).sum(dim=(1, 2))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------------------------------- CEM


def test_cem_finds_the_optimum_of_a_quadratic_and_improves_over_iterations() -> None:
    cfg = cem.Config(samples=300, elites=30, iterations=30, init_std=1.0, warm_start=True)
    target = torch.linspace(-1.5, 1.5, 5 * 4).reshape(5, 4)
    result = cem_plan(quadratic_cost(target), cfg, horizon=5, block_dim=4, generator=seeded())
    assert result.plan.shape == (5, 4)
    assert (result.plan - target).abs().max() < 0.05
    costs = np.array(result.elite_costs)
    assert len(costs) == 30 and costs[-1] < 1e-3 * costs[0]
    assert np.all(np.diff(costs) <= 0.05 * costs[:-1])  # monotonic up to sampling noise
    # the plan (the elites' mean) costs no more than the elites do on average: the cost is convex
    assert quadratic_cost(target)(result.plan[None]).item() <= costs[-1]
    assert all(best <= elite for best, elite in zip(result.best_costs, costs, strict=True))


def test_candidate_zero_is_the_mean_and_the_cost_is_one_batched_call_per_iteration() -> None:
    seen = []

    def cost(candidates: torch.Tensor) -> torch.Tensor:
        seen.append(candidates.clone())
        return candidates.pow(2).sum(dim=(1, 2))

    init = torch.full((SMALL.horizon, 4), 0.3)
    result = cem_plan(cost, SMALL.settings, SMALL.horizon, block_dim=4, generator=seeded(), init_mean=init)
    assert len(seen) == SMALL.settings.iterations
    assert all(c.shape == (SMALL.settings.samples, SMALL.horizon, 4) for c in seen)
    assert torch.equal(seen[0][0], init)
    for before, after in itertools.pairwise(seen):
        elites = before[cost_order(before)[: SMALL.settings.elites]]
        assert torch.allclose(after[0], elites.mean(dim=0))
    last_elites = seen[-1][cost_order(seen[-1])[: SMALL.settings.elites]]
    assert torch.allclose(result.plan, last_elites.mean(dim=0))


def cost_order(candidates: torch.Tensor) -> torch.Tensor:
    return torch.argsort(candidates.pow(2).sum(dim=(1, 2)))


def test_std_update_is_the_unbiased_std_of_the_elites() -> None:
    seen = []

    def cost(candidates: torch.Tensor) -> torch.Tensor:
        seen.append(candidates.clone())
        return candidates.pow(2).sum(dim=(1, 2))

    cfg = changed(SMALL, iterations=2)
    cem_plan(cost, cfg.settings, cfg.horizon, block_dim=2, generator=seeded(3))
    elites = seen[0][cost_order(seen[0])[: cfg.settings.elites]]
    mean, std = elites.mean(dim=0), elites.std(dim=0, unbiased=True)
    noise = torch.randn((cfg.settings.samples, cfg.horizon, 2), generator=_second_draw(cfg, 2, seed=3))
    expected = mean + std * noise
    expected[0] = mean
    assert torch.allclose(seen[1], expected, atol=1e-6)


def _second_draw(cfg: PlanConfig, block_dim: int, seed: int) -> torch.Generator:
    """A generator positioned where CEM's second iteration samples from."""
    generator = seeded(seed)
    torch.randn((cfg.settings.samples, cfg.horizon, block_dim), generator=generator)
    return generator


def test_same_seed_same_plan_and_different_seed_different_plan() -> None:
    target = torch.ones(SMALL.horizon, 4)
    plans = [make_solver(SMALL, 4, seed=seed).solve(quadratic_cost(target)).plan for seed in (1, 1, 2)]
    assert torch.equal(plans[0], plans[1])
    assert not torch.equal(plans[0], plans[2])


def test_shift_plan_drops_executed_blocks_and_pads_with_zeros() -> None:
    plan = torch.arange(1.0, 6.0)[:, None].repeat(1, 2)  # blocks 1..5
    assert torch.equal(shift_plan(plan, 2)[:, 0], torch.tensor([3.0, 4.0, 5.0, 0.0, 0.0]))
    assert torch.equal(shift_plan(plan, 5), torch.zeros(5, 2))


def test_planner_warm_starts_from_the_shifted_previous_plan() -> None:
    first_candidates = []

    def cost(candidates: torch.Tensor) -> torch.Tensor:
        first_candidates.append(candidates[0].clone())
        return (candidates - 0.5).pow(2).sum(dim=(1, 2))

    cfg = changed(SMALL, iterations=1)
    planner = make_solver(cfg, 4, cfg.seed)
    plan = planner.solve(cost).plan
    planner.solve(cost)
    assert torch.equal(first_candidates[1], shift_plan(plan, cfg.receding))
    planner.reset()
    planner.solve(cost)
    assert torch.equal(first_candidates[2], torch.zeros(cfg.horizon, 4))
    cold = make_solver(changed(cfg, warm_start=False), 4, cfg.seed)
    cold.solve(cost), cold.solve(cost)
    assert torch.equal(first_candidates[-1], torch.zeros(cfg.horizon, 4))


@pytest.mark.parametrize("change", [{"elites": 1}, {"elites": 65}, {"receding": 4}, {"iterations": 0},
                                    {"init_std": 0.0}, {"horizon": 0}])
def test_invalid_plan_config_is_rejected(change: dict) -> None:
    key = next(iter(change))
    with pytest.raises(ValueError, match=rf"plan\.(cem\.)?{key}"):
        make_solver(changed(SMALL, **change), 4, SMALL.seed)


def test_a_cost_of_the_wrong_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match="cost_fn returned shape"):
        cem_plan(lambda c: c.sum(dim=2), SMALL.settings, SMALL.horizon, 4, seeded())


# ------------------------------------------------------------------------------------------ solver choice


def test_make_solver_builds_the_solver_named_by_plan_solver_with_its_settings() -> None:
    params = load_params(overrides=["plan.solver=cem", "plan.cem.samples=16", "plan.cem.elites=3",
                                    "plan.horizon=4", "plan.receding=2"])
    solver = make_solver(params.plan, block_dim=6, seed=0)
    assert isinstance(solver, cem.Solver)
    assert (solver.cfg.samples, solver.cfg.elites, solver.horizon, solver.receding, solver.block_dim) == (
        16, 3, 4, 2, 6)
    result = solver.solve(lambda c: c.pow(2).sum(dim=(1, 2)))
    assert result.plan.shape == (4, 6) and len(result.elite_costs) == params.plan.settings.iterations


def test_make_solver_rejects_an_unknown_solver_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown solver 'nope' \(known: .*cem"):
        make_solver(dataclasses.replace(SMALL, solver="nope"), 4, seed=0)


@pytest.mark.parametrize(("override", "key"), [
    ("plan.solver=nope", "plan.solver"),
    ("plan.cem.sample=10", "plan.cem.sample"),
    ("plan.samples=10", "plan.samples"),  # CEM settings moved under plan.cem
    ("plan.cem.warm_start=maybe", "plan.cem.warm_start"),
    ("plan.cost=first", "plan.cost"),
    ("plan.receding=0", "plan.receding"),
])
def test_bad_plan_parameters_fail_at_load_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_params(overrides=[override])


# ------------------------------------------------------------------------------------------ latent cost


def test_latent_goal_cost_is_the_summed_squared_distance_of_the_last_imagined_embedding() -> None:
    torch.manual_seed(0)
    cfg = dataclasses.replace(
        load_params().model.settings, encoder="vit", patch_size=8, encoder_dim=32, encoder_depth=1,
        encoder_heads=2, embed_dim=16, projector_hidden=32, predictor_depth=1, predictor_heads=2,
        predictor_head_dim=8, predictor_mlp_dim=32)
    model = LeWM(cfg, 16, action_dim=2, frameskip=5, history=3).eval()
    z_context, z_goal = torch.randn(1, 16), torch.randn(16)
    candidates = torch.randn(7, 4, 10)
    costs = model.planning_cost(z_context, z_goal)(candidates)
    with torch.no_grad():
        expected = ((model.rollout(z_context, candidates)[:, -1] - z_goal) ** 2).sum(dim=1)
    assert costs.shape == (7,) and torch.allclose(costs, expected, atol=1e-5)
    # the caller picks the autograd mode: inference mode for sampling solvers, autograd for gradient ones
    with torch.inference_mode():
        assert torch.is_inference(model.planning_cost(z_context, z_goal)(candidates))
    candidates.requires_grad_(True)
    (grad,) = torch.autograd.grad(model.planning_cost(z_context, z_goal)(candidates).sum(), candidates)
    assert grad.shape == candidates.shape  # zero here: at init AdaLN-zero ignores the actions
    assert all(p.grad is None for p in model.parameters())


class Integrator(torch.nn.Module):
    """A world model whose latent is a point moved by each action block: z_{h+1} = z_h + block."""

    def rollout(self, z_context: torch.Tensor, blocks: torch.Tensor,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        return z_context.reshape(1, 1, -1) + blocks.cumsum(dim=1)


def test_every_step_cost_sums_the_goal_distance_over_the_imagined_steps() -> None:
    model, z_context, z_goal = Integrator(), torch.tensor([[0.0, 0.0]]), torch.tensor([3.0, -1.0])
    candidates = torch.randn(6, 4, 2, generator=seeded(0))
    imagined = candidates.cumsum(dim=1)
    every_step = goal_distance_cost(model, z_context, z_goal, steps="every_step")
    torch.testing.assert_close(every_step(candidates), (imagined - z_goal).pow(2).sum(dim=(1, 2)))
    torch.testing.assert_close(goal_distance_cost(model, z_context, z_goal)(candidates),
                               (imagined[:, -1] - z_goal).pow(2).sum(dim=1))
    one_block = candidates[:, :1]  # a one-block horizon: both costs are the reference's
    torch.testing.assert_close(every_step(one_block), goal_distance_cost(model, z_context, z_goal)(one_block))
    with pytest.raises(ValueError, match="steps"):
        goal_distance_cost(model, z_context, z_goal, steps="first")


def test_cem_on_the_every_step_cost_arrives_in_the_first_block_and_stays() -> None:
    """The last-step cost is indifferent to when the goal is reached; the every-step cost is not."""
    model, z_context, z_goal = Integrator(), torch.zeros(1, 2), torch.tensor([[1.5, -0.5]])
    cfg = cem.Config(samples=300, elites=30, iterations=30, init_std=1.0, warm_start=False)
    cost = goal_distance_cost(model, z_context, z_goal, steps="every_step")
    plan = cem_plan(cost, cfg, horizon=3, block_dim=2, generator=seeded(0)).plan
    torch.testing.assert_close(plan[0], z_goal[0], atol=0.05, rtol=0)
    torch.testing.assert_close(plan[1:], torch.zeros(2, 2), atol=0.05, rtol=0)


class TokenModel(torch.nn.Module):
    """A linear world model whose latent is N patch tokens of width D, `(N, D)` per frame: every action
    block adds `block @ weight` to the tokens."""

    def __init__(self, tokens: int = 3, dim: int = 2, block_dim: int = 4) -> None:
        super().__init__()
        self.tokens, self.dim = tokens, dim
        self.weight = torch.nn.Parameter(torch.randn(block_dim, tokens * dim, generator=seeded(11)))

    def rollout(self, z_context: torch.Tensor, blocks: torch.Tensor,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        """`(1, N, D)` and `(S, H, block_dim)` → `(S, H, N, D)`."""
        steps = (blocks @ self.weight).reshape(*blocks.shape[:2], self.tokens, self.dim)
        return z_context.reshape(1, 1, self.tokens, self.dim) + steps.cumsum(dim=1)


def test_patch_token_latents_get_one_cost_per_candidate_and_plan_with_cem() -> None:
    model = TokenModel()
    z_context = torch.randn(1, 3, 2, generator=seeded(1))
    with torch.no_grad():  # a reachable goal: the tokens after two known blocks
        z_goal = model.rollout(z_context, torch.linspace(-1, 1, 8).reshape(1, 2, 4))[0, -1]
    cost = goal_distance_cost(model, z_context, z_goal)
    candidates = torch.randn(5, 2, 4, generator=seeded(2))
    costs = cost(candidates)
    with torch.no_grad():
        imagined = model.rollout(z_context, candidates)[:, -1]
    assert costs.shape == (5,)
    torch.testing.assert_close(costs, (imagined - z_goal).pow(2).sum(dim=(1, 2)))
    torch.testing.assert_close(goal_distance_cost(model, z_context, z_goal[None])(candidates), costs)

    cfg = cem.Config(samples=200, elites=20, iterations=20, init_std=1.0, warm_start=True)

    def per_token(candidates: torch.Tensor) -> torch.Tensor:
        """The reduction over the last axis only: one cost per token, (S, N)."""
        return (model.rollout(z_context, candidates)[:, -1] - z_goal).pow(2).sum(dim=-1)

    with pytest.raises(ValueError, match=r"cost_fn returned shape \(200, 3\)"):
        cem_plan(per_token, cfg, 2, 4, seeded())
    result = cem_plan(cost, cfg, horizon=2, block_dim=4, generator=seeded())
    assert result.plan.shape == (2, 4)
    assert result.best_costs[-1] < 1e-3 * result.best_costs[0]
    with torch.no_grad():
        reached = model.rollout(z_context, result.plan[None])[0, -1]
    assert (reached - z_goal).abs().max() < 0.05


# ------------------------------------------------------------------------------------ MPC on a point world

STEP_SIZE = 5.0  # the point moves STEP_SIZE · action per env step
PREDICATES = ("near", "x")  # the point world's predicates, scored by `success` (passed to run_episode)


def success(state: np.ndarray, goal_state: np.ndarray, predicate: str) -> bool:
    if predicate == "near":
        return bool(np.linalg.norm(state - goal_state) < 3.0)
    return bool(abs(state[0] - goal_state[0]) < 3.0)


def block_errors(state: np.ndarray, goal_state: np.ndarray) -> tuple[float, float]:
    return float(np.linalg.norm(state - goal_state)), 0.0


class PointEnv:
    """A point in [0, 255]² moved by `STEP_SIZE · clip(a)`; pixel (0, 0) holds its rounded position."""

    action_dim = 2

    def __init__(self) -> None:
        self.position = np.zeros(2)
        self.executed: list[np.ndarray] = []

    def _obs(self) -> dict[str, np.ndarray]:
        pixels = np.zeros((4, 4, 3), dtype=np.uint8)
        pixels[0, 0, :2] = np.clip(np.rint(self.position), 0, 255)
        return {"pixels": pixels, "state": self.position.copy(), "proprio": self.position.copy()}

    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        self.position = np.asarray(state, dtype=np.float64).copy()
        return self._obs()

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        self.goal = np.asarray(goal_state)

    def step(self, action: np.ndarray):
        self.executed.append(np.asarray(action).copy())
        self.position = self.position + STEP_SIZE * np.clip(action, -1, 1)
        return self._obs(), 0.0, False, False, {}


STATS = ActionStats(np.array([0.2, -0.1]), np.array([0.5, 0.4]))
FRAMESKIP = 2
META = ModelMeta(env="point", model="point", settings={}, image_size=4, action_dim=2, frameskip=FRAMESKIP,
                 history=1, action_stats=STATS)


class PointWorldModel(torch.nn.Module):
    """An exact model of PointEnv in normalised block space: z = position."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the policy a device

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels[:, :2, 0, 0].float()

    def rollout(self, z_context: torch.Tensor, blocks: torch.Tensor,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        raw = STATS.denormalize(blocks).clamp(-1, 1).reshape(*blocks.shape[:2], FRAMESKIP, 2)
        return z_context.reshape(1, -1, 2)[:, -1:] + STEP_SIZE * raw.sum(dim=2).cumsum(dim=1)

    def planning_cost(self, z_context: torch.Tensor, z_goal: torch.Tensor,
                      context_actions: torch.Tensor | None = None, steps: str = "last") -> CostFn:
        return goal_distance_cost(self, z_context, z_goal, context_actions, steps)


@pytest.mark.parametrize("cost", ["last", "every_step"])
def test_mpc_reaches_the_goal_and_stops_once_every_predicate_held(cost: str) -> None:
    env, start, goal = PointEnv(), np.array([20.0, 20.0]), np.array([42.0, 31.0])
    agent = LatentMPCAgent(PointWorldModel(), META, changed(SMALL, cost=cost), seed=0)
    goal_pixels = PointEnv().set_state(goal)["pixels"]
    result = run_episode(env, agent, start, goal, goal_pixels, budget=40, predicates=PREDICATES,
                         success_fn=success)
    assert result.success("near") and result.success("x")
    assert 0 < result.first_success["x"] <= result.first_success["near"] == result.steps < 40
    assert np.linalg.norm(result.final_state - goal) < 3.0
    chunk = SMALL.receding * FRAMESKIP
    assert len(result.solve_times) == -(-result.steps // chunk) and min(result.solve_times) > 0
    assert all(np.all(np.abs(a) <= 1) for a in env.executed)


class ContextRecordingModel(PointWorldModel):
    """`PointWorldModel` that keeps the context of every solve (its rollout reads the last frame only)."""

    def __init__(self) -> None:
        super().__init__()
        self.contexts: list[tuple[torch.Tensor, torch.Tensor | None]] = []

    def planning_cost(self, z_context: torch.Tensor, z_goal: torch.Tensor,
                      context_actions: torch.Tensor | None = None, steps: str = "last") -> CostFn:
        self.contexts.append((z_context.clone(), context_actions))
        return super().planning_cost(z_context, z_goal, context_actions, steps)


def test_plan_context_holds_the_frames_and_blocks_before_the_current_frame() -> None:
    """With plan.context_frames = 3 a solve sees the frames 2 and 1 blocks earlier and the normalised
    blocks executed since, once the episode has them: the first solve its start frame only."""
    env, model = PointEnv(), ContextRecordingModel()
    meta, cfg = dataclasses.replace(META, history=3), changed(SMALL, context_frames=3, receding=1)
    agent = LatentMPCAgent(model, meta, cfg, seed=0)
    run_episode(env, agent, np.array([20.0, 20.0]), np.array([250.0, 250.0]), np.zeros((4, 4, 3), np.uint8),
                budget=4 * FRAMESKIP, predicates=PREDICATES, success_fn=success)
    positions = np.array([20.0, 20.0]) + STEP_SIZE * np.cumsum([np.zeros(2), *env.executed], axis=0)
    assert [tuple(z.shape) for z, _ in model.contexts] == [(1, 1, 2), (1, 2, 2), (1, 3, 2), (1, 3, 2)]
    assert model.contexts[0][1] is None
    for solve in (1, 2, 3):
        z_context, context_actions = model.contexts[solve]
        earlier = z_context.shape[1] - 1
        steps = FRAMESKIP * np.arange(solve - earlier, solve + 1)
        np.testing.assert_array_equal(z_context[0].numpy(), np.clip(np.rint(positions[steps]), 0, 255))
        executed = np.array(env.executed[steps[0]: steps[-1]]).reshape(1, earlier, -1)
        np.testing.assert_allclose(context_actions.numpy(), STATS.normalize(executed), rtol=1e-6)


def test_plan_context_needs_every_step_observed_and_a_model_that_reads_it() -> None:
    agent = LatentMPCAgent(PointWorldModel(), dataclasses.replace(META, history=2),
                           changed(SMALL, context_frames=2), seed=0)
    agent.start({"pixels": np.zeros((4, 4, 3), np.uint8)})
    agent.act({"pixels": np.zeros((4, 4, 3), np.uint8)})
    with pytest.raises(RuntimeError, match="must observe"):
        agent.act({"pixels": np.ones((4, 4, 3), np.uint8)})
    with pytest.raises(ValueError, match=r"context_frames must be in \[1, 1\]"):
        LatentMPCAgent(PointWorldModel(), META, changed(SMALL, context_frames=2), seed=0)
    with pytest.raises(ConfigError, match=r"plan\.context_frames"):
        load_params(overrides=["plan.context_frames=0"])


def test_mpc_executes_the_first_receding_blocks_denormalised_and_clipped() -> None:
    env = PointEnv()
    agent = LatentMPCAgent(PointWorldModel(), META, SMALL, seed=0)
    plan = torch.linspace(-3, 3, SMALL.horizon * FRAMESKIP * 2).reshape(SMALL.horizon, FRAMESKIP * 2)
    agent.solver.solve = lambda cost_fn: PlanResult(plan, [0.0], [0.0])
    budget = SMALL.receding * FRAMESKIP
    far = np.array([250.0, 250.0])
    result = run_episode(env, agent, np.array([10.0, 10.0]), far, np.zeros((4, 4, 3), np.uint8), budget,
                         PREDICATES, success)
    expected = STATS.denormalize(plan[: SMALL.receding].double().numpy()).reshape(-1, 2)
    assert result.steps == budget and len(result.solve_times) == 1
    np.testing.assert_allclose(np.array(env.executed), np.clip(expected, -1, 1), rtol=1e-6)
    assert (np.abs(expected) > 1).any()  # the clipping was exercised


def test_a_start_that_already_satisfies_every_predicate_ends_at_step_zero() -> None:
    result = run_episode(PointEnv(), ZeroAgent(2), np.array([5.0, 5.0]), np.array([6.0, 5.0]),
                         np.zeros((4, 4, 3), np.uint8), budget=10, predicates=PREDICATES, success_fn=success)
    assert result.steps == 0 and result.start_satisfied("near") and result.start_satisfied("x")


class PatchPointModel(PointWorldModel):
    """`PointWorldModel` with patch-token latents: two tokens (x, y) of width 1, `(B, 2, 1)` per frame."""

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        return super().encode(pixels)[..., None]

    def rollout(self, z_context: torch.Tensor, blocks: torch.Tensor,
                context_actions: torch.Tensor | None = None) -> torch.Tensor:
        return super().rollout(z_context, blocks)[..., None]


def test_mpc_plans_with_a_patch_token_model() -> None:
    """The agent and CEM need nothing of the latent's shape: a (N, D) latent reaches the goal too."""
    env, start, goal = PointEnv(), np.array([20.0, 20.0]), np.array([42.0, 31.0])
    agent = LatentMPCAgent(PatchPointModel(), META, SMALL, seed=0)
    with pytest.raises(RuntimeError, match="before start"):
        agent.act({"pixels": np.zeros((4, 4, 3), np.uint8)})
    goal_pixels = PointEnv().set_state(goal)["pixels"]
    result = run_episode(env, agent, start, goal, goal_pixels, budget=40, predicates=PREDICATES,
                         success_fn=success)
    assert agent.z_goal is not None and agent.z_goal.shape == (1, 2, 1)
    assert result.success("near") and result.success("x") and result.steps < 40
    assert np.linalg.norm(result.final_state - goal) < 3.0


def test_baseline_agents_are_the_random_and_zero_floors() -> None:
    agents = baseline_agents(2)
    assert tuple(agents) == BASELINES == ("random", "zero")
    random_agent, zero = agents["random"](3), agents["zero"](3)
    assert isinstance(random_agent, RandomAgent) and isinstance(zero, ZeroAgent)
    np.testing.assert_array_equal(random_agent.act({}), RandomAgent(2, seed=3).act({}))
    np.testing.assert_array_equal(zero.act({}), np.zeros((1, 2)))
    assert random_agent.solve_times == [] and zero.solve_times == []
    assert list(baseline_agents(2, ["zero"])) == ["zero"]
    with pytest.raises(ValueError, match="unknown baselines"):
        baseline_agents(2, ["zero", "best"])


def test_random_policy_is_uniform_in_the_action_box_and_seeded() -> None:
    first, again = RandomAgent(2, seed=3), RandomAgent(2, seed=3)
    actions = np.concatenate([first.act({}) for _ in range(500)])
    assert actions.shape == (500, 2) and np.abs(actions).max() <= 1 and np.abs(actions.mean(0)).max() < 0.1
    assert np.array_equal(actions[:1], again.act({}))


# ------------------------------------------------------------------------------------------------- Push-T


def test_zero_policy_keeps_the_pusht_agent_still() -> None:
    env = make_env("pusht", image_size=16)
    start = np.array([100.0, 100.0, 300.0, 300.0, 0.5, 0.0, 0.0])
    goal = np.array([400.0, 400.0, 200.0, 200.0, 2.0, 0.0, 0.0])
    result = run_episode(env, ZeroAgent(2), start, goal, np.zeros((16, 16, 3), np.uint8), budget=10,
                         predicates=("reference", "block"), success_fn=get_world("pusht").success)
    assert result.steps == 10 and not result.success("reference") and not result.success("block")
    np.testing.assert_allclose(result.final_state[:5], start[:5], atol=1e-6)
