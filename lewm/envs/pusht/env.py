"""Push-T: a circular agent pushes a T-shaped block on a table (pymunk physics, headless PIL rendering).

Physics follows the reference (stable-worldmodel `envs/pusht`, itself from Diffusion Policy / gym-pusht):
a 512×512 world in pixel coordinates (y down), four static walls, no gravity and zero damping. Zero damping
makes Chipmunk clear every dynamic velocity at each substep, so the block is quasi-static: it moves only
while it is pushed. The agent is a KINEMATIC disc driven by PD velocity control toward
`agent_pos + 100·a`, with 10 substeps of 0.01 s per env step (10 Hz control).

Deliberate differences from the reference:
- Friction. The reference sets `body.friction = 1`, which is only a Python attribute, so its contacts are
  frictionless. Here `friction = 1` is set on the agent and block *shapes* (the walls keep pymunk's
  default 0), so an agent sliding along the block drags and turns it, as a real pusher would.
- Reset draws in which the T crosses a wall or overlaps the agent are redrawn (see `_random_state`).
- `set_state` rebuilds the physics space and holds the agent still during its settling step.

State (7): agent x, y, block x, y (the body origin, i.e. the top centre of the bar, not the centre of
gravity), block angle wrapped to [0, 2π), agent vx, vy.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium
import numpy as np
import pymunk
from PIL import Image, ImageDraw

from lewm.envs._common import action_space, check_reset_options, check_rgb, observation_space

WORLD_SIZE = 512
WALL_SEGMENTS = (((5, 506), (5, 5)), ((5, 5), (506, 5)), ((506, 5), (506, 506)), ((5, 506), (506, 506)))
WALL_RADIUS = 2
WALL_INNER_LOW, WALL_INNER_HIGH = 5 + WALL_RADIUS, 506 - WALL_RADIUS  # the free area between the walls
AGENT_RADIUS = 15
# The T in body coordinates: the bar (120×30) and the stem (30×90) below it.
BLOCK_POLYGONS = np.array([
    [[-60, 0], [60, 0], [60, 30], [-60, 30]],
    [[-15, 30], [15, 30], [15, 120], [-15, 120]],
], dtype=np.float64)
BLOCK_COG = BLOCK_POLYGONS.mean(axis=1).mean(axis=0)  # mean of the two centroids, (0, 45) as the reference
BLOCK_MASS = 1.0
FRICTION = 1.0

ACTION_SCALE = 100.0  # an action is a relative target: agent_pos + 100·a pixels
KP, KV = 100.0, 20.0  # PD gains on the agent velocity
DT = 0.01
SUBSTEPS = 10  # physics steps per env step: 10 Hz control

START_AGENT_RANGE = (50.0, 450.0)
START_BLOCK_RANGE = (100.0, 400.0)

SUCCESS_DISTANCE = 20.0
SUCCESS_ANGLE = math.pi / 9
PREDICATES = ("reference", "block")

BACKGROUND_COLOR = (255, 255, 255)
WALL_COLOR = (211, 211, 211)  # LightGray
AGENT_COLOR = (65, 105, 225)  # RoyalBlue
AGENT_INNER_COLOR = (78, 126, 255)  # the lighter inner disc of the reference's debug draw
AGENT_INNER_RADIUS = 11
BLOCK_COLOR = (142, 163, 183)  # light LightSlateGray
OUTLINE_SHADE = 0.836  # outline = shade·fill: (119, 136, 153) = LightSlateGray for the default fill
OUTLINE_RADIUS = 2
GOAL_COLOR = (144, 238, 144)  # LightGreen
SUPERSAMPLE = 2

_AGENT_TYPE, _BLOCK_TYPE = 1, 2  # pymunk collision types


def angle_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """`a − b` wrapped to (−π, π]."""
    return np.pi - np.mod(np.pi - (np.asarray(a) - np.asarray(b)), 2 * np.pi)


def block_errors(state: np.ndarray, goal_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block position error (px) and |angle error| (rad) between states (..., 7), broadcast together."""
    state, goal_state = np.asarray(state, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    position_error = np.linalg.norm(state[..., 2:4] - goal_state[..., 2:4], axis=-1)
    angle_error = np.abs(angle_difference(state[..., 4], goal_state[..., 4]))
    return position_error, angle_error


def _check_predicate(predicate: str) -> None:
    if predicate not in PREDICATES:
        raise ValueError(f"unknown success predicate {predicate!r} (known: {', '.join(PREDICATES)})")


def success(state: np.ndarray, goal_state: np.ndarray, predicate: str) -> bool | np.ndarray:
    """Whether `state` reaches `goal_state`; vectorised over leading axes (a bool for single states).

    `reference` (DINO-WM, swm): ‖(agent xy, block xy) − goal's‖₂ < 20 jointly and |Δangle| < π/9.
    `block`: the block alone, ‖block xy − goal block xy‖ < 20 and |Δangle| < π/9.
    """
    _check_predicate(predicate)
    state, goal_state = np.asarray(state, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    block_distance, angle_error = block_errors(state, goal_state)
    if predicate == "reference":
        distance = np.linalg.norm(state[..., :4] - goal_state[..., :4], axis=-1)
    else:
        distance = block_distance
    reached = (distance < SUCCESS_DISTANCE) & (angle_error < SUCCESS_ANGLE)
    return bool(reached) if reached.ndim == 0 else reached


def rotation(angle: float) -> np.ndarray:
    """The 2×2 matrix taking block (body) coordinates to world directions at `angle`."""
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[cos, -sin], [sin, cos]])


