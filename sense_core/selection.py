"""What the linked view shows for a selection of members: a tiled mosaic and mean / std fields.

Pure numpy, so that the ParaView filter only converts VTK data and the logic is testable alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sense_core.errors import SenseError


@dataclass(frozen=True)
class Mosaic:
    """Members tiled row by row: ``image`` is (C, rows*H + gaps, columns*W + gaps); ``origins``
    holds the (row, column) pixel of each tile's top-left corner, in selection order."""

    image: np.ndarray
    origins: list[tuple[int, int]]
    rows: int
    columns: int


def tile_members(
    fields: np.ndarray, columns: int | None = None, gap: int = 2, gap_value: float = np.nan
) -> Mosaic:
    """Tile (k, C, H, W) members into one image, ``columns`` wide (default: about square).

    Gaps between tiles hold ``gap_value`` (NaN by default, which ParaView draws in its NaN
    colour, so tiles stay distinguishable whatever the colour map).
    """
    fields = np.asarray(fields, dtype=np.float32)
    if fields.ndim != 4 or fields.shape[0] == 0:
        raise SenseError(f"need a non-empty (k, C, H, W) selection, got shape {fields.shape}")
    count, channels, height, width = fields.shape
    columns = columns or math.ceil(math.sqrt(count))
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    image = np.full(
        (channels, rows * height + (rows - 1) * gap, columns * width + (columns - 1) * gap),
        gap_value,
        dtype=np.float32,
    )
    origins = []
    for index in range(count):
        top = (index // columns) * (height + gap)
        left = (index % columns) * (width + gap)
        image[:, top : top + height, left : left + width] = fields[index]
        origins.append((top, left))
    return Mosaic(image=image, origins=origins, rows=rows, columns=columns)


def selection_statistics(fields: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-wise mean and standard deviation (population, ddof=0) of (k, C, H, W) members."""
    fields = np.asarray(fields, dtype=np.float64)
    if fields.ndim != 4 or fields.shape[0] == 0:
        raise SenseError(f"need a non-empty (k, C, H, W) selection, got shape {fields.shape}")
    return fields.mean(axis=0).astype(np.float32), fields.std(axis=0).astype(np.float32)
