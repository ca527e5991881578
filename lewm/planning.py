"""Planning with a world model in a receding-horizon (MPC) loop (reference §8.2), and the floor baselines.

- `LatentMPCAgent`: encode the current frame, let the solver (`plan.solver`, lewm/solvers/) minimise the
  model's planning cost to the goal latent, de-normalise the first `receding` blocks into raw actions.
  A solve runs under `torch.inference_mode()`, or with autograd on for a `differentiable` solver.
  The plan-time context is `plan.context_frames` observed frames: the current one (the reference's
  `history_len = 1`, the default) and, above 1, those 1, 2 … blocks earlier with the blocks executed
  between them (what the agent `observe`s), so motion is visible to the model; the rollout's context then
  grows with predicted latents up to the model's `history`.
- `RandomAgent`, `ZeroAgent`: uniform actions in [−1, 1] and the zero action: the floors every planner
  must beat on the same start/goal pairs (`baseline_agents`).
- `SimulatorOracleAgent`: the same solver and MPC loop with the true simulator as the model and a cost from
  states (the world's `state_cost`): the ceiling of the protocol, which separates it from the world model.
- `run_episode`: the MPC loop shared by every agent. Each executed raw action is clipped to [−1, 1];
  every success predicate is checked, and the world's goal errors measured, after every env step (and at
  the start state), so an episode reports how far from the goal it started, came closest and ended.
- With `imagine` set (the evaluation sets it for the episodes it draws as GIFs), `LatentMPCAgent` also keeps
  what each chosen plan imagines: the current frame's latent followed by the model's own `rollout` of the
  whole plan from it (`imagined`), computed after the solve, outside its timing; display only.

Episode end (a deliberate choice): the episode stops once *every* predicate has been satisfied at least
once, or when the step budget is spent. An agent's trajectory does not depend on when we stop, so each
predicate's success and first-success step are exactly what a run terminating on that predicate alone (the
reference protocol, where the env's `terminated` flag ends the episode) would give. The final state, used
for the final errors, is the state at that stop.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from lewm.checkpoint import ModelMeta
from lewm.config import PlanConfig
from lewm.data.clips import ActionStats
from lewm.models import check_context_frames
from lewm.parts import SOLVERS, part_module
from lewm.runtime import autocast, resolve_precision
from lewm.solvers import Solver
from lewm.world import Observation, SuccessFn, World

BASELINES = ("random", "zero")
ORACLE = "oracle"


def make_solver(cfg: PlanConfig, block_dim: int, seed: int, device: str | torch.device = "cpu") -> Solver:
    """The solver `plan.solver` with its settings `plan.<solver>`, seeded for one episode."""
    module = part_module(SOLVERS, cfg.solver, "solver")
    return module.Solver(cfg.settings, cfg.horizon, cfg.receding, block_dim, seed, device)


# ------------------------------------------------------------------------------------------------- agents


class Agent(Protocol):
    """What `run_episode` drives: told the goal once, then asked for the next raw actions. Observations are
    the env's (`pixels` (H, W, 3) uint8, `state`, `proprio`); a world model agent reads only the pixels.
    An agent may also define `observe(obs, action)`: `run_episode` then calls it after every env step with
    the raw action executed (clipped) and the observation it led to."""

    def start(self, goal: Observation) -> None:
        """Begin an episode towards the goal observation."""

    def act(self, obs: Observation) -> np.ndarray:
        """Raw actions `(n ≥ 1, A)` to execute from the current observation."""

    @property
    def solve_times(self) -> list[float]:
        """Wall time of every planning solve of the current episode (empty for non-planners)."""


class LatentMPCAgent:
    """A world model + a solver: every call encodes the current frame, plans to the goal latent and returns
    the first `receding` blocks as raw actions `(receding·frameskip, A)` (de-normalised with the train
    statistics)."""

    def __init__(self, model: Any, meta: ModelMeta, plan_cfg: PlanConfig, seed: int) -> None:
        self.model, self.plan_cfg = model, plan_cfg
        self.action_stats = meta.action_stats
        self.action_dim, self.image_size = meta.action_dim, meta.image_size
        self.device = next(model.parameters()).device
        self.precision = resolve_precision(self.device, plan_cfg.precision)
        self.frameskip = meta.frameskip
        self.solver = make_solver(plan_cfg, meta.frameskip * meta.action_dim, seed, self.device)
        check_context_frames(plan_cfg.context_frames, meta.history)
        self.context_frames = plan_cfg.context_frames
        # the frames and raw actions of the last context_frames − 1 blocks (oldest first), for the context
        self.recent_frames: deque[np.ndarray] = deque(maxlen=(self.context_frames - 1) * self.frameskip + 1)
        self.recent_actions: deque[np.ndarray] = deque(maxlen=(self.context_frames - 1) * self.frameskip)
        self.z_goal: Tensor | None = None
        self.solve_times: list[float] = []
        self.imagine = False  # keep what every chosen plan imagines (`imagined`), for display
        self.imagined: list[Tensor] = []

    def start(self, goal: Observation) -> None:
        self.solver.reset()
        self.solve_times = []
        self.imagined = []
        self.recent_frames.clear()
        self.recent_actions.clear()
        self.z_goal = self._encode(goal["pixels"][None])

    def observe(self, obs: Observation, action: np.ndarray) -> None:
        """Keep the frames and actions the plan-time context needs (nothing with one context frame)."""
        if self.context_frames > 1:
            self.recent_actions.append(np.asarray(action, dtype=np.float64))
            self.recent_frames.append(obs["pixels"])

    def act(self, obs: Observation) -> np.ndarray:
        if self.z_goal is None:
            raise RuntimeError("LatentMPCAgent.act called before start(goal)")
        started = time.perf_counter()
        frames, context_actions = self._context(obs["pixels"])
        z_context, z_goal = self._encode(frames)[None], self.z_goal  # (1, C, *latent)
        if self.solver.differentiable:  # autograd on; the solver takes gradients w.r.t. its candidates only
            grad_mode = contextlib.nullcontext()
            z_context, z_goal = z_context.clone(), z_goal.clone()  # inference tensors cannot be saved
        else:
            grad_mode = torch.inference_mode()
        with grad_mode, autocast(self.device, self.precision):
            cost = self.model.planning_cost(z_context, z_goal, context_actions, self.plan_cfg.cost)
            result = self.solver.solve(cost)
        blocks = result.plan[: self.plan_cfg.receding].cpu()
        self.solve_times.append(time.perf_counter() - started)
        if self.imagine:
            self.imagined.append(self._imagine(z_context.detach(), context_actions, result.plan.detach()))
        return raw_actions(blocks, self.action_stats, self.action_dim)

    def _context(self, pixels: np.ndarray) -> tuple[np.ndarray, Tensor | None]:
        """The observed frames a solve starts from, oldest first `(C, H, W, 3)`: the current frame `pixels`
        and those 1 … C−1 blocks earlier, as many as the episode has so far (up to `context_frames`), and
        the normalised blocks executed between them `(1, C−1, block_dim)` (None for one frame)."""
        if self.context_frames == 1:
            return pixels[None], None
        if not self.recent_frames:  # the episode's first solve: its start frame
            self.recent_frames.append(pixels)
        elif self.recent_frames[-1] is not pixels:
            raise RuntimeError("LatentMPCAgent with plan.context_frames > 1 must observe() every env step "
                               "(run_episode does) before act()")
        earlier = min(self.context_frames - 1, len(self.recent_actions) // self.frameskip)
        frames = np.stack([self.recent_frames[-1 - k * self.frameskip] for k in range(earlier, -1, -1)])
        if earlier == 0:
            return frames, None
        actions = np.stack(list(self.recent_actions)[-earlier * self.frameskip:]).reshape(1, earlier, -1)
        blocks = torch.as_tensor(self.action_stats.normalize(actions), dtype=torch.float32)
        return frames, blocks.to(self.device)

    def _imagine(self, z_context: Tensor, context_actions: Tensor | None, plan: Tensor) -> Tensor:
        """What the chosen `plan` (H, block_dim) imagines from the context `z_context` (1, C, *latent): the
        current latent, then the model's rollout of the plan, `(1 + H, *latent)` float32 on the CPU; latent k
        is the model's guess of the frame k·frameskip raw steps from now."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            rollout = self.model.rollout(z_context, plan[None].to(self.device), context_actions)[0].float()
        return torch.cat([z_context[0, -1:].float(), rollout]).cpu()

    def _encode(self, frames: np.ndarray) -> Tensor:
        """(k, H, W, 3) uint8 frames → (k, *latent) latents, in inference mode."""
        if frames.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"the env renders {frames.shape[1:]} frames but the model expects "
                             f"({self.image_size}, {self.image_size}, 3)")
        pixels = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2))).to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            return self.model.encode(pixels).float()


