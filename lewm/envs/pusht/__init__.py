"""The Push-T world: the env (env.py), its data-collection policies (expert.py) and the spec the rest of
the code reads (`WORLD`)."""

from __future__ import annotations

import numpy as np

from lewm.envs.pusht import env
from lewm.envs.pusht.env import PREDICATES, PushTEnv, block_errors, success
from lewm.envs.pusht.expert import PushTExpert, PushTRandomPolicy
from lewm.world import TELEPORT, Perturbation, World, physical_quantities


def final_errors(state: np.ndarray, goal_state: np.ndarray) -> dict[str, float]:
    """How far the block ended from its goal: position (px) and |angle| (rad)."""
    position_error, angle_error = block_errors(state, goal_state)
    return {"block_pos_error": float(position_error), "block_angle_error": float(abs(angle_error))}


BLOCK_COLOR_CHANGE = Perturbation(
    before_step=lambda world_env, color: world_env.unwrapped.set_block_color(color),
    prepare=lambda context: tuple(context.settings.color),
)
"""The block takes the colour `voe.color` from the perturbed frame on; the physics is untouched."""

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
    perturbations={"color": BLOCK_COLOR_CHANGE, "teleport": TELEPORT},
)

__all__ = ["WORLD", "PushTEnv", "PushTExpert", "PushTRandomPolicy", "env"]
