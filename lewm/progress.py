"""Progress bars for long loops: shown on a terminal, left out of logs (CI, `dvc repro > log`), where every
redraw would be another line."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tqdm import tqdm


def progress_bar(iterable: Iterable[Any] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar that draws only when `enabled` and its stream (stderr) is a terminal."""
    return tqdm(iterable, disable=None if enabled else True, dynamic_ncols=True, **kwargs)
