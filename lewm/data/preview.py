"""An animated GIF of a dataset's first episodes (`lewm preview`, pipelines/cli.py): every stored frame,
upscaled, above a caption naming its episode, split and step.

The captions differ from frame to frame, which also keeps the GIF writer from merging identical consecutive
frames (an agent standing still): the GIF holds exactly one image per stored frame, in frame order.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from lewm.data.storage import EpisodeStore
from lewm.io import atomic_file

CAPTION_HEIGHT = 14  # px below each upscaled frame
PREVIEW_WIDTH = 256  # the default scale brings frames to about this width


@dataclass(frozen=True)
class Preview:
    """A written preview: where, which episodes (in order) and how many frames."""

    path: Path
    episodes: tuple[int, ...]
    frames: int


def default_scale(image_size: int) -> int:
    """The upscaling factor that brings `image_size`-px frames to about `PREVIEW_WIDTH` px (at least 1)."""
    return max(1, PREVIEW_WIDTH // image_size)


def write_preview(store: EpisodeStore, path: str | Path, episodes: int = 3, scale: int | None = None,
                  fps: int = 10) -> Preview:
    """Write a GIF of the first `episodes` episodes of `store` (by id; all of them if it has fewer) to
    `path`, atomically, each frame upscaled `scale`× (nearest; default `default_scale`) and shown for
    1/`fps` s."""
    if episodes < 1:
        raise ValueError(f"episodes must be ≥ 1, got {episodes}")
    if fps < 1 or (scale is not None and scale < 1):
        raise ValueError(f"scale and fps must be ≥ 1, got {scale} and {fps}")
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a directory; give the GIF's file path")
    chosen = tuple(int(ep) for ep in store.episode_ids()[:episodes])
    frames = sum(rows.stop - rows.start for rows in map(store.episode_rows, chosen))
    images = _captioned_frames(store, chosen, scale or default_scale(store.frames.shape[1]))
    first = next(images)
    with atomic_file(path) as tmp:
        first.save(tmp, format="GIF", save_all=True, append_images=images, duration=round(1000 / fps), loop=0)
    return Preview(path, chosen, frames)


def _captioned_frames(store: EpisodeStore, episodes: tuple[int, ...], scale: int) -> Iterator[Image.Image]:
    """PIL images, one per stored frame of `episodes`: the frame upscaled, a caption strip below it."""
    split = dict(zip(store.episodes["episode"].astype(int), store.episodes["split"], strict=True))
    for episode in episodes:
        rows = store.episode_rows(episode)
        last = rows.stop - rows.start - 1
        for step, frame in enumerate(store.frames[rows]):
            upscaled = np.asarray(frame).repeat(scale, axis=0).repeat(scale, axis=1)
            canvas = np.zeros((upscaled.shape[0] + CAPTION_HEIGHT, upscaled.shape[1], 3), dtype=np.uint8)
            canvas[: upscaled.shape[0]] = upscaled
            image = Image.fromarray(canvas)
            ImageDraw.Draw(image).text((3, upscaled.shape[0] + 1), f"episode {episode} ({split[episode]})  "
                                       f"step {step}/{last}", fill=(255, 255, 255))
            yield image
