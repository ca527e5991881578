"""The Two-Room world: the env (env.py), its data-collection policies (expert.py), the simulator oracle's
state cost and the spec the rest of the code reads (`WORLD`)."""

from __future__ import annotations

import numpy as np

from lewm.envs.tworoom import env
from lewm.envs.tworoom.env import (
    AGENT_HIGH,
    AGENT_LOW,
    PREDICATES,
    SUCCESS_DISTANCE,
    TwoRoomEnv,
    agent_distance,
    success,
)
from lewm.envs.tworoom.expert import TwoRoomExpert
from lewm.world import (
    TELEPORT,
    Body,
    UniformPolicy,
    World,
    color_change,
    physical_quantities,
    quantities_by_name,
)


def final_errors(state: np.ndarray, goal_state: np.ndarray) -> dict[str, float]:
    """How far the agent ended from its goal (px)."""
    return {"agent_pos_error": float(agent_distance(state, goal_state))}


def state_cost(states: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """The `reference` predicate's error in units of its tolerance, squared: (agent distance / 16 px)²
    (1 at the border)."""
    return (agent_distance(states, goal_state) / SUCCESS_DISTANCE) ** 2


_QUANTITIES = quantities_by_name(physical_quantities(TwoRoomEnv.state_names))

WORLD = World(
    name="tworoom",
    env_class=TwoRoomEnv,
    policies={
        "expert": TwoRoomExpert,
        "random": lambda rng, action_noise: UniformPolicy(TwoRoomEnv.action_dim, rng),
    },
    predicates=PREDICATES,
    headline="reference",
    success=success,
    final_errors=final_errors,
    probe_targets=physical_quantities(TwoRoomEnv.state_names),
    perturbations={"color": color_change("set_agent_color"), "teleport": TELEPORT},
    # px the agent's centre can reach, along x and y (the wall band between the rooms is part of it)
    bodies=(Body("agent", "agent", _QUANTITIES["agent_xy"], ((AGENT_LOW, AGENT_HIGH),) * 2),),
    contacts="wall hits: 1 when the border or the wall cut the step's move short (there is no object)",
    state_cost=state_cost,
)

__all__ = ["WORLD", "TwoRoomEnv", "TwoRoomExpert", "env"]
