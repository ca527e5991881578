"""Environments by name: `make_env(name, **kwargs)`, and each env's module for `success` / `PREDICATES`."""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "osmesa")  # headless MuJoCo; must be set before `import mujoco`

from types import ModuleType

import gymnasium

from lewm.envs import pusht
from lewm.envs.pusht import PushTEnv

ENVS: dict[str, type[gymnasium.Env]] = {"pusht": PushTEnv}
_MODULES: dict[str, ModuleType] = {"pusht": pusht}


def _check_name(name: str) -> None:
    if name not in ENVS:
        raise ValueError(f"unknown environment {name!r} (known: {', '.join(sorted(ENVS))})")


def make_env(name: str, **kwargs) -> gymnasium.Env:
    """A new environment `name` built with `kwargs` (e.g. `image_size`, `max_steps`)."""
    _check_name(name)
    return ENVS[name](**kwargs)


def env_module(name: str) -> ModuleType:
    """The module of environment `name`, with its pure `success(state, goal, predicate)` and `PREDICATES`."""
    _check_name(name)
    return _MODULES[name]
