"""Push-T's data-collection policies: the scripted expert (`PushTExpert`) and a random policy that keeps
the agent between the walls (`PushTRandomPolicy`).

- `random`: each action is drawn uniformly among those whose target keeps the agent between the walls
  (unconstrained, the agent spends ~40 % of a 100-step episode out of the picture); it touches the block
  only now and then. `action_noise` is unused: the actions are already as noisy as the space allows.
- `expert`: pushes the block toward random targets, so that most steps involve contact.

A policy maps observations to float32 actions in [−1, 1]^2; its randomness comes only from `rng`.
"""

from __future__ import annotations

import math

import numpy as np

from lewm.envs.pusht import env as pusht
from lewm.world import UniformPolicy

# Where the agent's centre can be with the whole disc between the walls.
_AGENT_LOW = pusht.WALL_INNER_LOW + pusht.AGENT_RADIUS
_AGENT_HIGH = pusht.WALL_INNER_HIGH - pusht.AGENT_RADIUS


class PushTRandomPolicy(UniformPolicy):
    """Uniform actions among those whose relative target `agent + 100·a` lies between the walls."""

    def __init__(self, rng: np.random.Generator) -> None:
        super().__init__(pusht.PushTEnv.action_dim, rng)

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        agent = obs["state"][0:2]
        low = np.maximum(-1.0, (_AGENT_LOW - agent) / pusht.ACTION_SCALE)
        high = np.minimum(1.0, (_AGENT_HIGH - agent) / pusht.ACTION_SCALE)
        return self.rng.uniform(low, np.maximum(low, high)).astype(np.float32)


# The T's farthest point from its centre of gravity, and the radius the agent keeps from the centre of
# gravity while it walks around the block.
_BLOCK_RADIUS = float(np.linalg.norm(pusht.BLOCK_POLYGONS.reshape(-1, 2) - pusht.BLOCK_COG, axis=1).max())
_ORBIT_RADIUS = _BLOCK_RADIUS + pusht.AGENT_RADIUS + 8.0
# A block freed from a wall is not pushed into a corner: its CoG target stays this far inside.
_RESCUE_LOW, _RESCUE_HIGH = 60.0, pusht.WORLD_SIZE - 60.0
_LINE_SAMPLES = np.arange(-160.0, 1.0, 2.0)  # 2-px steps along a push line, behind its point
_ARC_STEPS = np.linspace(0.0, 1.0, 16)


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(math.hypot(vector[0], vector[1]), 1e-9)


def _contact_along(point: np.ndarray, direction: np.ndarray, position: np.ndarray, angle: float) -> float:
    """Where, along the line `point + t·direction` (t ≤ 0, 2-px resolution), the agent's centre coming from
    behind first touches the T; −inf if it does not before t = 0."""
    distances = pusht.distance_to_block(point + _LINE_SAMPLES[:, None] * direction, position, angle)
    touching = np.flatnonzero(distances <= pusht.AGENT_RADIUS)
    return float(_LINE_SAMPLES[touching[0]]) if touching.size else -math.inf


