"""What every world's env shares: its gymnasium spaces, the reset options it accepts and the colour check
of its VoE colour change (a helper module, not a world: lewm/parts.py skips names starting with `_`)."""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

RESET_OPTIONS = ("goal_state", "state")


def action_space(action_dim: int) -> spaces.Box:
    """Actions in [−1, 1]^action_dim, float32."""
    return spaces.Box(-1.0, 1.0, (action_dim,), dtype=np.float32)


def observation_space(image_size: int, state_dim: int, proprio_dim: int,
                      **extra: spaces.Space) -> spaces.Dict:
    """`pixels` uint8 (H, W, 3), `state` and `proprio` float64 vectors, plus a world's `extra` keys."""
    return spaces.Dict({
        "pixels": spaces.Box(0, 255, (image_size, image_size, 3), dtype=np.uint8),
        "state": spaces.Box(-np.inf, np.inf, (state_dim,), dtype=np.float64),
        "proprio": spaces.Box(-np.inf, np.inf, (proprio_dim,), dtype=np.float64),
        **extra,
    })


def check_reset_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of `reset`'s options; a ValueError naming any option other than `state` and `goal_state`."""
    options = dict(options or {})
    unknown = set(options) - set(RESET_OPTIONS)
    if unknown:
        raise ValueError(f"unknown reset options {sorted(unknown)} (known: {', '.join(RESET_OPTIONS)})")
    return options


def check_rgb(rgb: tuple[int, int, int], what: str) -> tuple[int, int, int]:
    """`rgb` as three ints; a ValueError naming `what` (e.g. "cube colour") unless each is in [0, 255]."""
    if len(rgb) != 3 or not all(0 <= int(c) <= 255 for c in rgb):
        raise ValueError(f"{what} must be three integers in [0, 255], got {rgb}")
    return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
