"""Planning with a world model (reference §8.1–§8.2): CEM in normalised action-block space, scored by the
latent distance to the goal, inside a receding-horizon (MPC) loop; plus the floor baselines.

- `cem_plan` / `CEMPlanner`: candidates (S, H, fs·A) = μ + σ·ε with candidate 0 = μ; the k lowest-cost
  candidates are the elites; μ ← mean(elites), σ ← std(elites) (unbiased); the final μ is the plan. The cost
  of all S candidates is one batched call per iteration. Randomness comes from one seeded `torch.Generator`.
- `latent_goal_cost`: ‖rollout(z_context, candidates)[:, −1] − z_goal‖², summed over embedding dims.
- `LatentMPCPolicy`: encode the current frame, solve, de-normalise the first `receding` blocks into raw
  actions. The plan-time context is the current frame only (the reference's default `history_len = 1`);
  the rollout's context then grows with predicted embeddings up to the model's `history`.
- `RandomPolicy`, `ZeroPolicy`: uniform actions in [−1, 1] and the zero action (the agent's target is its
  own position, so it stays): the floor every planner must beat on the same start/goal pairs.
- `run_episode`: the MPC loop shared by every policy. Each executed raw action is clipped to [−1, 1] and
  every success predicate is checked after every env step (and at the start state).

Episode end (a deliberate choice): the episode stops once *every* predicate has been satisfied at least
once, or when the step budget is spent. A policy's trajectory does not depend on when we stop, so each
predicate's success and first-success step are exactly what a run terminating on that predicate alone (the
reference protocol, where the env's `terminated` flag ends the episode) would give. The final state, used
for the final block errors, is the state at that stop.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from lewm.config import PlanConfig

CostFn = Callable[[Tensor], Tensor]
"""Maps candidates `(S, H, block_dim)` to costs `(S,)`; lower is better."""

SuccessFn = Callable[[np.ndarray, np.ndarray, str], Any]


# --------------------------------------------------------------------------------------------------- CEM


@dataclass
class PlanResult:
    """One CEM solve: the final mean (the plan) and per-iteration diagnostics."""

    plan: Tensor  # (H, block_dim), normalised action blocks
    elite_costs: list[float]  # mean cost of the elites, per iteration
    best_costs: list[float]  # lowest candidate cost, per iteration

    @property
    def final_cost(self) -> float:
        """Mean elite cost of the last iteration: the distribution whose mean is the plan."""
        return self.elite_costs[-1]


def check_plan_config(cfg: PlanConfig) -> None:
    """Reject planner settings that cannot run, naming the offending key."""
    if cfg.samples < 2 or not 2 <= cfg.elites <= cfg.samples:
        raise ValueError(f"plan.elites={cfg.elites} must be in [2, plan.samples={cfg.samples}]")
    if cfg.iterations < 1 or cfg.horizon < 1:
        raise ValueError(f"plan.iterations={cfg.iterations} and plan.horizon={cfg.horizon} must be ≥ 1")
    if not 1 <= cfg.receding <= cfg.horizon:
        raise ValueError(f"plan.receding={cfg.receding} must be in [1, plan.horizon={cfg.horizon}]")
    if cfg.init_std <= 0:
        raise ValueError(f"plan.init_std={cfg.init_std} must be > 0")


def cem_plan(
    cost_fn: CostFn,
    cfg: PlanConfig,
    block_dim: int,
    generator: torch.Generator,
    init_mean: Tensor | None = None,
) -> PlanResult:
    """Minimise `cost_fn` over `(horizon, block_dim)` action blocks with the cross-entropy method.

    Starts from μ = `init_mean` (zeros when None) and σ = `cfg.init_std`; samples are drawn from `generator`
    on its device.
    """
    check_plan_config(cfg)
    device = generator.device
    shape = (cfg.horizon, block_dim)
    mean = torch.zeros(shape, device=device) if init_mean is None else init_mean.to(device).clone()
    std = torch.full(shape, float(cfg.init_std), device=device)
    elite_costs, best_costs = [], []
    for _ in range(cfg.iterations):
        noise = torch.randn((cfg.samples, *shape), generator=generator, device=device)
        candidates = mean + std * noise
        candidates[0] = mean
        costs = cost_fn(candidates)
        if costs.shape != (cfg.samples,):
            raise ValueError(f"cost_fn returned shape {tuple(costs.shape)}, expected ({cfg.samples},)")
        elite_cost, elite_index = torch.topk(costs, cfg.elites, largest=False)
        elites = candidates[elite_index]
        mean, std = elites.mean(dim=0), elites.std(dim=0)
        elite_costs.append(elite_cost.mean())
        best_costs.append(elite_cost[0])
    return PlanResult(
        plan=mean,
        elite_costs=torch.stack(elite_costs).tolist(),
        best_costs=torch.stack(best_costs).tolist(),
    )


def shift_plan(plan: Tensor, executed: int) -> Tensor:
    """Warm start: drop the `executed` blocks of `plan` and pad the end with zeros (the prior mean)."""
    remainder = plan[executed:]
    padding = torch.zeros((min(executed, len(plan)), *plan.shape[1:]), dtype=plan.dtype, device=plan.device)
    return torch.cat([remainder, padding])


class CEMPlanner:
    """CEM with its own seeded generator and warm-start state, for one MPC episode.

    With `cfg.warm_start`, each solve after the first starts from the previous plan shifted by the
    `cfg.receding` executed blocks (σ always restarts at `init_std`). With receding = horizon (the
    reference setting) the shifted plan is all zeros, i.e. the same as no warm start.
    """

    def __init__(self, cfg: PlanConfig, action_block_dim: int, seed: int | None = None,
                 device: str | torch.device = "cpu") -> None:
        check_plan_config(cfg)
        self.cfg, self.block_dim = cfg, action_block_dim
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(cfg.seed if seed is None else seed)
        self._next_mean: Tensor | None = None

    def reset(self) -> None:
        """Forget the previous plan (start of a new episode)."""
        self._next_mean = None

    def solve(self, cost_fn: CostFn) -> PlanResult:
        init_mean = self._next_mean if self.cfg.warm_start else None
        result = cem_plan(cost_fn, self.cfg, self.block_dim, self.generator, init_mean)
        self._next_mean = shift_plan(result.plan, self.cfg.receding)
        return result


def latent_goal_cost(model: Any, z_context: Tensor, z_goal: Tensor) -> CostFn:
    """Cost of candidate blocks: squared distance, summed over dims, between the last embedding that the
    model imagines from `z_context` (`(1, D)` or `(1, C, D)`) and `z_goal` (`(D,)` or `(1, D)`)."""
    goal = z_goal.reshape(1, -1)

    def cost(candidates: Tensor) -> Tensor:
        with torch.inference_mode():
            imagined = model.rollout(z_context, candidates)[:, -1]
            return (imagined - goal).pow(2).sum(dim=-1)

    return cost


# ----------------------------------------------------------------------------------------------- policies


class Policy(Protocol):
    """What `run_episode` drives: told the goal once, then asked for the next raw actions."""

    def start(self, goal_pixels: np.ndarray) -> None:
        """Begin an episode towards the goal image `goal_pixels` (H, W, 3) uint8."""

    def act(self, pixels: np.ndarray) -> np.ndarray:
        """Raw actions `(n ≥ 1, A)` to execute from the current frame `pixels` (H, W, 3) uint8."""

    @property
    def solve_times(self) -> list[float]:
        """Wall time of every planning solve of the current episode (empty for non-planners)."""


class LatentMPCPolicy:
    """LeWM + CEM: every call encodes the current frame, plans to the goal embedding and returns the first
    `receding` blocks as raw actions `(receding·frameskip, A)` (de-normalised with the train statistics)."""

    def __init__(self, model: Any, meta: dict[str, Any], plan_cfg: PlanConfig, seed: int) -> None:
        self.model, self.plan_cfg = model, plan_cfg
        self.action_stats = meta["action_stats"]
        self.frameskip, self.action_dim = int(meta["frameskip"]), int(meta["action_dim"])
        self.image_size = int(meta["image_size"])
        self.device = next(model.parameters()).device
        self.planner = CEMPlanner(plan_cfg, self.frameskip * self.action_dim, seed, self.device)
        self.z_goal: Tensor | None = None
        self.solve_times: list[float] = []
        self.final_costs: list[float] = []

    def start(self, goal_pixels: np.ndarray) -> None:
        self.planner.reset()
        self.solve_times, self.final_costs = [], []
        self.z_goal = self._encode(goal_pixels)

    def act(self, pixels: np.ndarray) -> np.ndarray:
        if self.z_goal is None:
            raise RuntimeError("LatentMPCPolicy.act called before start(goal_pixels)")
        started = time.perf_counter()
        z_now = self._encode(pixels)
        result = self.planner.solve(latent_goal_cost(self.model, z_now, self.z_goal))
        blocks = result.plan[: self.plan_cfg.receding].cpu()
        self.solve_times.append(time.perf_counter() - started)
        self.final_costs.append(result.final_cost)
        raw = self.action_stats.denormalize(blocks.double().numpy())
        return raw.reshape(-1, self.action_dim)

    def _encode(self, pixels: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 frame → (1, D) embedding, in inference mode."""
        if pixels.shape != (self.image_size, self.image_size, 3):
            raise ValueError(f"the env renders {pixels.shape} frames but the model expects "
                             f"({self.image_size}, {self.image_size}, 3)")
        frame = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].to(self.device)
        with torch.inference_mode():
            return self.model.encode(frame)


