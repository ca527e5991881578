"""Reacher: a two-link planar arm seen from above (MuJoCo physics and rendering, headless).

The scene follows the facts of the dm_control suite `reacher` (the reference wraps it with task
`qpos_match`), written here as our own MJCF: timestep 0.02 s with contacts disabled; an arm capsule 0.12 m
and a hand capsule 0.1 m (radius 0.01) with the fingertip sphere 0.12 m past the wrist; an unlimited
shoulder hinge and a wrist hinge limited to ±160°, both with damping 0.01; two motors with gear 0.05 and
controls in [−1, 1]; a fixed top-down camera. One env step
is `ACTION_REPEAT` = 2 physics steps (0.04 s), as the reference's wrapper.

Deliberate differences from the reference:
- No target is drawn: a goal is a joint configuration, and its goal image is the arm in that configuration.
- A flat floor and plain colours instead of the checker texture, skybox and reflections, with shadows,
  reflection and skybox switched off (5–10× faster on a CPU renderer; spec §3).
- What the camera sees is drawn for 64 px: the camera frames the arm's reach (±0.28 m; the reference's
  ±0.3 m arena walls and root post are left out, as contacts are off and they would be out of view or
  under the arm), and the links are drawn by massless visual capsules twice as thick as the physical ones
  (radius 0.02 m, about 5 px), the arm orange, the hand green and the fingertip yellow on a dark
  blue-grey floor. With the reference's thin single-colour links (about 2 px wide at 64 px) a trained
  encoder did not encode the wrist angle (linear readout error 0.68 rad against 0.76 for no
  information). The physical geoms are the reference's, hidden (geom group 3), so the dynamics are
  unchanged bit for bit.
- `reference` compares angles WRAPPED to (−π, π] (the upstream check subtracts raw qpos, which fails a
  shoulder at π − ε against a goal at −π + ε although the arm is in the same place).
- The wrist limit is MuJoCo's default soft constraint, as in dm_control: a swinging hand overshoots it
  by up to ~9°, and full torque holds the wrist ~5° past it.
- The shoulder angle is kept in [−π, π) in the simulation itself (a 2π shift after a step changes nothing
  physical), so the state read out equals the simulated one and `set_state(obs["state"])` restores it.

State (4): shoulder and wrist angles (rad, in [−π, π)), shoulder and wrist angular velocities (rad/s);
the proprioception is the same four numbers. `simulate(state, actions)` rolls the same physics out from a
state without rendering (what the simulator oracle plans with).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium
import mujoco
import numpy as np

from lewm.envs._common import action_space, check_reset_options, check_rgb, observation_space
from lewm.envs._mujoco import offscreen_renderer

TIMESTEP = 0.02
ACTION_REPEAT = 2  # physics steps per env step: 25 Hz control
ARM_LENGTH = 0.12  # shoulder to wrist
HAND_LENGTH = 0.12  # wrist to the fingertip's centre (the hand capsule itself is 0.1 long)
LINK_RADIUS = 0.01
FINGER_RADIUS = 0.01
WRIST_LIMIT = math.radians(160.0)
CAMERA_HEIGHT = 0.68  # MuJoCo's default 45° field of view then sees ±0.28 m at floor level: the arm's reach
VISUAL_LINK_RADIUS = 0.02  # what is drawn; the physics keeps LINK_RADIUS and FINGER_RADIUS
VISUAL_FINGER_RADIUS = 0.022  # just above the hand capsule's end, so the fingertip is drawn on top

SUCCESS_ANGLE = 0.05  # rad per joint: the reference's qpos_match tolerance
TARGET_RADIUS = 0.015  # the dm_control 'hard' target (also qpos_match's)
SUCCESS_FINGERTIP = TARGET_RADIUS + FINGER_RADIUS  # dm_control's reach: fingertip touches the target
PREDICATES = ("reference", "fingertip")

FLOOR_COLOR = (31, 41, 56)  # dark blue-grey
ARM_COLOR = (242, 153, 64)  # orange: the upper link
HAND_COLOR = (90, 210, 110)  # green: the lower link, so the wrist's bend shows
FINGER_COLOR = (255, 230, 102)  # yellow
ARM_GEOMS = ("arm_visual", "hand_visual", "finger_visual")  # what is drawn and `set_arm_color` recolours


def _rgba(rgb: tuple[int, int, int]) -> str:
    """An MJCF rgba attribute for an opaque 8-bit colour."""
    return " ".join(f"{c / 255:.4f}" for c in rgb) + " 1"


MJCF = f"""
<mujoco model="two-link planar reacher">
  <option timestep="{TIMESTEP}">
    <flag contact="disable"/>
  </option>
  <visual>
    <headlight ambient=".3 .3 .3" diffuse=".4 .4 .4" specular="0 0 0"/>
    <map znear=".01"/>
  </visual>
  <default>
    <joint type="hinge" axis="0 0 1" damping="0.01"/>
    <motor gear=".05" ctrlrange="-1 1" ctrllimited="true"/>
  </default>
  <worldbody>
    <light name="light" pos="0 0 1" dir="0 0 -1" directional="true" diffuse=".4 .4 .4" specular="0 0 0"/>
    <camera name="fixed" pos="0 0 {CAMERA_HEIGHT}" quat="1 0 0 0"/>
    <geom name="ground" type="plane" size=".4 .4 .4" rgba="{_rgba(FLOOR_COLOR)}"/>
    <body name="arm" pos="0 0 .01">
      <geom name="arm" type="capsule" fromto="0 0 0 {ARM_LENGTH} 0 0" size="{LINK_RADIUS}" group="3"/>
      <geom name="arm_visual" type="capsule" fromto="0 0 0 {ARM_LENGTH} 0 0" size="{VISUAL_LINK_RADIUS}"
            density="0" rgba="{_rgba(ARM_COLOR)}"/>
      <joint name="shoulder"/>
      <body name="hand" pos="{ARM_LENGTH} 0 0">
        <geom name="hand" type="capsule" fromto="0 0 0 .1 0 0" size="{LINK_RADIUS}" group="3"/>
        <geom name="hand_visual" type="capsule" fromto="0 0 0 .1 0 0" size="{VISUAL_LINK_RADIUS}"
              density="0" rgba="{_rgba(HAND_COLOR)}"/>
        <joint name="wrist" limited="true" range="-160 160"/>
        <body name="finger" pos="{HAND_LENGTH} 0 0">
          <geom name="finger" type="sphere" size="{FINGER_RADIUS}" group="3"/>
          <geom name="finger_visual" type="sphere" size="{VISUAL_FINGER_RADIUS}" density="0"
                rgba="{_rgba(FINGER_COLOR)}"/>
        </body>
      </body>
    </body>
  </worldbody>
  <actuator>
    <motor name="shoulder" joint="shoulder"/>
    <motor name="wrist" joint="wrist"/>
  </actuator>