def raw_actions(blocks: Tensor, action_stats: ActionStats, action_dim: int) -> np.ndarray:
    """Normalised action blocks `(..., n, frameskip·A)` → raw actions `(..., n·frameskip, A)` (float64)."""
    raw = action_stats.denormalize(blocks.detach().cpu().double().numpy())
    return raw.reshape(*raw.shape[:-2], -1, action_dim)


class SimulatorOracleAgent:
    """The planning protocol's ceiling: `LatentMPCAgent`'s solver, horizon and receding horizon with the
    true simulator as the world model. A candidate's blocks are de-normalised (the train statistics, as the
    model's), clipped to [−1, 1] and rolled out render-free from the TRUE current state (the env's
    `simulate`); its cost is the world's `state_cost` against the goal state of the state reached at the
    horizon's end or, with `plan.cost: every_step` as the models' cost, summed over the state after each
    block (each a rollout of its prefix from the true state: exact in every world, ~H/2 + 1/2 times the
    rollouts of one). It reads states, which no world model sees: a gap to it is the world model's, not the
    protocol's."""

    def __init__(self, world: World, env_kwargs: dict[str, Any], action_stats: ActionStats, action_dim: int,
                 frameskip: int, plan_cfg: PlanConfig, seed: int) -> None:
        if world.state_cost is None:
            raise ValueError(f"world {world.name} defines no state_cost: it has no simulator oracle")
        self.simulator = world.make_env(**env_kwargs).unwrapped
        if not hasattr(self.simulator, "simulate"):
            raise ValueError(f"world {world.name}: its env has no render-free `simulate` for the oracle")
        self.solver = make_solver(plan_cfg, frameskip * action_dim, seed)
        if self.solver.differentiable:
            raise ValueError(f"plan.solver={plan_cfg.solver} needs gradients of the cost; the simulator "
                             "oracle has none (use a sampling solver)")
        self.state_cost, self.action_stats, self.action_dim = world.state_cost, action_stats, action_dim
        self.receding, self.frameskip = plan_cfg.receding, frameskip
        self.every_step = plan_cfg.cost == "every_step"
        self.goal_state: np.ndarray | None = None
        self.solve_times: list[float] = []

    def start(self, goal: Observation) -> None:
        self.solver.reset()
        self.solve_times = []
        self.goal_state = np.asarray(goal["state"], dtype=np.float64)

    def act(self, obs: Observation) -> np.ndarray:
        if self.goal_state is None:
            raise RuntimeError("SimulatorOracleAgent.act called before start(goal)")
        started = time.perf_counter()
        state, goal_state = np.asarray(obs["state"], dtype=np.float64), self.goal_state

        def cost(candidates: Tensor) -> Tensor:
            sequences = np.clip(raw_actions(candidates, self.action_stats, self.action_dim), -1.0, 1.0)
            steps = sequences.shape[1]
            ends = range(self.frameskip, steps + 1, self.frameskip) if self.every_step else [steps]
            total = sum(self.state_cost(np.stack([self.simulator.simulate(state, actions[:end])
                                                  for actions in sequences]), goal_state)
                        for end in ends)
            return torch.as_tensor(total, dtype=torch.float32)

        with torch.inference_mode():
            result = self.solver.solve(cost)
        self.solve_times.append(time.perf_counter() - started)
        return raw_actions(result.plan[: self.receding], self.action_stats, self.action_dim)


