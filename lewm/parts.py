"""Swappable parts found by name: a world is a package `lewm/envs/<name>/`, a world model a module
`lewm/models/<name>.py`, a solver a module `lewm/solvers/<name>.py`. Adding a file adds the part; no list
elsewhere needs editing. Modules whose name starts with `_` are helpers, not parts."""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

WORLDS, MODELS, SOLVERS = "lewm.envs", "lewm.models", "lewm.solvers"


def part_names(package: str) -> tuple[str, ...]:
    """The names of the parts in `package` (its public modules and subpackages), sorted."""
    path = importlib.import_module(package).__path__
    return tuple(sorted(info.name for info in pkgutil.iter_modules(path) if not info.name.startswith("_")))


def part_module(package: str, name: str, what: str) -> ModuleType:
    """The module of part `name` in `package`; a ValueError naming the known ones if there is none."""
    known = part_names(package)
    if name not in known:
        raise ValueError(f"unknown {what} {name!r} (known: {', '.join(known)})")
    return importlib.import_module(f"{package}.{name}")