def block_outline(position: np.ndarray, angle: float) -> np.ndarray:
    """World coordinates (2, 4, 2) of the bar and stem corners for a block at `position`, `angle`."""
    return BLOCK_POLYGONS @ rotation(angle).T + np.asarray(position, dtype=np.float64)


def block_center_of_gravity(position: np.ndarray, angle: float) -> np.ndarray:
    """World coordinates (2,) of the block's centre of gravity (the state holds the body origin)."""
    return rotation(angle) @ BLOCK_COG + np.asarray(position, dtype=np.float64)


def distance_to_block(points: np.ndarray, position: np.ndarray, angle: float) -> np.ndarray | float:
    """Euclidean distance from world points (..., 2) to the T at `position`, `angle` (0 inside it)."""
    local = (np.asarray(points, dtype=np.float64) - np.asarray(position, dtype=np.float64)) @ rotation(angle)
    low, high = BLOCK_POLYGONS.min(axis=1), BLOCK_POLYGONS.max(axis=1)  # the two rectangles' corners
    outside = np.maximum(np.maximum(low - local[..., None, :], local[..., None, :] - high), 0.0)
    return np.linalg.norm(outside, axis=-1).min(axis=-1)


class PushTEnv(gymnasium.Env):
    """Push-T with a dict observation (`pixels`, `state`, `proprio`) and a relative 2-D action.

    `reward` = −‖(Δagent xy, Δblock xy, wrapped Δangle)‖ to the goal (px and rad), 0 without a goal;
    `terminated` = `success(state, goal, success_predicate)` once a goal is set; `truncated` after
    `max_steps` steps. `info["n_contacts"]` counts agent–block contact points over the step's substeps.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    state_names = ("agent_x", "agent_y", "block_x", "block_y", "block_angle", "agent_vx", "agent_vy")
    proprio_names = ("agent_x", "agent_y", "agent_vx", "agent_vy")
    action_dim = 2

    def __init__(self, image_size: int = 64, max_steps: int = 200, render_goal: bool = False,
                 success_predicate: str = "reference") -> None:
        if image_size < 1 or max_steps < 1:
            raise ValueError(f"image_size and max_steps must be positive, got {image_size}, {max_steps}")
        _check_predicate(success_predicate)
        self.image_size, self.max_steps = image_size, max_steps
        self.render_goal, self.success_predicate = render_goal, success_predicate
        self.render_mode = "rgb_array"
        self.action_space = action_space(self.action_dim)
        self.observation_space = observation_space(image_size, len(self.state_names), len(self.proprio_names))
        self._canvas_size = SUPERSAMPLE * image_size
        self._scale = self._canvas_size / WORLD_SIZE
        self._background = self._draw_background()
        self.set_block_color(BLOCK_COLOR)
        self.goal_state: np.ndarray | None = None
        self._steps = 0
        self._contacts = 0
        self._build_space()

    # ---------------------------------------------------------------- physics
    def _build_space(self) -> None:
        """A fresh pymunk space with the walls, the agent (at rest at the origin) and the block."""
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        space.damping = 0.0
        walls = [pymunk.Segment(space.static_body, a, b, WALL_RADIUS) for a, b in WALL_SEGMENTS]

        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent_shape = pymunk.Circle(agent, AGENT_RADIUS)
        agent_shape.friction, agent_shape.collision_type = FRICTION, _AGENT_TYPE

        # The reference's moment is twice the bar's (an upstream copy-paste); kept for parity.
        block = pymunk.Body(BLOCK_MASS, 2 * pymunk.moment_for_poly(BLOCK_MASS, BLOCK_POLYGONS[0].tolist()))
        block_shapes = [pymunk.Poly(block, polygon.tolist()) for polygon in BLOCK_POLYGONS]
        for shape in block_shapes:
            shape.friction, shape.collision_type = FRICTION, _BLOCK_TYPE
        block.center_of_gravity = tuple(BLOCK_COG)

        space.add(*walls, agent, agent_shape, block, *block_shapes)
        space.on_collision(_AGENT_TYPE, _BLOCK_TYPE, post_solve=self._count_contacts)
        self._space, self._agent, self._block = space, agent, block

    def _count_contacts(self, arbiter: pymunk.Arbiter, space: pymunk.Space, data: Any) -> None:
        self._contacts += len(arbiter.contact_point_set.points)

    def _advance(self, action: np.ndarray) -> None:
        """One env step's physics: PD control of the agent toward `agent_pos + 100·a` over the substeps."""
        ax, ay = np.clip(np.asarray(action, dtype=np.float64).reshape(self.action_dim), -1.0, 1.0).tolist()
        agent = self._agent
        target_x, target_y = agent.position.x + ACTION_SCALE * ax, agent.position.y + ACTION_SCALE * ay
        self._contacts = 0
        for _ in range(SUBSTEPS):  # PD control on the velocity (plain floats: Vec2d arithmetic is slow)
            (x, y), (vx, vy) = agent.position, agent.velocity
            agent.velocity = (vx + (KP * (target_x - x) - KV * vx) * DT,
                              vy + (KP * (target_y - y) - KV * vy) * DT)
            self._space.step(DT)

    def _place(self, state: np.ndarray) -> None:
        """Teleport the physics to `state` (7,); see `set_state`."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (len(self.state_names),):
            raise ValueError(f"Push-T state must have shape (7,), got {state.shape}")
        self._build_space()
        agent, block = self._agent, self._block
        agent.position = tuple(state[0:2])
        block.angle = float(state[4])
        block.position = tuple(state[2:4])
        self._space.step(DT)
        agent.velocity = tuple(state[5:7])

    def simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The state (7,) reached from `state` after the raw actions `(T, 2)`, without rendering: what the
        simulator oracle plans with (~40 µs per step instead of ~110 µs rendered). Moves this env's physics
        (the oracle keeps an env of its own); the step counter and goal are untouched."""
        self._place(state)
        for action in actions:
            self._advance(action)
        return self._state()

    def _state(self) -> np.ndarray:
        agent, block = self._agent, self._block
        return np.array([agent.position.x, agent.position.y, block.position.x, block.position.y,
                         block.angle % (2 * math.pi), agent.velocity.x, agent.velocity.y])

    def _observation(self) -> dict[str, np.ndarray]:
        state = self._state()
        return {"pixels": self.render(), "state": state, "proprio": state[[0, 1, 5, 6]]}

    def _random_state(self) -> np.ndarray:
        """Agent ~ U[50, 450]², block ~ U[100, 400]², angle ~ U[−π, π), at rest; from `self.np_random`.

        Unlike the reference, draws where the T would cross a wall or overlap the agent are rejected: the
        overlap would be pushed apart over the first steps, moving the block with no push.
        """
        while True:
            agent = self.np_random.uniform(*START_AGENT_RANGE, size=2)
            block = self.np_random.uniform(*START_BLOCK_RANGE, size=2)
            angle = self.np_random.uniform(-math.pi, math.pi)
            corners = block_outline(block, angle)
            inside_walls = corners.min() > WALL_INNER_LOW and corners.max() < WALL_INNER_HIGH
            if inside_walls and distance_to_block(agent, block, angle) > AGENT_RADIUS:
                return np.array([*agent, *block, angle, 0.0, 0.0])

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode from a random state, or from `options["state"]`; `options["goal_state"]` sets
        the goal (otherwise the episode has none)."""
        super().reset(seed=seed)
        options = check_reset_options(options)
        self._steps = 0
        self.goal_state = None
        if "goal_state" in options:
            self.set_goal_state(options["goal_state"])
        state = options["state"] if "state" in options else self._random_state()
        observation = self.set_state(state)
        return observation, self._info(observation["state"], contacts=0)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        self._advance(action)
        self._steps += 1
        observation = self._observation()
        state, info = observation["state"], self._info(observation["state"], self._contacts)
        truncated = self._steps >= self.max_steps
        return observation, self._reward(state), info["success"], truncated, info

    def _reward(self, state: np.ndarray) -> float:
        if self.goal_state is None:
            return 0.0
        error = state[:5] - self.goal_state[:5]
        error[4] = angle_difference(state[4], self.goal_state[4])
        return -float(np.linalg.norm(error))

    def _info(self, state: np.ndarray, contacts: int) -> dict[str, Any]:
        reached = self.goal_state is not None and success(state, self.goal_state, self.success_predicate)
        return {"n_contacts": contacts, "success": reached}

    # ---------------------------------------------------------------- state and goal
    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Teleport to `state` (7,) (also mid-episode) and return the observation there.

        The physics space is rebuilt, so no cached contact or position-correction velocity from before
        the teleport acts afterwards. Order as the reference: agent, block angle, then block position
        (setting the angle after the position would rotate about the centre of gravity and shift the
        origin). One 0.01 s physics step then settles the scene (it pushes apart an overlap, if any);
        unlike the reference, the agent is held still during it, so a consistent state reads back exactly.
        """
        self._place(state)
        return self._observation()

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        """Set the goal (7,) used by `reward`, `terminated` and the optional goal overlay."""
        goal_state = np.asarray(goal_state, dtype=np.float64)
        if goal_state.shape != (len(self.state_names),):
            raise ValueError(f"Push-T goal state must have shape (7,), got {goal_state.shape}")
        self.goal_state = goal_state.copy()

    # ---------------------------------------------------------------- rendering
    def set_block_color(self, rgb: tuple[int, int, int]) -> None:
        """Change the block's fill colour (its outline is a darker shade), e.g. for violation-of-expectation
        tests; takes effect from the next rendered frame."""
        self.block_color = check_rgb(rgb, "block colour")
        self.block_outline_color = tuple(round(OUTLINE_SHADE * c) for c in self.block_color)

    def _to_canvas(self, points: np.ndarray) -> list[tuple[float, float]]:
        """World px → canvas coordinates (PIL puts integer coordinates at pixel centres)."""
        return [tuple(p) for p in (np.asarray(points) * self._scale - 0.5).tolist()]

    def _draw_background(self) -> Image.Image:
        canvas = Image.new("RGB", (self._canvas_size, self._canvas_size), BACKGROUND_COLOR)
        draw = ImageDraw.Draw(canvas)
        width = max(1, round(2 * WALL_RADIUS * self._scale))
        for segment in WALL_SEGMENTS:
            draw.line(self._to_canvas(np.array(segment)), fill=WALL_COLOR, width=width)
        return canvas

    def _draw_block(self, draw: ImageDraw.ImageDraw, position: np.ndarray, angle: float,
                    fill: tuple[int, int, int], outline: tuple[int, int, int]) -> None:
        width = max(1, round(2 * OUTLINE_RADIUS * self._scale))
        for polygon in block_outline(position, angle):
            draw.polygon(self._to_canvas(polygon), fill=fill, outline=outline, width=width)

    def _draw_disc(self, draw: ImageDraw.ImageDraw, center: tuple[float, float], radius: float,
                   fill: tuple[int, int, int]) -> None:
        (x, y), r = self._to_canvas(np.array([center]))[0], radius * self._scale
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)

    def render(self) -> np.ndarray:
        """The current frame, uint8 (image_size, image_size, 3): drawn at 2× and box-downsampled."""
        canvas = self._background.copy()
        draw = ImageDraw.Draw(canvas)
        if self.render_goal and self.goal_state is not None:
            self._draw_block(draw, self.goal_state[2:4], self.goal_state[4], GOAL_COLOR, GOAL_COLOR)
        block, agent = self._block, self._agent
        self._draw_block(draw, np.array(block.position), block.angle, self.block_color,
                         self.block_outline_color)
        self._draw_disc(draw, agent.position, AGENT_RADIUS, AGENT_COLOR)
        self._draw_disc(draw, agent.position, AGENT_INNER_RADIUS, AGENT_INNER_COLOR)
        return np.array(canvas.reduce(SUPERSAMPLE))
