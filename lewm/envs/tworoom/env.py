"""Two-Room: a point agent navigates between two rooms joined by one door (numpy dynamics and rendering).

Geometry and dynamics follow the reference (stable-worldmodel `envs/two_room/env.py`, whose constants are a
64-px original scaled by 3.5): a 224×224 world in pixel coordinates (y down), a 14-px border, a vertical
wall at x = 112 of thickness 10 with one door centred at y = 49 (half-extent 14), an agent of radius 7
moving `speed · clip(a, −1, 1)` = up to 5 px per step (10 Hz nominal). There is no physics engine: a step
moves the agent, clamps it inside the border (its disc stays inside), and if the move would bring the
disc into the wall outside the door, x is clamped back to the edge of the *wall band* (the wall widened by
the radius: x ∈ [100, 124]) with 0.5 px of push-back. Only the agent's centre counts for the door: it passes
while |y − 49| ≤ 14 + 1.75 (the reference's margin), so the disc may overlap the door posts a little.

Rendering: white background, black border lines and wall, white door gap; the agent is a red Gaussian blob
exp(−d²/2r²) alpha-blended over the background; a goal image is the agent drawn at the goal position.

Deliberate differences from the reference:
- The agent start and the episode target are both drawn uniformly in the rooms' reachable area
  ([21, 203]² outside the wall band); the reference draws both in [14, 209]² (rejecting only the agent in
  the band), so either can start beyond the border clamp and the target can lie in the wall.
- The blob's alpha peaks at 1 at the agent's exact position; the reference divides by the largest sampled
  value, which makes the blob's brightness depend on the sub-pixel position.
- Blending rounds to the nearest integer (the reference truncates, turning every pixel the blob's tail
  touches from 255 to 254).
- Any `image_size` samples the 224-px world at the output pixel centres; the static background is
  anti-aliased by averaging sub-pixel samples (at 224 px it equals the reference's pixel for pixel).

State (2): agent x, y. Observations also hold `target` (2,): where the data-collection expert heads (the
goal once one is set, else a point drawn at reset). `simulate(state, actions)` rolls the same dynamics out
from a state without rendering (what the simulator oracle plans with).
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium
import numpy as np
from gymnasium import spaces

from lewm.envs._common import action_space, check_reset_options, check_rgb, observation_space

WORLD_SIZE = 224
BORDER = 14  # the free area is [BORDER, WORLD_SIZE − BORDER]²
BORDER_LINE = 4  # black border lines just outside the free area, this thick
WALL_X, WALL_HALF = 112.0, 5.0  # the central vertical wall: x ∈ [107, 117]
DOOR_Y, DOOR_HALF = 49.0, 14.0  # the door gap in the wall: y ∈ [35, 63]
DOOR_MARGIN = 1.75  # the agent's centre passes while |y − DOOR_Y| ≤ DOOR_HALF + DOOR_MARGIN
AGENT_RADIUS = 7.0  # collision radius, and the std of the rendered Gaussian blob
SPEED = 5.0  # px per step at |a| = 1
WALL_PUSHBACK = 0.5  # a blocked agent is put this far outside the wall band

# Where the agent's centre can be: inside the border, and outside the wall band unless in the doorway.
AGENT_LOW, AGENT_HIGH = BORDER + AGENT_RADIUS, WORLD_SIZE - BORDER - AGENT_RADIUS  # 21, 203
BAND_LOW, BAND_HIGH = WALL_X - WALL_HALF - AGENT_RADIUS, WALL_X + WALL_HALF + AGENT_RADIUS  # 100, 124
DOOR_LOW, DOOR_HIGH = DOOR_Y - DOOR_HALF - DOOR_MARGIN, DOOR_Y + DOOR_HALF + DOOR_MARGIN  # 33.25, 64.75
DOOR_CENTER = np.array([WALL_X, DOOR_Y])

SUCCESS_DISTANCE = 16.0
PREDICATES = ("reference", "route_valid")

BACKGROUND_COLOR = (255, 255, 255)
WALL_COLOR = (0, 0, 0)
AGENT_COLOR = (255, 0, 0)
SUPERSAMPLE = 4  # sub-pixel samples per axis when drawing the static background
BLOB_EXTENT = 4.0 * AGENT_RADIUS  # beyond 4σ the blob's alpha (< 3.4e-4) changes no pixel after rounding
# A pixel of the reference's 224-px canvas is drawn when its centre lies in a closed integer interval, so
# the drawn shape covers half a pixel more on each side.
HALF_PIXEL = 0.5


def random_free_position(rng: np.random.Generator) -> np.ndarray:
    """A position (2,) uniform over the two rooms: inside the border and outside the wall band (never in
    the doorway either, as the reference's start draw), from `rng`."""
    while True:
        position = rng.uniform(AGENT_LOW, AGENT_HIGH, size=2)
        if not BAND_LOW <= position[0] <= BAND_HIGH:
            return position


def crosses_wall(start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """Whether the straight segment start → end (..., 2) passes through the wall outside the door.

    The segment's part inside the wall's thickness (|x − 112| ≤ 5) is a straight piece, so it stays in the
    doorway iff both its ends do (|y − 49| ≤ 15.75, the door the dynamics let the agent's centre through).
    A segment wholly on one side of the wall never crosses it.
    """
    start, end = np.asarray(start, dtype=np.float64), np.asarray(end, dtype=np.float64)
    (x0, y0), (x1, y1) = np.moveaxis(start, -1, 0), np.moveaxis(end, -1, 0)
    low, high = WALL_X - WALL_HALF, WALL_X + WALL_HALF
    touches = (np.maximum(x0, x1) >= low) & (np.minimum(x0, x1) <= high)
    dx, dy = x1 - x0, y1 - y0
    vertical = dx == 0
    safe_dx = np.where(vertical, 1.0, dx)
    # Segment parameters where it enters and leaves the wall's x range (the whole segment if vertical).
    t_enter = np.where(vertical, 0.0, (np.clip(x0, low, high) - x0) / safe_dx)
    t_leave = np.where(vertical, 1.0, (np.clip(x1, low, high) - x0) / safe_dx)
    y_enter, y_leave = y0 + t_enter * dy, y0 + t_leave * dy
    in_door = ((y_enter >= DOOR_LOW) & (y_enter <= DOOR_HIGH)
               & (y_leave >= DOOR_LOW) & (y_leave <= DOOR_HIGH))
    return touches & ~in_door


def agent_distance(state: np.ndarray, goal_state: np.ndarray) -> np.ndarray:
    """Distance (px) between the agent positions of states (..., 2), broadcast together."""
    state, goal_state = np.asarray(state, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    return np.linalg.norm(state[..., 0:2] - goal_state[..., 0:2], axis=-1)


def _check_predicate(predicate: str) -> None:
    if predicate not in PREDICATES:
        raise ValueError(f"unknown success predicate {predicate!r} (known: {', '.join(PREDICATES)})")


def success(state: np.ndarray, goal_state: np.ndarray, predicate: str) -> bool | np.ndarray:
    """Whether `state` reaches `goal_state`; vectorised over leading axes (a bool for single states).

    `reference` (the paper, swm): ‖agent − goal‖ < 16 px, the headline.
    `route_valid`: within 16 px AND the straight segment agent → goal does not pass through the wall
    outside the door (same room, or a segment through the doorway). The endpoint test alone would accept
    an agent on the wrong side of the wall within 16 px of the goal, which is no real reach. With this
    world's dynamics the two rooms' reachable areas are ≥ 25 px apart across the wall outside the door, so
    the predicates differ only for states set by hand or past a door post's corner (measured: 0.2 % of the
    pairs of expert-data states within 16 px, and none of the dataset's 25-step start/goal pairs).
    """
    _check_predicate(predicate)
    state, goal_state = np.asarray(state, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    reached = agent_distance(state, goal_state) < SUCCESS_DISTANCE
    if predicate == "route_valid":
        reached = reached & ~crosses_wall(state[..., 0:2], goal_state[..., 0:2])
    return bool(reached) if reached.ndim == 0 else reached


class TwoRoomEnv(gymnasium.Env):
    """Two-Room with a dict observation (`pixels`, `state`, `proprio`, `target`) and a 2-D velocity action.

    `reward` = −‖agent − goal‖ (px), 0 without a goal; `terminated` = `success(state, goal,
    success_predicate)` once a goal is set; `truncated` after `max_steps` steps. `info["n_contacts"]` is 1
    when the border or the wall cut this step's move short, else 0.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}
    state_names = ("agent_x", "agent_y")
    proprio_names = ("agent_x", "agent_y")
    action_dim = 2

    def __init__(self, image_size: int = 64, max_steps: int = 100,
                 success_predicate: str = "reference") -> None:
        if image_size < 1 or max_steps < 1:
            raise ValueError(f"image_size and max_steps must be positive, got {image_size}, {max_steps}")
        _check_predicate(success_predicate)
        self.image_size, self.max_steps, self.success_predicate = image_size, max_steps, success_predicate
        self.render_mode = "rgb_array"
        self.action_space = action_space(self.action_dim)
        self.observation_space = observation_space(
            image_size, len(self.state_names), len(self.proprio_names),
            target=spaces.Box(-np.inf, np.inf, (2,), dtype=np.float64),
        )
        # World coordinates of the output pixel centres (pixel i of a 224-px frame is centred at i).
        self._pixel_centers = (np.arange(image_size) + 0.5) * (WORLD_SIZE / image_size) - 0.5
        self._background = self._draw_background()
        self.set_agent_color(AGENT_COLOR)
        self.goal_state: np.ndarray | None = None
        self._agent = np.array([AGENT_LOW, AGENT_LOW])
        self._target = np.array([AGENT_LOW, AGENT_LOW])
        self._steps = 0

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode: the agent at `options["state"]` or uniform in the rooms, then the target at
        `options["goal_state"]` (which also becomes the goal) or uniform in the rooms (no goal); all draws
        from `self.np_random`."""
        super().reset(seed=seed)
        options = check_reset_options(options)
        self._steps = 0
        self.goal_state = None
        state = options["state"] if "state" in options else random_free_position(self.np_random)
        observation = self.set_state(state)
        if "goal_state" in options:
            self.set_goal_state(options["goal_state"])
        else:
            self._target = random_free_position(self.np_random)
        observation["target"] = self._target.copy()
        return observation, self._info(contacts=0)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        contacts = self._advance(action)
        self._steps += 1
        observation = self._observation()
        info = self._info(contacts=contacts)
        truncated = self._steps >= self.max_steps
        return observation, self._reward(), info["success"], truncated, info

    def simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The state (2,) reached from `state` after the raw actions `(T, 2)`, without rendering: what the
        simulator oracle plans with. Moves this env's agent (the oracle keeps an env of its own); the step
        counter and goal are untouched."""
        self._place(state)
        for action in actions:
            self._advance(action)
        return self._agent.copy()

    # ---------------------------------------------------------------- dynamics
    def _advance(self, action: np.ndarray) -> int:
        """One env step's move of the agent by `SPEED · clip(a, −1, 1)`, clamped inside the border and
        stopped at the wall band outside the doorway (see the module docstring); returns the step's wall
        hits: 1 when the border or the wall cut the move short, else 0."""
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise ValueError(f"Two-Room action must have shape (2,), got {action.shape}")
        ax, ay = np.clip(action, -1.0, 1.0).tolist()
        x0, y0 = self._agent.tolist()
        wanted_x, wanted_y = x0 + SPEED * ax, y0 + SPEED * ay
        x = min(max(wanted_x, AGENT_LOW), AGENT_HIGH)
        y = min(max(wanted_y, AGENT_LOW), AGENT_HIGH)
        if not DOOR_LOW <= y <= DOOR_HIGH:  # outside the doorway the wall band is closed
            if x0 < WALL_X and x > BAND_LOW:
                x = BAND_LOW - WALL_PUSHBACK
            elif x0 >= WALL_X and x < BAND_HIGH:
                x = BAND_HIGH + WALL_PUSHBACK
        self._agent = np.array([x, y])
        return int(x != wanted_x or y != wanted_y)

    def _place(self, state: np.ndarray) -> None:
        """Put the agent at `state` (2,) as given; see `set_state`."""
        self._agent = self._checked_position(state, "state")

    def _observation(self) -> dict[str, np.ndarray]:
        return {"pixels": self.render(), "state": self._agent.copy(), "proprio": self._agent.copy(),
                "target": self._target.copy()}

    def _reward(self) -> float:
        return 0.0 if self.goal_state is None else -float(agent_distance(self._agent, self.goal_state))

    def _info(self, contacts: int) -> dict[str, Any]:
        goal = self.goal_state
        reached = goal is not None and success(self._agent, goal, self.success_predicate)
        return {"n_contacts": contacts, "success": reached}

    # ---------------------------------------------------------------- state and goal
    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Put the agent at `state` (2,) (also mid-episode) and return the observation there; the position
        is taken as given (no clamping), so it reads back exactly."""
        self._place(state)
        return self._observation()

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        """Set the goal (2,) used by `reward` and `terminated`; it is also the target the expert heads to
        (the reference's goal and target are one position)."""
        self.goal_state = self._checked_position(goal_state, "goal state")
        self._target = self.goal_state.copy()

    @staticmethod
    def _checked_position(position: np.ndarray, what: str) -> np.ndarray:
        position = np.asarray(position, dtype=np.float64)
        if position.shape != (2,):
            raise ValueError(f"Two-Room {what} must have shape (2,) (agent x, y), got {position.shape}")
        if not np.isfinite(position).all():
            raise ValueError(f"Two-Room {what} must be finite, got {position}")
        return position.copy()

    # ---------------------------------------------------------------- rendering
    def set_agent_color(self, rgb: tuple[int, int, int]) -> None:
        """Change the agent's colour, e.g. for violation-of-expectation tests; takes effect from the next
        rendered frame."""
        self.agent_color = check_rgb(rgb, "agent colour")
        self._agent_rgb = np.array(self.agent_color, dtype=np.float32)

    def _draw_background(self) -> np.ndarray:
        """The static scene, uint8 (H, W, 3): each pixel averages SUPERSAMPLE² samples of its footprint."""
        size, step = self.image_size, WORLD_SIZE / self.image_size
        offsets = ((np.arange(SUPERSAMPLE) + 0.5) / SUPERSAMPLE - 0.5) * step
        samples = (self._pixel_centers[:, None] + offsets[None, :]).ravel()  # (size·SUPERSAMPLE,)
        x, y = samples[None, :], samples[:, None]

        def band(coordinate: np.ndarray, low: float, high: float) -> np.ndarray:
            return (coordinate >= low - HALF_PIXEL) & (coordinate <= high + HALF_PIXEL)

        line_low, line_high = BORDER - BORDER_LINE, WORLD_SIZE - BORDER  # first pixel of each line
        border = (band(x, line_low, BORDER - 1) | band(x, line_high, line_high + BORDER_LINE - 1)
                  | band(y, line_low, BORDER - 1) | band(y, line_high, line_high + BORDER_LINE - 1))
        door = band(y, DOOR_Y - DOOR_HALF, DOOR_Y + DOOR_HALF)
        wall = band(x, WALL_X - WALL_HALF, WALL_X + WALL_HALF) & ~door
        covered = (border | wall).reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))[..., None]
        background, wall_color = np.array(BACKGROUND_COLOR), np.array(WALL_COLOR)
        return np.rint(background + covered * (wall_color - background)).astype(np.uint8)

    def render(self) -> np.ndarray:
        """The current frame, uint8 (image_size, image_size, 3): the agent's blob blended over the static
        background, only within BLOB_EXTENT of the agent (farther it changes no pixel)."""
        frame = self._background.copy()
        centers = self._pixel_centers
        x, y = self._agent.tolist()
        cols = slice(*np.searchsorted(centers, [x - BLOB_EXTENT, x + BLOB_EXTENT], side="right"))
        rows = slice(*np.searchsorted(centers, [y - BLOB_EXTENT, y + BLOB_EXTENT], side="right"))
        scale = -0.5 / AGENT_RADIUS**2
        alpha_x = np.exp(scale * (centers[cols] - x) ** 2).astype(np.float32)
        alpha_y = np.exp(scale * (centers[rows] - y) ** 2).astype(np.float32)
        alpha = (alpha_y[:, None] * alpha_x[None, :])[..., None]
        background = frame[rows, cols].astype(np.float32)
        frame[rows, cols] = np.rint(background + alpha * (self._agent_rgb - background))
        return frame
