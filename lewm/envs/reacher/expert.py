"""Reacher's data-collection policies: an expert that swings the arm between random joint configurations
(`ReacherExpert`) and the reference's i.i.d. uniform torques (`random`, `lewm.world.UniformPolicy`).

Measured over 40 episodes of 100 steps from reset states (medians; the joint space binned 12 shoulder ×
8 wrist):
- `random` (i.i.d. uniform torques, as the reference's RandomPolicy): the light links do move (median
  speeds 1.0 rad/s at the shoulder, 2.0 at the wrist), but they dither: each episode sweeps a shoulder
  range of 1.3 rad and a wrist range of 1.4 rad and visits 9 % of the bins; states 25 steps apart differ
  by 0.58 rad (max over the joints). Uniform resets still spread a dataset over the whole joint space, so
  temporally correlated noise is not needed (holding each draw for 10 steps would visit 21 % of the bins).
- `expert` (action noise 0.2): 4.7 rad of shoulder and 4.3 rad of wrist range, 28 % of the bins per
  episode; 2.2 rad between states 25 steps apart; from one common start, 20 episodes visit 98 % of the
  bins (`random`: 43 %).

A policy maps observations to float32 actions in [−1, 1]^2; its randomness comes only from `rng`.
"""

from __future__ import annotations

import numpy as np

from lewm.envs.reacher import env as reacher


class ReacherExpert:
    """Drive the arm toward a sequence of random joint targets, with Gaussian action noise.

    Each target is a shoulder angle ~ U(−π, π) and a wrist angle ~ U(−160°, 160°), the reset
    distribution. Per step the torque is `gain·error − damping·velocity`, clipped to [−1, 1], where the
    shoulder error is wrapped to (−π, π] (the shorter way round an unlimited joint) and the wrist error is
    the plain difference (the limited wrist cannot turn through ±180°). A new target is drawn once every
    joint is within `reach` rad of it, or after `patience` steps. N(0, action_noise) is added to the
    torque, then clipped again.
    """

    def __init__(self, rng: np.random.Generator, action_noise: float, gain: float = 4.0,
                 damping: float = 0.1, reach: float = 0.05, patience: int = 40) -> None:
        self.rng, self.action_noise = rng, action_noise
        self.gain, self.damping, self.reach, self.patience = gain, damping, reach, patience
        self.reset({})

    def reset(self, obs: dict[str, np.ndarray]) -> None:
        self.target: np.ndarray | None = None
        self._steps_on_target = 0

    def _new_target(self) -> None:
        self.target = np.array([self.rng.uniform(-np.pi, np.pi),
                                self.rng.uniform(-reacher.WRIST_LIMIT, reacher.WRIST_LIMIT)])
        self._steps_on_target = 0

    def _error(self, angles: np.ndarray) -> np.ndarray:
        """Target minus `angles`: wrapped for the shoulder, plain for the wrist."""
        return np.array([reacher.angle_difference(self.target[0], angles[0]), self.target[1] - angles[1]])

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        state = obs["state"]
        if (self.target is None or np.abs(self._error(state[0:2])).max() < self.reach
                or self._steps_on_target >= self.patience):
            self._new_target()
        self._steps_on_target += 1
        torque = np.clip(self.gain * self._error(state[0:2]) - self.damping * state[2:4], -1.0, 1.0)
        noisy = torque + self.action_noise * self.rng.standard_normal(2)
        return np.clip(noisy, -1.0, 1.0).astype(np.float32)
