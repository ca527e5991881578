"""The offscreen renderer every MuJoCo world uses (a helper module, not a world)."""

from __future__ import annotations

import mujoco

FAST_FLAGS_OFF = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                  mujoco.mjtRndFlag.mjRND_SKYBOX)
"""Shadows, reflections and the skybox: off, they make CPU (llvmpipe) rendering 5–10× faster (spec §3)."""


def offscreen_renderer(model: mujoco.MjModel, image_size: int) -> mujoco.Renderer:
    """A square `image_size` renderer of `model` (its offscreen buffer enlarged to fit) with
    `FAST_FLAGS_OFF` switched off; the flags persist across `update_scene`."""
    model.vis.global_.offwidth = model.vis.global_.offheight = image_size
    renderer = mujoco.Renderer(model, image_size, image_size)
    for flag in FAST_FLAGS_OFF:
        renderer.scene.flags[flag] = 0
    return renderer