</mujoco>
"""


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """`angle` wrapped to [−π, π); angles already there are returned unchanged (bit for bit)."""
    angle = np.asarray(angle, dtype=np.float64)
    inside = (angle >= -np.pi) & (angle < np.pi)
    wrapped = np.where(inside, angle, np.mod(angle + np.pi, 2 * np.pi) - np.pi)
    return float(wrapped) if wrapped.ndim == 0 else wrapped


def angle_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """`a − b` wrapped to (−π, π]."""
    return np.pi - np.mod(np.pi - (np.asarray(a) - np.asarray(b)), 2 * np.pi)


def fingertip(state: np.ndarray) -> np.ndarray:
    """World xy (..., 2) of the fingertip's centre for states (..., 4) (or (..., 2) angles): the forward
    kinematics of the two links."""
    state = np.asarray(state, dtype=np.float64)
    shoulder, elbow = state[..., 0], state[..., 0] + state[..., 1]
    return np.stack([ARM_LENGTH * np.cos(shoulder) + HAND_LENGTH * np.cos(elbow),
                     ARM_LENGTH * np.sin(shoulder) + HAND_LENGTH * np.sin(elbow)], axis=-1)


def joint_errors(state: np.ndarray, goal_state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max |wrapped Δangle| over the joints (rad) and the fingertip distance (m) between states (..., 4),
    broadcast together."""
    state, goal_state = np.asarray(state, dtype=np.float64), np.asarray(goal_state, dtype=np.float64)
    angle_error = np.abs(angle_difference(state[..., 0:2], goal_state[..., 0:2])).max(axis=-1)
    fingertip_error = np.linalg.norm(fingertip(state) - fingertip(goal_state), axis=-1)
    return angle_error, fingertip_error


