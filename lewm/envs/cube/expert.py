"""Cube's data-collection policies: the scripted pick-and-place expert (`CubeExpert`); `random` is the
world's `UniformPolicy` (i.i.d. uniform actions, see `lewm/envs/cube/__init__.py`).

A policy maps observations to float32 actions in [−1, 1]^5; its randomness comes only from `rng`.
"""

from __future__ import annotations

import math

import numpy as np

from lewm.envs.cube import env as cube
from lewm.envs.cube import scene

# Noise std per action component, in units of the episode's noise scale ξ (OGBench's data collection):
# Δxyz ξ, Δyaw 3ξ, gripper 10ξ.
NOISE_SHAPE = np.array([1.0, 1.0, 1.0, 3.0, 10.0])
ALIGN_DISTANCE = 0.01  # m: the pinch (or the carried cube) is over its goal in xy
NEAR_DISTANCE = 0.02  # m: within the open fingers' reach of the cube (the 8-cm gap leaves ±2 cm)
GRASP_DISTANCE = 0.008  # m: the pinch is at the cube's centre, close the fingers
ALIGN_YAW = 0.1  # rad: fingers square to the cube's faces, descend
HEIGHT_TOLERANCE = 0.01  # m: at the travel height
OPEN_CLOSURE = 0.1  # closure below which the gripper counts as open
# While holding the cube the fingers stop at closure 0.5 (they meet its faces half-way), and stay still.
HOLD_CLOSURE = (0.3, 0.7)
HOLD_FINGER_RATE = 0.05  # m/s
PLACED_HEIGHT = scene.CUBE_HALF_SIZE + 0.003  # m: the carried cube's centre is down on the table


def _side_yaw(hand_yaw: float, yaw: float) -> float:
    """The hand yaw equivalent to `yaw` modulo a quarter turn (the cube does not see the difference)
    with the fingers closing across the camera's view, i.e. within π/4 of ±π/2: of the two such yaws,
    the nearer to `hand_yaw`. Fingers closing along the line of sight would hide the cube behind one."""
    upper = cube.QUARTER_TURN + float(cube.fold_yaw(yaw - cube.QUARTER_TURN))  # in [π/4, 3π/4)
    return min((upper, upper - math.pi), key=lambda candidate: abs(candidate - hand_yaw))


