"""The streaming classical engine: one slice at a time through a focus measure, a running best.

Suits the CPU (float memory of a few slices, whatever the stack depth). For classical measures the
tile margin covers the whole support of measure + fill + median (:func:`classical_support`), so a
tiled result is bit-identical to the untiled one. :mod:`.device_engine` is the device-resident twin.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from ..io.stack import FocalStack
from ..tiles import classical, decision
from ..tiles.blend import seam_reach
from ..tiles.classical import gaussian_radius
from ..tiles.pipeline import (
    CLASSICAL_MEDIAN_PASSES,
    FocusMaps,
    ProgressFn,
    _to_tensor,
    check_cancel,
    native_cpu_conv,
    peak_maps,
    renumber,
)
from ..tiles.prefetch import prefetch


# ------------------------------------------------------------------------- classical path
def classical_maps(
    focus_images: Callable[[int], np.ndarray],
    n: int,
    method: str,
    device: torch.device,
    *,
    window: int = classical.DEFAULT_WINDOW,
    fill_threshold: float = 0.25,
    denoise: bool = True,
    halo: decision.Decision = decision.LEGACY,
    origin: tuple[int, int] = (0, 0),
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
) -> FocusMaps:
    """Streaming argmax over slices: memory is O(H·W), whatever the number of slices.

    Keeps the best score, its index and the scores of its two neighbours, so the sub-slice
    peak (a parabola through three points) comes without holding the (N, H, W) volume.
    """
    # The next slice is read (disk, luma) while this one is measured.
    images = prefetch((focus_images(z) for z in range(n)), depth=2)
    with torch.no_grad(), classical.bands_take_threads(device):
        return _classical_stream(images, n, method, device, window=window, fill_threshold=fill_threshold,
                                 denoise=denoise, halo=halo, origin=origin, progress=progress, cancel=cancel)


def _classical_stream(images: Iterator[np.ndarray], n: int, method: str, device: torch.device, *, window: int,
                      fill_threshold: float, denoise: bool, halo: decision.Decision, origin: tuple[int, int],
                      progress: ProgressFn | None, cancel: threading.Event | None) -> FocusMaps:
    best = left = right = prev = total = None
    luma = lit = None  # the glow decision's: summed focus images, the winning slice's brightness
    glow = halo.streams_glow(denoise, fill_threshold)
    idx: torch.Tensor | None = None
    try:
        for z in range(n):
            check_cancel(cancel)
            x = _to_tensor(next(images), device)
            f = banded_measure(x, method, window, device)
            if glow:
                if luma is None:
                    luma, lit = x.float().clone(), x.float().clone()
                else:
                    luma += x
                    torch.where(f > best, x, lit, out=lit)
            if best is None:
                best, idx = f.clone(), torch.zeros(f.shape, dtype=torch.int32, device=device)
                left = torch.full_like(f, float("nan"))
                right = torch.full_like(f, float("nan"))
                total = f.clone()
            else:
                # In place, no temporaries: at 2k×2k each allocation costs as much as the arithmetic.
                torch.where(idx == z - 1, f, right, out=right)
                new = f > best
                torch.where(new, prev, left, out=left)
                right.masked_fill_(new, float("nan"))
                idx.masked_fill_(new, z)
                torch.maximum(best, f, out=best)
                total += f
            prev = f
            if progress is not None:
                progress(z + 1, n, "measuring focus")
    finally:
        images.close()  # type: ignore[attr-defined]
    assert best is not None and idx is not None
    state = {"best": best, "idx": idx, "left": left, "right": right, "total": total}
    if luma is not None:
        state.update(luma=luma, lit=lit)
    del best, idx, left, right, total, prev, f, x, luma, lit  # peak_maps frees the state as it goes
    return peak_maps(state, n, window=window, fill_threshold=fill_threshold, denoise=denoise, halo=halo,
                     origin=origin)


#: Rows per band of a measure on the CPU: its temporaries (13 maps at the peak for the wavelet) are
#: a band's, not the tile's; each band reads its measure's footprint around it, so the values are the
#: whole tile's. 64 x 2048² uint16 from a path: see benchmarks/RESULTS.md, issue 29.
MEASURE_BAND_ROWS = 512


def banded_measure(x: torch.Tensor, method: str, window: int, device: torch.device) -> torch.Tensor:
    """The (H, W) focus measure of ``x``, computed in bands of :data:`MEASURE_BAND_ROWS` rows on the CPU."""
    h = x.shape[0]
    r = _MEASURE_RADIUS[method] + (int(window) | 1) // 2
    with native_cpu_conv(device):
        if device.type != "cpu" or h <= MEASURE_BAND_ROWS + 2 * r:
            return classical.focus_measure(x[None, None], method, window)[0, 0]
        out = torch.empty_like(x)
        for r0 in range(0, h, MEASURE_BAND_ROWS):
            r1 = min(h, r0 + MEASURE_BAND_ROWS)
            a0, a1 = max(0, r0 - r), min(h, r1 + r)
            if a1 - a0 <= r:  # a sliver at the bottom: reflect padding needs more rows than it has
                a0 = max(0, a1 - 2 * r - 1)
            out[r0:r1] = classical.focus_measure(x[a0:a1][None, None], method, window)[0, 0, r0 - a0:r1 - a0]
        return out


# ------------------------------------------------------------------------------- tiling
def classical_margins(method: str, window: int, denoise: bool, fill_threshold: float,
                      halo: decision.Decision) -> tuple[int, int]:
    """(tile margin, least margin a small tile asked for may shrink it to) for a classical engine. Less than
    the first breaks exactness only for the halo decision's wide reach (then approximate within that reach
    of a tile border); less than the second would break the measure and fill."""
    return (classical_support(method, window, denoise=denoise, fill_threshold=fill_threshold, halo=halo),
            classical_support(method, window, denoise=denoise, fill_threshold=fill_threshold))



#: Radius of each classical measure's footprint for window w: w//2 for the box mean, plus the
#: 3x3 smoothing and 3x3 Laplacian (laplacian: 2; it read 1 until the measure was computed in bands,
#: hidden by the tile margin's fill radius), the 3x3 Sobel (tenengrad) or the three à-trous levels (5
#: taps at dilation 1, 2, 4).
_MEASURE_RADIUS = {"variance": 0, "laplacian": 2, "tenengrad": 1, "wavelet": 2 + 4 + 8}
#: Peak working bytes per tile pixel of the classical path (float32 maps, streaming state, fill and
#: median temporaries, read-ahead), with room to spare: measured 93 B/px on 64 x 2048² uint16 from a
#: path (390 MB peak anonymous memory, outputs included; benchmarks/bench_memory.py), 189 B/px with the
#: halo decision (792 MB: its votes blur one slice's map at a time).
CLASSICAL_BYTES_PER_PIXEL = 128
HALO_BYTES_PER_PIXEL = 256


def classical_support(method: str, window: int, *, denoise: bool = True, fill_threshold: float = 0.25,
                      halo: decision.Decision = decision.LEGACY) -> int:
    """Pixels beyond which input changes cannot reach an output pixel: measure + fill + median.

    A tile margin of at least this makes tiled classical fusion exactly equal to untiled.
    """
    r = _MEASURE_RADIUS[method] + (int(window) | 1) // 2
    if halo.streams_glow(denoise, fill_threshold):  # the glow decision's gates read the focus images
        r = max(r, decision.glow_radius())
    if denoise:
        if fill_threshold > 0:
            r += decision.decision_radius(window) if halo else gaussian_radius(2.0 * window)
        r += CLASSICAL_MEDIAN_PASSES  # 1 px per 3x3 median
        if fill_threshold > 0 and halo:
            r += seam_reach()  # the image's cross-fade across the vote's changes of slice (blend.py)
    return r


class ClassicalEngine:
    """A classical focus measure on tiles: all slices of the window, streamed one at a time."""

    single_tile = False
    feather = 0  # tiles are exact: nothing to blend
    #: The automatic tile budget on the CPU is capped here, not at 40% of free memory (up to 4 GB): 8 x 9000²
    #: uint16 from a path took 55.9 s in 4 tiles (3.6 GB anonymous memory), 54.8 s in 9 (2 GB budget), 56.5 s
    #: in 16 (1 GB, 1.5 GB anonymous: the rest is the 81-Mpx outputs); 1.5 GB keeps 64 x 2048² in one tile
    #: even with the halo decision (272 B/px). benchmarks/bench_memory.py, RESULTS.md issue 29.
    max_budget = 3 << 29  # 1.5 GiB
    estimate_s = None  # classical runs take seconds: nothing to warn about

    def __init__(self, stack: FocalStack, t: int, method: str, device: torch.device, *, channel: int | None,
                 window: int, denoise: bool, fill_threshold: float = 0.25, exclude: Sequence[int] = (),
                 halo: decision.Decision = decision.LEGACY) -> None:
        self.stack, self.t, self.method, self.device = stack, t, method, device
        keep = [z for z in range(stack.n_slices) if z not in set(exclude)]
        self.keep = None if len(keep) == stack.n_slices else keep
        self.channel, self.window, self.denoise, self.fill_threshold = channel, window, denoise, fill_threshold
        self.halo = halo  # the decision (decision.resolve_decision; falsy: legacy)
        self.overlap, self.min_overlap = classical_margins(method, window, denoise, fill_threshold, halo)

    def bytes_per_pixel(self) -> float:
        return HALO_BYTES_PER_PIXEL if self.halo else CLASSICAL_BYTES_PER_PIXEL

    def schedule(self, windows: Sequence[tuple[slice, slice]]) -> None:
        """Nothing to do: slices are read ahead within each tile instead."""

    def close(self) -> None:
        pass

    def maps(self, window: tuple[slice, slice], progress: ProgressFn | None,
             cancel: threading.Event | None) -> FocusMaps:
        zs = self.keep or list(range(self.stack.n_slices))
        read = lambda i: self.stack.focus_window(zs[i], self.t, self.channel, window)  # noqa: E731
        return renumber(classical_maps(read, len(zs), self.method, self.device, window=self.window,
                                       fill_threshold=self.fill_threshold, denoise=self.denoise, halo=self.halo,
                                       origin=(window[0].start or 0, window[1].start or 0), progress=progress,
                                       cancel=cancel), self.keep)