class RandomAgent:
    """Uniform random actions in [−1, 1]^A, one step per call (floor baseline)."""

    def __init__(self, action_dim: int, seed: int) -> None:
        self.action_dim = action_dim
        self.rng = np.random.default_rng(seed)
        self.solve_times: list[float] = []

    def start(self, goal: Observation) -> None:
        """The goal is ignored."""

    def act(self, obs: Observation) -> np.ndarray:
        return self.rng.uniform(-1.0, 1.0, size=(1, self.action_dim))


class ZeroAgent:
    """The zero action, one step per call (floor baseline): in Push-T the relative target is the agent's
    own position, so the agent stays put."""

    def __init__(self, action_dim: int) -> None:
        self.action_dim = action_dim
        self.solve_times: list[float] = []

    def start(self, goal: Observation) -> None:
        """The goal is ignored."""

    def act(self, obs: Observation) -> np.ndarray:
        return np.zeros((1, self.action_dim))


ErrorsFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
"""A world's `final_errors(state, goal_state)`: named distances to the goal (lower is closer)."""

AgentFactory = Callable[[int], Agent]
"""Builds a fresh agent for one episode from that episode's seed."""


def baseline_agents(action_dim: int, names: Iterable[str] = BASELINES) -> dict[str, AgentFactory]:
    """Factories of the floor baselines: `random` (uniform in [−1, 1]) and `zero`."""
    factories: dict[str, AgentFactory] = {
        "random": lambda seed: RandomAgent(action_dim, seed),
        "zero": lambda seed: ZeroAgent(action_dim),
    }
    unknown = [n for n in names if n not in factories]
    if unknown:
        raise ValueError(f"unknown baselines {unknown} (known: {', '.join([*factories, ORACLE])})")
    return {name: factories[name] for name in names}


