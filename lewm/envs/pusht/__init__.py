"""The Push-T world: the env (env.py), its data-collection policies (expert.py) and the spec the rest of
the code reads (`WORLD`)."""

from __future__ import annotations

import numpy as np

from lewm.envs.pusht import env
from lewm.envs.pusht.env import (
    PREDICATES,
    SUCCESS_ANGLE,
    SUCCESS_DISTANCE,
    WALL_INNER_HIGH,
    WALL_INNER_LOW,
    PushTEnv,
    block_errors,
    success,
)
from lewm.envs.pusht.expert import PushTExpert, PushTRandomPolicy
from lewm.world import TELEPORT, Body, World, color_change, physical_quantities, quantities_by_name


def final_errors(state: np.ndarray, goal_state: np.ndarray) -> dict[str, float]:
    """How far the block ended from its goal: position (px) and |angle| (rad)."""
    position_error, angle_error = block_errors(state, goal_state)
    return {"block_pos_error": float(position_error), "block_angle_error": float(abs(angle_error))}


def state_cost(states: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """The `reference` predicate's two errors in units of its tolerances, squared and summed: the joint
    agent + block position distance over 20 px and the block angle error over π/9 (1 + 1 at the border)."""
    states = np.asarray(states, dtype=np.float64)
    distance = np.linalg.norm(states[:, :4] - np.asarray(goal_state, dtype=np.float64)[:4], axis=-1)
    _, angle_error = block_errors(states, goal_state)
    return (distance / SUCCESS_DISTANCE) ** 2 + (angle_error / SUCCESS_ANGLE) ** 2


_QUANTITIES = quantities_by_name(physical_quantities(PushTEnv.state_names))
_TABLE = ((WALL_INNER_LOW, WALL_INNER_HIGH),) * 2  # px between the walls, along x and y

WORLD = World(
    name="pusht",
    env_class=PushTEnv,
    policies={
        "expert": PushTExpert,
        "random": lambda rng, action_noise: PushTRandomPolicy(rng),
    },
    predicates=PREDICATES,
    headline="reference",
    success=success,
    final_errors=final_errors,
    probe_targets=physical_quantities(PushTEnv.state_names),
    perturbations={"color": color_change("set_block_color"), "teleport": TELEPORT},
    bodies=(
        Body("agent", "agent", _QUANTITIES["agent_xy"], _TABLE),
        Body("block", "object", _QUANTITIES["block_xy"], _TABLE, angles=(_QUANTITIES["block_angle"],)),
    ),
    contacts="agent–block contact points over the step's physics substeps (pymunk)",
    state_cost=state_cost,
)

__all__ = ["WORLD", "PushTEnv", "PushTExpert", "PushTRandomPolicy", "env"]
