"""Overlapping tiles, so images of any size fit in a fixed memory budget.

Each tile is read with a margin of ``overlap`` pixels on every side that has a neighbour and
only its centre is written back (centre-crop stitching). When the margin covers the support of
everything computed from the pixels (focus measure, fill, median), a tile's centre is exactly
what the whole image would give there, so tiles meet without seams; for networks with global
statistics the margin absorbs the border effects and the residual difference is measured in
the tests.

The write windows of one axis are ``[0, step), [step, 2*step), ...`` with
``step = tile - 2*overlap``: chunked outputs (zarr, tiled TIFF) with chunk = step receive
exactly one chunk per tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import psutil

from ..errors import StackMFFError

#: Host memory never handed to one fusion, whatever is free (leave room for the rest of the machine).
MAX_HOST_BUDGET = 4 << 30


@dataclass(frozen=True)
class Tile:
    """A read window (with margins) and the part of it that is written to the output."""

    read: tuple[slice, slice]  # window in the full image
    write: tuple[slice, slice]  # where the kept centre goes in the full image
    crop: tuple[slice, slice]  # the kept centre inside the read window


def tile_step(tile: int, overlap: int) -> int:
    """Output pixels each tile contributes along one axis."""
    step = tile - 2 * overlap
    if step <= 0:
        raise StackMFFError(f"tile {tile} is too small for an overlap of {overlap} px; use a tile of at least "
                            f"{2 * overlap + 32} px.")
    return step


def _axis_tiles(size: int, tile: int, overlap: int) -> list[tuple[slice, slice, slice]]:
    if tile >= size:
        return [(slice(0, size), slice(0, size), slice(0, size))]
    step = tile_step(tile, overlap)
    out = []
    start = 0
    while True:
        w0 = start
        w1 = min(start + step, size)
        r0 = max(0, w0 - overlap)
        r1 = min(size, r0 + tile)
        r0 = max(0, r1 - tile)  # the last tile slides left: every read window is `tile` wide
        out.append((slice(r0, r1), slice(w0, w1), slice(w0 - r0, w1 - r0)))
        if w1 >= size:
            return out
        start = w1


def iter_tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[Tile]:
    """Tiles covering a (height, width) image row by row; every output pixel is written exactly once."""
    cols = _axis_tiles(width, tile, overlap)
    for ry, wy, cy in _axis_tiles(height, tile, overlap):
        for rx, wx, cx in cols:
            yield Tile(read=(ry, rx), write=(wy, wx), crop=(cy, cx))


def count_tiles(height: int, width: int, tile: int, overlap: int) -> int:
    return len(_axis_tiles(height, tile, overlap)) * len(_axis_tiles(width, tile, overlap))


def chunk_shape(height: int, width: int, tile: int, overlap: int) -> tuple[int, int]:
    """Output chunk (y, x) that tile writes align with: one tile writes one chunk."""
    cy = height if tile >= height else tile_step(tile, overlap)
    cx = width if tile >= width else tile_step(tile, overlap)
    return cy, cx


def memory_budget(device: str = "cpu", fraction: float = 0.4, cap: int | None = MAX_HOST_BUDGET) -> int:
    """Bytes one fusion may use for its working tiles: a fraction of what is free now.

    On a GPU that is free device memory (the tile lives there); on the CPU free RAM via psutil,
    capped so that a huge machine does not make tiles so big that progress stalls.
    """
    dev = str(device)
    if dev.startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(dev))
        return int(free * fraction)
    free = int(psutil.virtual_memory().available * fraction)
    return min(free, cap) if cap else free


def auto_tile_side(bytes_per_pixel: float, budget: int, *, overlap: int = 0, multiple: int = 32,
                   lo: int = 128, hi: int = 8192) -> int:
    """Largest tile side (a multiple of ``multiple``) whose working memory fits ``budget``.

    Never smaller than what the overlap needs plus one chunk of output: a tile that is mostly
    margin would cost many times the untiled work.
    """
    side = int(math.sqrt(max(budget, 1) / max(bytes_per_pixel, 1e-9)))
    floor = max(lo, 2 * overlap + 2 * multiple)
    side = max(floor, min(hi, side))
    return -(-side // multiple) * multiple


def balance_tile(height: int, width: int, tile: int, overlap: int, multiple: int = 32) -> int:
    """The smallest tile that needs no more tiles than ``tile`` does: split the image evenly.

    A 4096-px image under a 3840-px budget tile would otherwise take four nearly full tiles
    (3.5x the work); balanced, it takes four 2208-px tiles. Steps stay multiples of ``multiple``.
    """
    if tile >= max(height, width):
        return tile
    step = tile_step(tile, overlap)
    need = 0
    for size in (height, width):
        if size > tile:
            k = -(-size // step)  # tiles along this axis now
            need = max(need, -(-size // k))
    need = -(-need // multiple) * multiple
    return min(tile, need + 2 * overlap)


def round_overlap(overlap: int, multiple: int = 16) -> int:
    """Overlap rounded up so that tile - 2*overlap stays a multiple of 2*multiple (TIFF tiles: 16)."""
    return -(-int(overlap) // multiple) * multiple