def _check_predicate(predicate: str) -> None:
    if predicate not in PREDICATES:
        raise ValueError(f"unknown success predicate {predicate!r} (known: {', '.join(PREDICATES)})")


def success(state: np.ndarray, goal_state: np.ndarray, predicate: str) -> bool | np.ndarray:
    """Whether `state` reaches `goal_state`; vectorised over leading axes (a bool for single states).

    `reference` (DINO-WM, swm qpos_match): every joint within 0.05 rad of the goal's, angles compared
    wrapped. `fingertip` (dm_control 'hard' reach): the fingertip within 0.025 m of the goal
    configuration's fingertip. Velocities do not count.
    """
    _check_predicate(predicate)
    angle_error, fingertip_error = joint_errors(state, goal_state)
    reached = angle_error < SUCCESS_ANGLE if predicate == "reference" else fingertip_error < SUCCESS_FINGERTIP
    return bool(reached) if reached.ndim == 0 else reached


class ReacherEnv(gymnasium.Env):
    """Reacher with a dict observation (`pixels`, `state`, `proprio`) and 2-D joint torques in [−1, 1].

    `reward` = −‖wrapped Δ(shoulder, wrist)‖ to the goal (rad), 0 without a goal; `terminated` =
    `success(state, goal, success_predicate)` once a goal is set; `truncated` after `max_steps` steps.
    Contacts are disabled, so `info["n_contacts"]` is always 0.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 25}
    state_names = ("shoulder_angle", "wrist_angle", "shoulder_velocity", "wrist_velocity")
    proprio_names = state_names
    action_dim = 2

    def __init__(self, image_size: int = 64, max_steps: int = 200,
                 success_predicate: str = "reference") -> None:
        if image_size < 1 or max_steps < 1:
            raise ValueError(f"image_size and max_steps must be positive, got {image_size}, {max_steps}")
        _check_predicate(success_predicate)
        self.image_size, self.max_steps, self.success_predicate = image_size, max_steps, success_predicate
        self.render_mode = "rgb_array"
        self.action_space = action_space(self.action_dim)
        self.observation_space = observation_space(image_size, len(self.state_names), len(self.proprio_names))
        self._model = mujoco.MjModel.from_xml_string(MJCF)
        self._data = mujoco.MjData(self._model)
        self._arm_geoms = [self._model.geom(name).id for name in ARM_GEOMS]
        self._renderer = offscreen_renderer(self._model, image_size)
        self.arm_color = ARM_COLOR
        self.goal_state: np.ndarray | None = None
        self._steps = 0
        mujoco.mj_forward(self._model, self._data)

    # ---------------------------------------------------------------- physics
    def _advance(self, action: np.ndarray) -> None:
        """One env step's physics: the torques `clip(a, −1, 1)` held for `ACTION_REPEAT` physics steps, the
        shoulder then wrapped to [−π, π). The kinematics (body poses) are left one physics step behind:
        each `mj_step` recomputes them from qpos first, so only a frame needs an `mj_forward` after it."""
        self._data.ctrl[:] = np.clip(action, -1.0, 1.0)
        for _ in range(ACTION_REPEAT):
            mujoco.mj_step(self._model, self._data)
        self._data.qpos[0] = wrap_angle(self._data.qpos[0])

    def _place(self, state: np.ndarray) -> None:
        """Teleport the simulation to `state` (4,); see `set_state`."""
        state = self._checked_state(state, "state")
        mujoco.mj_resetData(self._model, self._data)
        self._data.qpos[:] = wrap_angle(state[0]), state[1]
        self._data.qvel[:] = state[2:4]
        mujoco.mj_forward(self._model, self._data)

    def _state(self) -> np.ndarray:
        """qpos and qvel as they are: the shoulder is kept in [−π, π) by `step` and `set_state`, and the
        wrist's limit keeps it well inside."""
        return np.concatenate([self._data.qpos, self._data.qvel])

    def _observation(self) -> dict[str, np.ndarray]:
        state = self._state()
        return {"pixels": self.render(), "state": state, "proprio": state.copy()}

    def _random_state(self) -> np.ndarray:
        """Shoulder ~ U(−π, π), wrist ~ U(−160°, 160°), at rest; from `self.np_random` (as dm_control)."""
        shoulder = self.np_random.uniform(-math.pi, math.pi)
        wrist = self.np_random.uniform(-WRIST_LIMIT, WRIST_LIMIT)
        return np.array([shoulder, wrist, 0.0, 0.0])

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
        return observation, self._info(observation["state"])

    def simulate(self, state: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """The state (4,) reached from `state` after the raw actions `(T, 2)`, without rendering: what the
        simulator oracle plans with. Moves this env's simulation (the oracle keeps an env of its own); the
        step counter and goal are untouched. The kinematics are computed once, at the end: the physics
        reads only qpos and qvel, so the states equal `step`'s."""
        self._place(state)
        for action in actions:
            self._advance(action)
        mujoco.mj_forward(self._model, self._data)
        return self._state()

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,) or not np.isfinite(action).all():
            raise ValueError(f"Reacher action must be 2 finite numbers, got {action!r}")
        self._advance(action)
        mujoco.mj_forward(self._model, self._data)  # mj_step leaves the kinematics one step behind qpos
        self._steps += 1
        observation = self._observation()
        info = self._info(observation["state"])
        truncated = self._steps >= self.max_steps
        return observation, self._reward(observation["state"]), info["success"], truncated, info

    def _reward(self, state: np.ndarray) -> float:
        if self.goal_state is None:
            return 0.0
        return -float(np.linalg.norm(angle_difference(state[0:2], self.goal_state[0:2])))

    def _info(self, state: np.ndarray) -> dict[str, Any]:
        reached = self.goal_state is not None and success(state, self.goal_state, self.success_predicate)
        return {"n_contacts": 0, "success": reached}

    # ---------------------------------------------------------------- state and goal
    def _checked_state(self, state: np.ndarray, what: str) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (len(self.state_names),):
            raise ValueError(f"Reacher {what} must have shape (4,), got {state.shape}")
        if not np.isfinite(state).all():
            raise ValueError(f"Reacher {what} must be finite, got {state}")
        if not -math.pi <= state[1] < math.pi:
            raise ValueError(f"Reacher {what}: wrist angle {state[1]} outside [−π, π) (its range is ±160°)")
        return state

    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Teleport to `state` (4,) (also mid-episode) and return the observation there.

        The simulation is reset first (no warm start or control from before the teleport carries over),
        then qpos and qvel are set and the kinematics computed. The shoulder angle is wrapped to [−π, π);
        a state whose angles lie there reads back exactly. The wrist may lie past its ±160° limit (the
        limit is soft: the arm itself overshoots it by up to ~9° at full speed), not past ±π.
        """
        self._place(state)
        return self._observation()

    def set_goal_state(self, goal_state: np.ndarray) -> None:
        """Set the goal (4,) used by `reward` and `terminated` (only its angles count)."""
        self.goal_state = self._checked_state(goal_state, "goal state").copy()

    # ---------------------------------------------------------------- rendering
    def set_arm_color(self, rgb: tuple[int, int, int]) -> None:
        """Colour the drawn arm (both links and the fingertip) `rgb`, e.g. for violation-of-expectation tests;
        takes effect from the next rendered frame."""
        self.arm_color = check_rgb(rgb, "arm colour")
        self._model.geom_rgba[self._arm_geoms, :3] = np.array(self.arm_color) / 255.0

    def render(self) -> np.ndarray:
        """The current frame from the top-down camera, uint8 (image_size, image_size, 3)."""
        self._renderer.update_scene(self._data, camera="fixed")
        return self._renderer.render()

    def close(self) -> None:
        """Release the renderer's GL context (otherwise it is freed noisily at interpreter exit)."""
        self._renderer.close()
