"""The Reacher world: the env (env.py), its data-collection policies (expert.py), the simulator oracle's
state cost and the spec the rest of the code reads (`WORLD`)."""

from __future__ import annotations

import numpy as np

from lewm.envs.reacher import env
from lewm.envs.reacher.env import (
    PREDICATES,
    SUCCESS_ANGLE,
    ReacherEnv,
    angle_difference,
    joint_errors,
    success,
)
from lewm.envs.reacher.expert import ReacherExpert
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
    """How far the arm ended from its goal: the largest wrapped joint-angle error (rad) and the
    fingertip distance (m)."""
    angle_error, fingertip_error = joint_errors(state, goal_state)
    return {"joint_error": float(angle_error), "fingertip_error": float(fingertip_error)}


def state_cost(states: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """The `reference` predicate's errors in units of its tolerance, squared and summed: each joint's
    wrapped angle error over 0.05 rad (1 per joint at the border; velocities do not count)."""
    states, goal_state = np.asarray(states, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    angle_errors = angle_difference(states[:, 0:2], goal_state[0:2])
    return ((angle_errors / SUCCESS_ANGLE) ** 2).sum(axis=-1)


_QUANTITIES = quantities_by_name(physical_quantities(ReacherEnv.state_names))

WORLD = World(
    name="reacher",
    env_class=ReacherEnv,
    policies={
        "expert": ReacherExpert,
        "random": lambda rng, action_noise: UniformPolicy(ReacherEnv.action_dim, rng),
    },
    predicates=PREDICATES,
    headline="reference",
    success=success,
    final_errors=final_errors,
    probe_targets=physical_quantities(ReacherEnv.state_names),
    perturbations={"color": color_change("set_arm_color"), "teleport": TELEPORT},
    bodies=(Body("arm", "agent", angles=(_QUANTITIES["shoulder_angle"], _QUANTITIES["wrist_angle"])),),
    contacts="nothing: contacts are disabled in the simulation, so it is always 0 (there is no object)",
    state_cost=state_cost,
)

__all__ = ["WORLD", "ReacherEnv", "ReacherExpert", "env"]
