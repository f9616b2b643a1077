"""Where rendered people go: the original video's layout, or an N-person conference grid.

Tiles are each person's rendered crop, [S, S, 3] uint8 (S: the NeRF's image size).
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

HIGHLIGHT_RGB = (255, 196, 0)


@dataclasses.dataclass
class OriginalLayout:
    """The source video's frame: its background plate with every person's crop at its place.

    Attributes:
        background: [H, W, 3] uint8 full-frame background plate of the dataset.
        boxes: per person [x0, y0, side] in frame pixels (``meta.json`` persons' bbox).
        scale: output size relative to the source frame (even sizes are kept for H.264).
    """

    background: np.ndarray
    boxes: list[tuple[int, int, int]]
    scale: float = 1.0

    def __post_init__(self):
        H, W = self.background.shape[:2]
        self.size = (_even(W * self.scale), _even(H * self.scale))
        self.plate = cv2.resize(self.background, self.size, interpolation=cv2.INTER_AREA) \
            if self.size != (W, H) else self.background.copy()

    def compose(self, tiles: list[np.ndarray], active: list[bool] | None = None) -> np.ndarray:
        """[H', W', 3] uint8: the plate with tile i resized into box i (``active`` is ignored: the
        original layout shows no highlight)."""
        if len(tiles) != len(self.boxes):
            raise ValueError(f"{len(tiles)} tiles for {len(self.boxes)} persons")
        out = self.plate.copy()
        for tile, (x0, y0, side) in zip(tiles, self.boxes):
            x, y, s = (int(round(v * self.scale)) for v in (x0, y0, side))
            s = min(s, out.shape[1] - x, out.shape[0] - y)
            out[y:y + s, x:x + s] = _fit(tile, s)
        return out


@dataclasses.dataclass
class ConferenceLayout:
    """An N-person grid: ``cols`` tiles per row (default ceil(sqrt(N))), tile side ``tile`` px, a
    ``gap`` px dark border between tiles; the active speaker's tile framed in ``HIGHLIGHT_RGB``."""

    n: int
    tile: int
    cols: int = 0
    gap: int = 4
    highlight: bool = True

    def __post_init__(self):
        if self.n < 1:
            raise ValueError("a conference needs at least one person")
        self.cols = self.cols or math.ceil(math.sqrt(self.n))
        self.rows = math.ceil(self.n / self.cols)
        w = self.cols * self.tile + (self.cols + 1) * self.gap
        h = self.rows * self.tile + (self.rows + 1) * self.gap
        self.size = (_even(w), _even(h))

    def origin(self, i: int) -> tuple[int, int]:
        """Top-left pixel (x, y) of tile i."""
        r, c = divmod(i, self.cols)
        return self.gap + c * (self.tile + self.gap), self.gap + r * (self.tile + self.gap)

    def compose(self, tiles: list[np.ndarray], active: list[bool] | None = None) -> np.ndarray:
        if len(tiles) != self.n:
            raise ValueError(f"{len(tiles)} tiles for a {self.n}-person conference")
        out = np.full((self.size[1], self.size[0], 3), 24, np.uint8)
        for i, tile in enumerate(tiles):
            x, y = self.origin(i)
            out[y:y + self.tile, x:x + self.tile] = _fit(tile, self.tile)
            if self.highlight and active is not None and active[i]:
                b = max(2, self.gap)
                cv2.rectangle(out, (x - b // 2, y - b // 2), (x + self.tile - 1 + b // 2, y + self.tile - 1 + b // 2),
                              HIGHLIGHT_RGB, b)
        return out


def side_by_side(frames: list[np.ndarray]) -> np.ndarray:
    """K layouts next to each other (K different reactions), all of one size."""
    return np.concatenate(frames, 1)


def _fit(tile: np.ndarray, side: int) -> np.ndarray:
    if tile.shape[0] == side and tile.shape[1] == side:
        return tile
    interp = cv2.INTER_AREA if tile.shape[0] > side else cv2.INTER_LINEAR
    return cv2.resize(tile, (side, side), interpolation=interp)


def _even(x: float) -> int:
    return max(2, int(round(x)) // 2 * 2)
