"""Two-Room's data-collection policies: the door-then-target expert (`TwoRoomExpert`); `random` is the
generic `UniformPolicy`.

A policy maps observations to float32 actions in [−1, 1]^2; its randomness comes only from `rng`.
"""

from __future__ import annotations

import math

import numpy as np

from lewm.envs.tworoom import env as tworoom

DOOR_TOLERANCE = 10.5  # the reference's 3·scale: this close to the door centre, head for the target


class TwoRoomExpert:
    """The reference's noisy expert: straight to the target, via the door centre when the target is in the
    other room; then on to a new target, so that long episodes keep moving.

    Per step, from the agent position (`obs["state"]`) alone: if the target is on the other side of the
    wall's centre line and the agent is farther than `door_tolerance` px from the door centre, the waypoint
    is the door centre, else the target. The action is the unit direction to the waypoint plus
    N(0, action_noise²) per component, clipped to [−1, 1]. With the reference's noise 2.0 the clipped
    actions are mostly noise: the agent drifts toward the waypoint at about a third of full speed.

    The first target is the env's (`obs["target"]` at `reset`: the goal if one is set, else a point drawn
    at reset). Unlike the reference, whose agent then sits at its target, once within `reach` px (the
    success radius) the expert draws a new target uniformly in the rooms from its rng; `reach` ≤ 0 never
    draws one (the reference's behaviour).
    """

    def __init__(self, rng: np.random.Generator, action_noise: float, door_tolerance: float = DOOR_TOLERANCE,
                 reach: float = tworoom.SUCCESS_DISTANCE) -> None:
        self.rng, self.action_noise = rng, action_noise
        self.door_tolerance, self.reach = door_tolerance, reach
        self._target: np.ndarray | None = None

    def reset(self, obs: dict[str, np.ndarray]) -> None:
        self._target = np.array(obs["target"], dtype=np.float64)

    @property
    def target(self) -> np.ndarray | None:
        """The position the expert currently heads for (None before `reset`)."""
        return None if self._target is None else self._target.copy()

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self._target is None:
            raise RuntimeError("TwoRoomExpert.act called before reset(obs)")
        agent = np.asarray(obs["state"][0:2], dtype=np.float64)
        if math.dist(agent, self._target) < self.reach:
            self._target = tworoom.random_free_position(self.rng)
        other_room = (agent[0] > tworoom.WALL_X) != (self._target[0] > tworoom.WALL_X)
        far_from_door = math.dist(agent, tworoom.DOOR_CENTER) > self.door_tolerance
        waypoint = tworoom.DOOR_CENTER if other_room and far_from_door else self._target
        offset = waypoint - agent
        distance = math.hypot(offset[0], offset[1])
        direction = offset / distance if distance > 1e-9 else np.zeros(2)
        noisy = direction + self.action_noise * self.rng.standard_normal(2)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)
