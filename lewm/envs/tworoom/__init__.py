"""The Two-Room world: the env (env.py), its data-collection policies (expert.py) and the spec the rest of
the code reads (`WORLD`)."""

from __future__ import annotations

import numpy as np

from lewm.envs.tworoom import env
from lewm.envs.tworoom.env import PREDICATES, TwoRoomEnv, agent_distance, success
from lewm.envs.tworoom.expert import TwoRoomExpert
from lewm.world import TELEPORT, UniformPolicy, World, color_change, physical_quantities


def final_errors(state: np.ndarray, goal_state: np.ndarray) -> dict[str, float]:
    """How far the agent ended from its goal (px)."""
    return {"agent_pos_error": float(agent_distance(state, goal_state))}


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
)

__all__ = ["WORLD", "TwoRoomEnv", "TwoRoomExpert", "env"]