class RandomPolicy:
    """Uniform random actions in [−1, 1]^A, one step per call (floor baseline)."""

    def __init__(self, action_dim: int, seed: int) -> None:
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)
        self.solve_times: list[float] = []

    def start(self, goal_pixels: np.ndarray) -> None:
        """The goal is ignored."""

    def act(self, pixels: np.ndarray) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(1, self.action_dim))


class ZeroPolicy:
    """The zero action: Push-T's relative target is the agent's own position, so the agent stays put."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self.solve_times: list[float] = []

    def start(self, goal_pixels: np.ndarray) -> None:
        """The goal is ignored."""

    def act(self, pixels: np.ndarray) -> np.ndarray:
        return np.zeros((1, self.action_dim))


# -------------------------------------------------------------------------------------------- MPC episode


@dataclass
class EpisodeResult:
    """What one start/goal episode produced, for every predicate."""

    steps: int  # env steps executed
    first_success: dict[str, int | None]  # env steps until the predicate first held (0: at the start)
    final_state: np.ndarray
    solve_times: list[float] = field(default_factory=list)
    frames: list[np.ndarray] | None = None  # observed frames (start included) when recorded

    def success(self, predicate: str) -> bool:
        return self.first_success[predicate] is not None

    def start_satisfied(self, predicate: str) -> bool:
        return self.first_success[predicate] == 0


def env_attribute(env: Any, name: str) -> Any:
    """A module-level attribute of the env's module (or a parent package): `success`, `block_errors`,
    `PREDICATES`. The env contract puts success predicates next to the env class as pure functions."""
    module_name = type(getattr(env, "unwrapped", env)).__module__
    while module_name:
        value = getattr(importlib.import_module(module_name), name, None)
        if value is not None:
            return value
        module_name = module_name.rpartition(".")[0]
    raise ValueError(f"{type(env).__name__}: its module defines no `{name}`")


def run_episode(
    env: Any,
    policy: Policy,
    start_state: np.ndarray,
    goal_state: np.ndarray,
    goal_pixels: np.ndarray,
    budget: int,
    predicates: Sequence[str],
    success_fn: SuccessFn | None = None,
    record_frames: bool = False,
) -> EpisodeResult:
    """Drive `policy` from `start_state` towards `goal_state` for at most `budget` env steps.

    Stops early once every predicate has held at least once (see the module docstring for why this leaves
    each predicate's result unchanged). `success_fn` defaults to the env module's `success`.
    """
    if not predicates:
        raise ValueError("run_episode needs at least one success predicate")
    success_fn = success_fn or env_attribute(env, "success")
    env.set_goal_state(np.asarray(goal_state))  # before set_state, so the first frame shows any goal overlay
    obs = env.set_state(np.asarray(start_state))
    policy.start(goal_pixels)
    first_success: dict[str, int | None] = dict.fromkeys(predicates)
    frames = [obs["pixels"]] if record_frames else None
    steps = 0
    done = _note_successes(first_success, success_fn, obs["state"], goal_state, steps)
    while not done and steps < budget:
        actions = np.atleast_2d(np.asarray(policy.act(obs["pixels"]), dtype=np.float32))
        for action in np.clip(actions, -1.0, 1.0)[: budget - steps]:
            obs = env.step(action)[0]
            steps += 1
            if frames is not None:
                frames.append(obs["pixels"])
            done = _note_successes(first_success, success_fn, obs["state"], goal_state, steps)
            if done:
                break
    return EpisodeResult(steps, first_success, np.asarray(obs["state"]), list(policy.solve_times), frames)


def _note_successes(first_success: dict[str, int | None], success_fn: SuccessFn, state: np.ndarray,
                    goal_state: np.ndarray, steps: int) -> bool:
    """Record `steps` for each predicate holding for the first time; True once every predicate has held."""
    for predicate, first in first_success.items():
        if first is None and bool(success_fn(state, goal_state, predicate)):
            first_success[predicate] = steps
    return all(first is not None for first in first_success.values())
