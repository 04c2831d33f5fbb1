"""Overlapping tiles, so images of any size fit in a fixed memory budget.

Each tile is read with a margin of ``overlap`` pixels on every side that has a neighbour and
only its centre is written back (centre-crop stitching): the margin absorbs the network's border
effects, so tiles meet without seams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass(frozen=True)
class Tile:
    """A read window (with margins) and the part of it that is written to the output."""

    read: tuple[slice, slice]  # window in the full image
    write: tuple[slice, slice]  # where the kept centre goes in the full image
    crop: tuple[slice, slice]  # the kept centre inside the read window


def _axis_tiles(size: int, tile: int, overlap: int) -> list[tuple[slice, slice, slice]]:
    if tile >= size:
        return [(slice(0, size), slice(0, size), slice(0, size))]
    step = tile - 2 * overlap
    if step <= 0:
        raise ValueError(f"tile {tile} too small for overlap {overlap}")
    out = []
    start = 0
    while True:
        w0 = start
        w1 = min(start + step, size)
        r0 = max(0, w0 - overlap)
        r1 = min(size, r0 + tile)
        r0 = max(0, r1 - tile)
        out.append((slice(r0, r1), slice(w0, w1), slice(w0 - r0, w1 - r0)))
        if w1 >= size:
            return out
        start = w1


def iter_tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[Tile]:
    """Tiles covering a (height, width) image; every output pixel is written exactly once."""
    for ry, wy, cy in _axis_tiles(height, tile, overlap):
        for rx, wx, cx in _axis_tiles(width, tile, overlap):
            yield Tile(read=(ry, rx), write=(wy, wx), crop=(cy, cx))


def count_tiles(height: int, width: int, tile: int, overlap: int) -> int:
    return sum(1 for _ in iter_tiles(height, width, tile, overlap))
