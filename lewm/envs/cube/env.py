"""Cube: single-cube pick and place with a floating parallel gripper (MuJoCo physics and rendering).

The task and its action follow OGBench's `cube-single` (spec §5); the scene is our own (scene.py).
An action in [−1, 1]^5 is scaled by (0.05 m, 0.05 m, 0.05 m, 0.3 rad, 1):
- Δ xyz of the end effector relative to the MEASURED pinch site (not to the last command), the target
  clipped to the workspace [0.25, 0.6] × [−0.35, 0.35] × [0.02, 0.35] m;
- Δ yaw relative to the measured hand yaw, the target clipped to [−π, π];
- Δ gripper closure (0 open, 1 closed; +1 closes) relative to the measured closure (left finger slide /
  0.04 m), clipped to [0, 1]. As in OGBench, an action of 0 commands the closure the fingers already
  have, so a grasp holds only while the action keeps closing.
One env step is 25 physics steps of 2 ms (20 Hz control), during which the hand's servo targets move
from the measured pose to the new target along a minimum-jerk path. Success (OGBench's): the cube's
centre within 0.04 m of the goal's.

State (26), in this order:
- positions: hand_x, hand_y, hand_z (the pinch site, m), hand_yaw_angle (rad, in [−π, π]), finger_left,
  finger_right (each finger's inward slide, 0 … 0.04 m), cube_x, cube_y, cube_z (m), cube_qw, cube_qx,
  cube_qy, cube_qz (the cube's unit quaternion);
- cube_yaw_angle: the cube's yaw modulo its quarter-turn symmetry, in [−π/4, π/4) (see `cube_yaw`);
  derived from the quaternion, read by the predicates and probes, ignored by `set_state`;
- velocities: hand_vx, hand_vy, hand_vz (m/s), hand_yaw_rate (rad/s), finger_left_rate,
  finger_right_rate (m/s), cube_vx, cube_vy, cube_vz (m/s, world frame), cube_spin_x, cube_spin_y,
  cube_spin_z (rad/s, the cube's own frame: MuJoCo's free-joint velocity).
This is the whole physical state (MuJoCo's qpos and qvel), so `set_state` restores the scene exactly.
The proprioception is the hand's own columns (positions and velocities, 12). `simulate(state, actions)`
rolls the same physics out from a state without rendering (what the simulator oracle plans with).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium
import mujoco
import numpy as np

from lewm.envs._common import action_space, check_reset_options, check_rgb, observation_space
from lewm.envs._mujoco import offscreen_renderer
from lewm.envs.cube import scene

ACTION_SCALE = np.array([0.05, 0.05, 0.05, 0.3, 1.0])
WORKSPACE_LOW = np.array([0.25, -0.35, 0.02])
WORKSPACE_HIGH = np.array([0.6, 0.35, 0.35])
YAW_LIMIT = math.pi

CUBE_LOW, CUBE_HIGH = np.array([0.3, -0.3]), np.array([0.55, 0.3])  # cube (and goal) xy sampling
HAND_START_LOW = np.array([0.25, -0.35, 0.08])  # where reset puts the hand: above the table, in view
HAND_START_HIGH = np.array([0.6, 0.35, 0.2])

SUCCESS_DISTANCE = 0.04  # m, OGBench's
SUCCESS_YAW = math.pi / 9  # the `pose` predicate's yaw tolerance
QUARTER_TURN = math.pi / 2  # the cube looks the same after a quarter turn about any axis
PREDICATES = ("reference", "pose")

STATE_NAMES = (
    "hand_x", "hand_y", "hand_z", "hand_yaw_angle", "finger_left", "finger_right",
    "cube_x", "cube_y", "cube_z", "cube_qw", "cube_qx", "cube_qy", "cube_qz",
    "cube_yaw_angle",
    "hand_vx", "hand_vy", "hand_vz", "hand_yaw_rate", "finger_left_rate", "finger_right_rate",
    "cube_vx", "cube_vy", "cube_vz", "cube_spin_x", "cube_spin_y", "cube_spin_z",
)
_NQ = 13  # MuJoCo's qpos size: hand 4 + fingers 2 + cube 7 (qvel: 4 + 2 + 6)
HAND = slice(0, 3)
HAND_YAW, FINGER_LEFT = 3, 4
CUBE = slice(6, 9)
CUBE_QUAT = slice(9, 13)
CUBE_YAW = 13
VELOCITIES = slice(14, 26)
FINGER_LEFT_RATE = 18
PROPRIO = (*range(0, 6), *range(14, 20))  # the hand's own columns


def _minimum_jerk(steps: int, substeps: int) -> np.ndarray:
    """The fraction of the way (substeps,) along a minimum-jerk path that lasts `steps` substeps, then 1."""
    t = np.minimum(np.arange(1, substeps + 1) / steps, 1.0)
    return t**3 * (10 - 15 * t + 6 * t**2)


# The hand servos follow their target along a minimum-jerk path over the first 22 of the 25 physics
# steps (and settle in the last 3) instead of jumping to it: the peak acceleration of a full 5-cm step
# drops from ~500 to ~150 m/s², which the grasp's friction holds (a jump makes a held cube slip).
_RAMP = _minimum_jerk(22, scene.SUBSTEPS)


def quaternion_matrix(quaternion: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of unit quaternions (..., 4) in MuJoCo's (w, x, y, z) order; column
    i is body axis i in world coordinates."""
    w, x, y, z = np.moveaxis(np.asarray(quaternion, dtype=np.float64), -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ], axis=-2)