def _extent(corners: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> float:
    """How far the T (its corners) reaches from `origin` along the unit `direction`."""
    return float(((corners - origin) @ direction).max())


def _orbit_turn(agent: np.ndarray, cog: np.ndarray, direction: np.ndarray) -> tuple[float, bool]:
    """The signed angle the agent walks around the clearance circle to get behind the T (at −direction),
    the shorter way whose arc stays between the walls, and whether one does (else just the shorter way)."""
    start = math.atan2(agent[1] - cog[1], agent[0] - cog[0])
    turn = float(pusht.angle_difference(math.atan2(-direction[1], -direction[0]), start))
    options = sorted((turn, turn - math.copysign(2 * math.pi, turn)), key=abs)
    for option in options:
        bearings = start + option * _ARC_STEPS
        arc = cog + _ORBIT_RADIUS * np.stack([np.cos(bearings), np.sin(bearings)], axis=1)
        if ((arc > _AGENT_LOW) & (arc < _AGENT_HIGH)).all():
            return option, True
    return options[0], False


def _push_can_start(target: np.ndarray, cog: np.ndarray, corners: np.ndarray, agent: np.ndarray) -> bool:
    """Whether the agent can get behind the T, between the walls, for a push from `cog` toward `target`."""
    direction = _unit(target - cog)
    start = cog - direction * (_extent(corners, cog, -direction) + pusht.AGENT_RADIUS + 5.0)
    inside = bool(((start > _AGENT_LOW) & (start < _AGENT_HIGH)).all())
    return inside and _orbit_turn(agent, cog, direction)[1]


def _nearest_block_point(point: np.ndarray, position: np.ndarray, angle: float) -> tuple[float, np.ndarray]:
    """Distance from `point` to the T and the unit direction from the T's nearest point to `point`."""
    to_world = pusht.rotation(angle)
    local = to_world.T @ (point - position)
    nearest = np.clip(local, pusht.BLOCK_POLYGONS.min(axis=1), pusht.BLOCK_POLYGONS.max(axis=1))
    away = local - nearest
    distances = np.linalg.norm(away, axis=1)
    closest = int(distances.argmin())
    return float(distances[closest]), to_world @ _unit(away[closest])


class PushTExpert:
    """Push the T block toward random targets from behind, with Gaussian action noise.

    Each target is a point in [100, 400]² for the block's centre of gravity (CoG), with a random lateral
    offset of the push line from the CoG so the block also turns. Per step, from the state alone:
    - push direction d = unit(target − CoG); the push line runs through CoG + offset·n along d (n ⟂ d);
    - on (or near) the push line behind the T, push along d at `push_speed`, closing any gap faster and
      steering back onto the line as the block turns; once pushing, a wider tolerance keeps it pushing;
    - otherwise, if the agent is already past the T's extent along −d, walk straight to the start of
      the push line; if not, step off the T if touching it, then walk around the block on a circle clear
      of it, so that it never drags the block the wrong way.
    A new target is drawn once the CoG is within `reach` px of it or after `patience` steps, only where
    the agent can get behind the block without leaving the walls (a block at a wall is slid along it,
    never shoved into it). Among `candidates` random draws the one most in line with the current push is
    kept: continuing a push needs no walk around the block, which keeps the contact fraction high. Pushing
    slowly (`push_speed`) and far (`min_travel`) also does. With the defaults and action noise 0.2, about
    60 % of the steps of 100-step episodes touch the block (bench/bench_env.py measures it).
    """

    def __init__(self, rng: np.random.Generator, action_noise: float, push_speed: float = 0.3,
                 travel_speed: float = 1.0, max_offset: float = 20.0, line_tolerance: float = 20.0,
                 reach: float = 15.0, patience: int = 40, min_travel: float = 150.0,
                 candidates: int = 6) -> None:
        self.rng, self.action_noise = rng, action_noise
        self.push_speed, self.travel_speed = push_speed, travel_speed
        self.max_offset, self.line_tolerance = max_offset, line_tolerance
        self.reach, self.patience, self.min_travel, self.candidates = reach, patience, min_travel, candidates
        self.reset({})

    def reset(self, obs: dict[str, np.ndarray]) -> None:
        self._target: np.ndarray | None = None
        self._direction = np.zeros(2)
        self._offset = 0.0
        self._steps_on_target = 0
        self._pushing = False

    def _new_target(self, cog: np.ndarray, agent: np.ndarray, corners: np.ndarray) -> None:
        """Draw `candidates` targets at least `min_travel` px away whose push can start between the walls.

        A block against a wall may have no such target in [100, 400]²: it then gets a target `min_travel`
        px away in a random direction whose push can start (along the wall, not into a corner).
        """
        low, high = pusht.START_BLOCK_RANGE
        draws: list[np.ndarray] = []
        for _ in range(100):
            point = self.rng.uniform(low, high, size=2)
            far = math.dist(point, cog) >= self.min_travel
            if far and _push_can_start(point, cog, corners, agent):
                draws.append(point)
                if len(draws) == self.candidates:
                    break
        for _ in range(100):
            if draws:
                break
            heading = self.rng.uniform(-math.pi, math.pi)
            point = cog + self.min_travel * np.array([math.cos(heading), math.sin(heading)])
            inside = ((point > _RESCUE_LOW) & (point < _RESCUE_HIGH)).all()
            if inside and _push_can_start(point, cog, corners, agent):
                draws.append(point)
        draws = draws or [self.rng.uniform(low, high, size=2)]
        current = self._direction if self._target is not None else _unit(cog - agent)
        self._target = max(draws, key=lambda point: float(_unit(point - cog) @ current))
        self._offset = self.rng.uniform(-self.max_offset, self.max_offset)
        self._steps_on_target = 0
        self._pushing = False

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = obs["state"]
        agent, position, angle = state[0:2], state[2:4], float(state[4])
        cog = pusht.block_center_of_gravity(position, angle)
        corners = pusht.block_outline(position, angle).reshape(-1, 2)
        if (self._target is None or math.dist(self._target, cog) < self.reach
                or self._steps_on_target >= self.patience):
            self._new_target(cog, agent, corners)
        self._steps_on_target += 1
        direction = self._direction = _unit(self._target - cog)
        normal = np.array([-direction[1], direction[0]])
        line_point = cog + self._offset * normal
        along, across = float((agent - line_point) @ direction), float((agent - line_point) @ normal)
        contact = _contact_along(line_point, direction, position, angle)
        gap = contact - along  # > 0: behind the contact point on the push line

        tolerance = self.line_tolerance * (2.0 if self._pushing else 1.0)
        self._pushing = abs(across) < tolerance and gap > -tolerance
        if self._pushing:
            steer = _unit(direction - np.clip(across / self.line_tolerance, -1.0, 1.0) * normal)
            move = min(self.travel_speed, self.push_speed + max(gap, 0.0) / 40.0) * steer
        elif along < -_extent(corners, cog, -direction) - pusht.AGENT_RADIUS:
            move = self._go_to(agent, line_point + (contact - 5.0) * direction)
        else:
            move = self._walk_around(agent, position, angle, cog, direction)
        noisy = move + self.action_noise * self.rng.standard_normal(2)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)

    def _go_to(self, agent: np.ndarray, point: np.ndarray) -> np.ndarray:
        """Walk toward `point` (kept between the walls), slowing down over the last 40 px."""
        offset = np.clip(point, _AGENT_LOW, _AGENT_HIGH) - agent
        return self.travel_speed * _unit(offset) * min(1.0, math.hypot(offset[0], offset[1]) / 40.0)

    def _walk_around(self, agent: np.ndarray, position: np.ndarray, angle: float, cog: np.ndarray,
                     direction: np.ndarray) -> np.ndarray:
        """Step straight off the T if touching it (walking around from there would drag the block); else
        head for a point up to 45° further around the clearance circle, the way that stays between the
        walls, toward the side behind the T."""
        distance, away = _nearest_block_point(agent, position, angle)
        if distance < pusht.AGENT_RADIUS + 5.0:
            return self.travel_speed * away
        turn, _ = _orbit_turn(agent, cog, direction)
        turn = math.copysign(min(math.pi / 4, abs(turn)), turn)
        waypoint = cog + _ORBIT_RADIUS * (pusht.rotation(turn) @ _unit(agent - cog))
        return self._go_to(agent, waypoint)