class CubeExpert:
    """Pick the cube up and place it at random targets, one after the other, with OGBench-style noise.

    Per step, from the state alone (so a slipped or missed grasp is simply retried), with the place
    target (x, y, yaw) and a "retreating" flag as the only memory:
    1. not holding the cube: rise to `lift_height` if low, move over the cube with the gripper open and
       the fingers turned square to its faces and across the camera's view (`_side_yaw`), descend until
       the pinch is at the cube's centre, close;
    2. holding it (fingers stopped half-closed on it, the cube between them): rise to `lift_height`,
       carry it over the target while turning it to the target yaw (modulo a quarter turn), lower it
       onto the table, open;
    3. after the release: rise to `lift_height` with the gripper open, then draw the next target.
    Targets are uniform over the cube sampling area ([0.3, 0.55] × [−0.3, 0.3] m) at least `min_travel`
    from the cube, with yaw ~ U[−π/4, π/4); so an episode holds one pick-and-place after another.
    Motion is proportional and deadbeat (the hand servos reach a commanded step within the env step),
    capped at `speed` × 5 cm per step.

    Noise (OGBench's `data_collection`): at each `reset`, ξ ~ U(0, action_noise); every action gets
    Gaussian noise with std (ξ, ξ, ξ, 3ξ, 10ξ) on (Δx, Δy, Δz, Δyaw, gripper) and is clipped to [−1, 1].
    The gripper's large share makes noisy episodes drop the cube now and then, and then regrasp it.
    """

    def __init__(self, rng: np.random.Generator, action_noise: float, speed: float = 1.0,
                 lift_height: float = 0.12, min_travel: float = 0.1) -> None:
        if not 0 < speed <= 1 or not 0.06 <= lift_height <= cube.WORKSPACE_HIGH[2] or min_travel < 0:
            raise ValueError(f"expert options out of range: speed={speed} (0, 1], lift_height="
                             f"{lift_height} [0.06, 0.35] m, min_travel={min_travel} ≥ 0 m")
        self.rng, self.action_noise = rng, action_noise
        self.speed, self.lift_height, self.min_travel = speed, lift_height, min_travel
        self.reset({})

    def reset(self, obs: dict[str, np.ndarray]) -> None:
        """A new episode: no target yet, and a fresh noise scale ξ."""
        self.target: np.ndarray | None = None  # the place target: cube x, y (m) and yaw (rad)
        self.placements = 0  # releases at a target so far
        self._retreating = False
        self.noise_scale = self.rng.uniform(0.0, self.action_noise)  # ξ

    def _new_target(self, cube_xy: np.ndarray) -> None:
        for _ in range(100):
            xy = self.rng.uniform(cube.CUBE_LOW, cube.CUBE_HIGH)
            if np.linalg.norm(xy - cube_xy) >= self.min_travel:
                break
        self.target = np.append(xy, self.rng.uniform(-cube.QUARTER_TURN / 2, cube.QUARTER_TURN / 2))

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = obs["state"]
        hand, hand_yaw = state[cube.HAND], float(state[cube.HAND_YAW])
        block, block_yaw = state[cube.CUBE], float(state[cube.CUBE_YAW])
        closure = state[cube.FINGER_LEFT] / scene.FINGER_TRAVEL
        if self.target is None:
            self._new_target(block[:2])
        if self._retreating:
            up = hand[2] >= self.lift_height - HEIGHT_TOLERANCE
            if not (up and closure < OPEN_CLOSURE):
                return self._command(hand, np.append(hand[:2], self.lift_height), hand_yaw, hand_yaw, -1.0)
            self._retreating = False
            self._new_target(block[:2])

        finger_rate = abs(state[cube.FINGER_LEFT_RATE])
        holding = (HOLD_CLOSURE[0] < closure < HOLD_CLOSURE[1] and finger_rate < HOLD_FINGER_RATE
                   and np.linalg.norm(block - hand) < NEAR_DISTANCE)
        if holding:
            return self._carry(hand, hand_yaw, block, block_yaw)
        return self._pick(hand, hand_yaw, block, block_yaw, closure)

    def _pick(self, hand: np.ndarray, hand_yaw: float, block: np.ndarray, block_yaw: float,
              closure: float) -> np.ndarray:
        yaw_goal = _side_yaw(hand_yaw, block_yaw)
        offset = float(np.linalg.norm(block[:2] - hand[:2]))
        low = hand[2] < self.lift_height - HEIGHT_TOLERANCE
        if offset > NEAR_DISTANCE:  # not over the cube: rise, then travel over it
            goal = np.append(hand[:2] if low else block[:2], self.lift_height)
            return self._command(hand, goal, hand_yaw, yaw_goal, -1.0)
        ready = abs(yaw_goal - hand_yaw) < ALIGN_YAW and closure < OPEN_CLOSURE
        if not ready or (offset > ALIGN_DISTANCE and hand[2] > block[2] + scene.CUBE_HALF_SIZE):
            return self._command(hand, np.append(block[:2], hand[2]), hand_yaw, yaw_goal, -1.0)
        grip = 1.0 if np.linalg.norm(block - hand) < GRASP_DISTANCE else -1.0
        return self._command(hand, block, hand_yaw, yaw_goal, grip)

    def _carry(self, hand: np.ndarray, hand_yaw: float, block: np.ndarray, block_yaw: float) -> np.ndarray:
        assert self.target is not None
        yaw_goal = _side_yaw(hand_yaw, hand_yaw + self.target[2] - block_yaw)
        place = np.append(self.target[:2], scene.CUBE_HALF_SIZE)
        offset = float(np.linalg.norm(place[:2] - block[:2]))
        if offset > ALIGN_DISTANCE:  # lift, then carry over the target at the travel height
            low = hand[2] < self.lift_height - HEIGHT_TOLERANCE
            shift = np.zeros(2) if low and offset > NEAR_DISTANCE else place[:2] - block[:2]
            goal = np.append(hand[:2] + shift, self.lift_height)
            return self._command(hand, goal, hand_yaw, yaw_goal, 1.0)
        if block[2] > PLACED_HEIGHT:  # lower it onto the table
            return self._command(hand, hand + place - block, hand_yaw, yaw_goal, 1.0)
        self._retreating = True
        self.placements += 1
        return self._command(hand, hand, hand_yaw, hand_yaw, -1.0)

    def _command(self, hand: np.ndarray, goal: np.ndarray, hand_yaw: float, yaw_goal: float,
                 grip: float) -> np.ndarray:
        """The action moving the pinch toward `goal` (at most `speed` × 5 cm) and the yaw toward
        `yaw_goal`, with `grip` (+1 close, −1 open) and the episode's noise; clipped to [−1, 1]."""
        move = (goal - hand) / cube.ACTION_SCALE[:3]
        norm = float(np.linalg.norm(move))
        if norm > self.speed:
            move *= self.speed / norm
        turn = (yaw_goal - hand_yaw) / cube.ACTION_SCALE[3]
        noise = self.noise_scale * NOISE_SHAPE * self.rng.standard_normal(5)
        action = np.append(move, [turn, grip]) + noise
        return np.clip(action, -1.0, 1.0).astype(np.float32)