def fold_yaw(angle: np.ndarray | float) -> np.ndarray | float:
    """An angle modulo the cube's quarter-turn symmetry, in [−π/4, π/4)."""
    return np.mod(np.asarray(angle) + QUARTER_TURN / 2, QUARTER_TURN) - QUARTER_TURN / 2


def cube_yaw(quaternion: np.ndarray) -> np.ndarray | float:
    """The cube's yaw modulo a quarter turn, in [−π/4, π/4), vectorised over leading axes.

    The cube's axis nearest the vertical is "up", whichever face it rests on; the heading of either
    other axis in the horizontal plane is the yaw. The four side faces look alike, so the yaw is defined
    modulo π/2 (any other axis gives the same value); a tilted cube's axes are projected.
    """
    rotation = quaternion_matrix(quaternion)
    up = np.argmax(np.abs(rotation[..., 2, :]), axis=-1)
    side = np.take_along_axis(rotation, ((up + 1) % 3)[..., None, None], axis=-1)[..., 0]
    return fold_yaw(np.arctan2(side[..., 1], side[..., 0]))


def yaw_quaternion(yaw: float) -> np.ndarray:
    """The unit quaternion (w, x, y, z) of a rotation by `yaw` about the vertical."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def cube_errors(state: np.ndarray, goal_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cube position error (m) and |yaw error| modulo a quarter turn (rad, ≤ π/4) between states
    (..., 26), broadcast together."""
    state, goal_state = np.asarray(state, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    position_error = np.linalg.norm(state[..., CUBE] - goal_state[..., CUBE], axis=-1)
    yaw_error = np.abs(fold_yaw(state[..., CUBE_YAW] - goal_state[..., CUBE_YAW]))
    return position_error, yaw_error


def _check_predicate(predicate: str) -> None:
    if predicate not in PREDICATES:
        raise ValueError(f"unknown success predicate {predicate!r} (known: {', '.join(PREDICATES)})")


def success(state: np.ndarray, goal_state: np.ndarray, predicate: str) -> bool | np.ndarray:
    """Whether `state` reaches `goal_state`; vectorised over leading axes (a bool for single states).

    `reference` (OGBench's): ‖cube xyz − goal cube xyz‖ ≤ 0.04 m; the hand does not count.
    `pose`: that, and the cube's yaw within π/9 of the goal's modulo a quarter turn.
    """
    _check_predicate(predicate)
    position_error, yaw_error = cube_errors(state, goal_state)
    reached = position_error <= SUCCESS_DISTANCE
    if predicate == "pose":
        reached = reached & (yaw_error < SUCCESS_YAW)
    return bool(reached) if reached.ndim == 0 else reached


class CubeEnv(gymnasium.Env):
    """Single-cube pick and place with a dict observation (`pixels`, `state`, `proprio`) and OGBench's
    5-D relative end-effector action (see the module docstring).

    `reward` = −‖cube xyz − goal cube xyz‖ (m), 0 without a goal; `terminated` = `success(state, goal,
    success_predicate)` once a goal is set; `truncated` after `max_steps` steps. `info["n_contacts"]`
    counts gripper–cube contact points (pads, palm or wrist) summed over the step's 25 physics steps.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}
    state_names = STATE_NAMES
    proprio_names = tuple(STATE_NAMES[i] for i in PROPRIO)
    action_dim = 5

    def __init__(self, image_size: int = 64, max_steps: int = 200,
                 success_predicate: str = "reference") -> None:
        if image_size < 1 or max_steps < 1:
            raise ValueError(f"image_size and max_steps must be positive, got {image_size}, {max_steps}")
        _check_predicate(success_predicate)
        self.image_size, self.max_steps, self.success_predicate = image_size, max_steps, success_predicate
        self.render_mode = "rgb_array"
        self.action_space = action_space(self.action_dim)
        self.observation_space = observation_space(image_size, len(self.state_names), len(self.proprio_names))
        self.model = mujoco.MjModel.from_xml_string(scene.MJCF)
        self.data = mujoco.MjData(self.model)
        self._renderer = offscreen_renderer(self.model, image_size)
        self._cube_geom = self.model.geom("cube").id
        self._grip_sensor = self.model.sensor("grip").adr[0]
        self.set_cube_color(scene.CUBE_COLOR)
        self.goal_state: np.ndarray | None = None
        self._steps = 0
        mujoco.mj_forward(self.model, self.data)

    # ---------------------------------------------------------------- physics
    def _advance(self, action: np.ndarray) -> int:
        """One env step's physics: the hand's servo targets moved from the measured pose (qpos) to the
        action's target along `_RAMP` and the gripper's closure command set, over the 25 physics steps;
        returns the gripper–cube contact points summed over them. The kinematics (body poses) are left one
        physics step behind: each `mj_step` recomputes them from qpos first, so only a frame needs an
        `mj_forward` after it."""
        delta = np.clip(action, -1.0, 1.0) * ACTION_SCALE
        qpos = self.data.qpos
        start = qpos[:FINGER_LEFT].copy()  # the measured hand pose: pinch xyz and yaw
        target = np.append(np.clip(start[:3] + delta[:3], WORKSPACE_LOW, WORKSPACE_HIGH),
                           np.clip(start[3] + delta[3], -YAW_LIMIT, YAW_LIMIT))
        closure = np.clip(qpos[FINGER_LEFT] / scene.FINGER_TRAVEL, 0.0, 1.0)
        self.data.ctrl[4] = scene.FINGER_TRAVEL * np.clip(closure + delta[4], 0.0, 1.0)
        contacts = 0
        for fraction in _RAMP:
            self.data.ctrl[:4] = start + fraction * (target - start)
            mujoco.mj_step(self.model, self.data)
            contacts += int(self.data.sensordata[self._grip_sensor])
        return contacts

    def _place(self, state: np.ndarray) -> None:
        """Put the simulation in `state` (26,); see `set_state`."""
        state = self._check_state(state, "state")
        quaternion = state[CUBE_QUAT]
        norm = float(np.linalg.norm(quaternion))
        if norm < 1e-9:
            raise ValueError(f"the cube quaternion must be non-zero, got {quaternion}")
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[:] = state[:_NQ]
        if abs(norm - 1.0) > 1e-12:
            self.data.qpos[CUBE_QUAT] = quaternion / norm
        self.data.qvel[:] = state[VELOCITIES]
        mujoco.mj_forward(self.model, self.data)

    def _state(self) -> np.ndarray:
        qpos, qvel = self.data.qpos, self.data.qvel
        return np.concatenate([qpos, [cube_yaw(qpos[CUBE_QUAT])], qvel])

    def _observation(self) -> dict[str, np.ndarray]:
        state = self._state()
        return {"pixels": self.render(), "state": state, "proprio": state[list(PROPRIO)]}

    def _random_state(self) -> np.ndarray:
        """From `self.np_random`: the cube resting flat at xy ~ U([0.3, 0.55] × [−0.3, 0.3]) with yaw
        ~ U[−π, π); the hand at xyz ~ U([0.25, 0.6] × [−0.35, 0.35] × [0.08, 0.2]) (above the cube's top
        at 0.04 m, so they never overlap) with yaw ~ U[−π, π) and the gripper open; all at rest."""
        rng = self.np_random
        hand = rng.uniform(HAND_START_LOW, HAND_START_HIGH)
        hand_yaw = rng.uniform(-math.pi, math.pi)
        cube_xy = rng.uniform(CUBE_LOW, CUBE_HIGH)
        quaternion = yaw_quaternion(rng.uniform(-math.pi, math.pi))
        state = np.zeros(len(STATE_NAMES))
        state[HAND], state[HAND_YAW] = hand, hand_yaw
        state[CUBE] = [*cube_xy, scene.CUBE_HALF_SIZE]
        state[CUBE_QUAT] = quaternion
        state[CUBE_YAW] = cube_yaw(quaternion)
        return state

    # ---------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode from a random state (see `_random_state`), or from `options["state"]`;
        `options["goal_state"]` sets the goal (otherwise the episode has none)."""
        super().reset(seed=seed)
        options = check_reset_options(options)
        self._steps = 0
        self.goal_state = None
        if "goal_state" in options:
            self.set_goal_state(options["goal_state"])
        state = options["state"] if "state" in options else self._random_state()
        observation = self.set_state(state)
        return observation, self._info(observation["state"], contacts=0)

    def simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The state (26,) reached from `state` after the raw actions `(T, 5)`, without rendering: what the
        simulator oracle plans with. Moves this env's simulation (the oracle keeps an env of its own); the
        step counter and goal are untouched. The kinematics are computed once, at the end: the physics
        reads only qpos and qvel, so the states equal `step`'s."""
        self._place(state)
        for action in actions:
            self._advance(action)
        mujoco.mj_forward(self.model, self.data)
        return self._state()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,) or not np.isfinite(action).all():
            raise ValueError(f"Cube action must be 5 finite numbers, got {action!r}")
        contacts = self._advance(action)
        # mj_step leaves positions-dependent quantities (body poses, contacts) one physics step behind
        # qpos; recomputing them makes the frame match the state.
        mujoco.mj_forward(self.model, self.data)
        self._steps += 1
        observation = self._observation()
        state, info = observation["state"], self._info(observation["state"], contacts)
        truncated = self._steps >= self.max_steps
        return observation, self._reward(state), info["success"], truncated, info

    def _reward(self, state: np.ndarray) -> float:
        if self.goal_state is None:
            return 0.0
        return -float(np.linalg.norm(state[CUBE] - self.goal_state[CUBE]))

    def _info(self, state: np.ndarray, contacts: int) -> dict[str, Any]:
        reached = self.goal_state is not None and success(state, self.goal_state, self.success_predicate)
        return {"n_contacts": contacts, "success": reached}

    # ---------------------------------------------------------------- state and goal
    def _check_state(self, state: np.ndarray, what: str) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (len(self.state_names),):
            raise ValueError(f"Cube {what} must have shape ({len(self.state_names)},), got {state.shape}")
        if not np.isfinite(state).all():
            raise ValueError(f"Cube {what} must be finite, got {state}")
        return state

    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Put the scene in `state` (26,) (also mid-episode) and return the observation there.

        Positions and velocities are written to MuJoCo's qpos and qvel as they are (the quaternion is
        normalised if it is not unit; `cube_yaw_angle` is derived from it and not read), and the rest of
        the simulation (solver warm start, controls) is reset, so a state read back equals the one set
        and the env then steps exactly like a fresh one set to the same state. Joint limits are soft in
        MuJoCo, so states read out may lie slightly outside the joint ranges (hand yaw [−π, π], fingers
        [0, 0.04] m): they are taken as they are, and the limits push a position outside back as the
        physics steps.
        """
        self._place(state)
        return self._observation()

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        """Set the goal (26,) used by `reward` and `terminated`; it is never drawn."""
        self.goal_state = self._check_state(goal_state, "goal state").copy()

    # ---------------------------------------------------------------- rendering
    def set_cube_color(self, rgb: tuple[int, int, int]) -> None:
        """Change the cube's colour, e.g. for violation-of-expectation tests; takes effect from the next
        rendered frame (the physics is untouched)."""
        self.cube_color = check_rgb(rgb, "cube colour")
        self.model.geom_rgba[self._cube_geom] = [*(c / 255 for c in self.cube_color), 1.0]

    def render(self) -> np.ndarray:
        """The current frame from the fixed camera, uint8 (image_size, image_size, 3)."""
        self._renderer.update_scene(self.data, camera="view")
        return self._renderer.render()

    def close(self) -> None:
        """Free the offscreen renderer (its OpenGL context), so nothing is left for interpreter exit."""
        self._renderer.close()