# -------------------------------------------------------------------------------------------- MPC episode


@dataclass
class EpisodeResult:
    """What one start/goal episode produced, for every predicate."""

    steps: int  # env steps executed
    first_success: dict[str, int | None]  # env steps until the predicate first held (0: at the start)
    final_state: np.ndarray
    solve_times: list[float] = field(default_factory=list)
    start_errors: dict[str, float] = field(default_factory=dict)  # the world's goal errors at the start,
    best_errors: dict[str, float] = field(default_factory=dict)  # their minimum over the episode's states,
    final_errors: dict[str, float] = field(default_factory=dict)  # and at the end (each error separately)
    frames: list[np.ndarray] | None = None  # observed frames (start included) when recorded
    act_steps: list[int] | None = None  # when recorded: the env step of every `agent.act` call

    def success(self, predicate: str) -> bool:
        return self.first_success[predicate] is not None

    def start_satisfied(self, predicate: str) -> bool:
        return self.first_success[predicate] == 0


def run_episode(
    env: Any,
    agent: Agent,
    start_state: np.ndarray,
    goal_state: np.ndarray,
    goal_pixels: np.ndarray,
    budget: int,
    predicates: Sequence[str],
    success_fn: SuccessFn,
    record_frames: bool = False,
    errors_fn: ErrorsFn | None = None,
) -> EpisodeResult:
    """Drive `agent` from `start_state` towards `goal_state` for at most `budget` env steps, checking the
    world's `success_fn` for each predicate and measuring its goal errors `errors_fn` (the world's
    `final_errors`) at every state: the result's start, best (each error's minimum) and final errors.

    Stops early once every predicate has held at least once (see the module docstring for why this leaves
    each predicate's result unchanged).
    """
    if not predicates:
        raise ValueError("run_episode needs at least one success predicate")
    env.set_goal_state(np.asarray(goal_state))  # before set_state, so the first frame shows any goal overlay
    obs = env.set_state(np.asarray(start_state))
    agent.start({"pixels": goal_pixels, "state": np.asarray(goal_state)})
    observe = getattr(agent, "observe", None)
    start_errors = errors_fn(obs["state"], goal_state) if errors_fn is not None else {}
    best_errors = dict(start_errors)
    first_success: dict[str, int | None] = dict.fromkeys(predicates)
    frames = [obs["pixels"]] if record_frames else None
    act_steps: list[int] | None = [] if record_frames else None
    steps = 0
    done = _note_successes(first_success, success_fn, obs["state"], goal_state, steps)
    while not done and steps < budget:
        if act_steps is not None:
            act_steps.append(steps)
        actions = np.atleast_2d(np.asarray(agent.act(obs), dtype=np.float32))
        for action in np.clip(actions, -1.0, 1.0)[: budget - steps]:
            obs = env.step(action)[0]
            steps += 1
            if observe is not None:
                observe(obs, action)
            if frames is not None:
                frames.append(obs["pixels"])
            if errors_fn is not None:
                for name, error in errors_fn(obs["state"], goal_state).items():
                    best_errors[name] = min(best_errors[name], error)
            done = _note_successes(first_success, success_fn, obs["state"], goal_state, steps)
            if done:
                break
    final_errors = errors_fn(obs["state"], goal_state) if errors_fn is not None else {}
    return EpisodeResult(steps, first_success, np.asarray(obs["state"]), list(agent.solve_times),
                         start_errors, best_errors, final_errors, frames, act_steps)


def _note_successes(first_success: dict[str, int | None], success_fn: SuccessFn, state: np.ndarray,
                    goal_state: np.ndarray, steps: int) -> bool:
    """Record `steps` for each predicate holding for the first time; True once every predicate has held."""
    for predicate, first in first_success.items():
        if first is None and bool(success_fn(state, goal_state, predicate)):
            first_success[predicate] = steps
    return all(first is not None for first in first_success.values())
