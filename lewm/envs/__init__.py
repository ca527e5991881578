"""Worlds by name: each is a package `lewm/envs/<name>/` exporting `WORLD` (a `lewm.world.World`)."""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless MuJoCo; must be set before `import mujoco`
# PyOpenGL loads Mesa (and its libLLVM) with RTLD_GLOBAL when a MuJoCo world is imported; triton, which
# torch imports later (timm → torchvision → torch._dynamo), then loads its own LLVM and the process
# segfaults. Loaded first, triton keeps its own symbols.
if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401

from typing import Any

import gymnasium

from lewm.parts import WORLDS, part_module, part_names
from lewm.world import World


def world_names() -> tuple[str, ...]:
    """The names of every world package."""
    return part_names(WORLDS)


def get_world(name: str) -> World:
    """The spec of world `name`; a ValueError naming the known worlds if there is none."""
    return part_module(WORLDS, name, "environment").WORLD


def make_env(name: str, **kwargs: Any) -> gymnasium.Env:
    """A new environment of world `name` built with `kwargs` (e.g. `image_size`, `max_steps`)."""
    return get_world(name).make_env(**kwargs)
