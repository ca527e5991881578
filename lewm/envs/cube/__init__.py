"""The Cube world (single-cube pick and place, after OGBench's `cube-single`): the scene (scene.py), the
env (env.py), its data-collection policies (expert.py), the simulator oracle's state cost and the spec the
rest of the code reads (`WORLD`)."""

from __future__ import annotations

import numpy as np

from lewm.envs.cube import env
from lewm.envs.cube.env import (
    PREDICATES,
    SUCCESS_DISTANCE,
    WORKSPACE_HIGH,
    WORKSPACE_LOW,
    CubeEnv,
    cube_errors,
    success,
)
from lewm.envs.cube.expert import CubeExpert
from lewm.world import (
    TELEPORT,
    Body,
    Quantity,
    UniformPolicy,
    World,
    color_change,
    physical_quantities,
    quantities_by_name,
)


def final_errors(state: np.ndarray, goal_state: np.ndarray) -> dict[str, float]:
    """How far the cube ended from its goal: position (m) and |yaw| modulo a quarter turn (rad)."""
    position_error, yaw_error = cube_errors(state, goal_state)
    return {"cube_pos_error": float(position_error), "cube_yaw_error": float(yaw_error)}


def state_cost(states: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """The `reference` predicate's error in units of its tolerance, squared: (cube position error /
    0.04 m)² (1 at the border; the hand and the cube's yaw do not count)."""
    position_error, _ = cube_errors(states, goal_state)
    return (position_error / SUCCESS_DISTANCE) ** 2


PROBED = ("hand_xyz", "hand_yaw_angle", "finger_left", "cube_xyz", "cube_yaw_angle", "hand_velocity",
          "cube_velocity")


def _probe_targets() -> tuple[Quantity, ...]:
    """The state's physical quantities (`physical_quantities`) named in `PROBED`, the cube's yaw as a
    quantity with 4 folds: (sin 4θ, cos 4θ), continuous where the folded yaw wraps from π/4 to −π/4.

    Left out: the quaternion scalars, which are not functions of the image (q and −q are one rotation,
    and the uniformly coloured cube looks the same under 24 rotations; its yaw is the part that shows);
    `finger_right`, the twin of `finger_left` (a joint equality couples them); and the yaw, finger and
    cube spin rates, which are zero but for a few frames of each grasp, so their standardised targets
    are mostly noise.
    """
    quantities = {quantity.name: quantity for quantity in physical_quantities(CubeEnv.state_names)}
    yaw = quantities["cube_yaw_angle"]
    quantities["cube_yaw_angle"] = Quantity(yaw.name, yaw.columns, is_angle=True, folds=4)
    return tuple(quantities[name] for name in PROBED)


_QUANTITIES = quantities_by_name(_probe_targets())  # the cube's yaw with its 4 folds
_WORKSPACE = tuple(zip(WORKSPACE_LOW.tolist(), WORKSPACE_HIGH.tolist(), strict=True))  # m, x y z

WORLD = World(
    name="cube",
    env_class=CubeEnv,
    policies={
        "expert": CubeExpert,
        "random": lambda rng, action_noise: UniformPolicy(CubeEnv.action_dim, rng),
    },
    predicates=PREDICATES,
    headline="reference",
    success=success,
    final_errors=final_errors,
    probe_targets=_probe_targets(),
    perturbations={"color": color_change("set_cube_color"), "teleport": TELEPORT},
    bodies=(
        Body("hand", "agent", _QUANTITIES["hand_xyz"], _WORKSPACE, angles=(_QUANTITIES["hand_yaw_angle"],)),
        Body("cube", "object", _QUANTITIES["cube_xyz"], _WORKSPACE, angles=(_QUANTITIES["cube_yaw_angle"],)),
    ),
    contacts="gripper–cube contact points (pads, palm or wrist) over the step's 25 physics steps",
    state_cost=state_cost,
)

__all__ = ["WORLD", "CubeEnv", "CubeExpert", "env"]
