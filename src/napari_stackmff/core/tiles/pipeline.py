"""The model-agnostic tile loop that classical measures and networks both plug into.

Data flows one way: stack -> focus images -> per-slice sharpness (classical) or logits (model)
-> index map (+ sub-slice refinement, confidence) -> gather the original pixels. Gathering means
every output pixel is a value that exists in some slice: 16-bit stays 16-bit, RGB stays RGB.

Every method runs tile by tile (:mod:`.tiling`): a tile is all slices of one (y, x) window with a
margin, the engine's maps are computed on it and only its centre is kept. The tile side comes from
a memory budget, so memory is bounded by the tile, not by the image. Engines (the classical ones in
:mod:`..fusion`, the networks' ``ModelEngine`` in :mod:`..models.inference`) implement
:class:`TileEngine`; nothing here knows which engine it drives.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import StackMFFError
from ..io.stack import FocalStack
from . import decision
from .blend import SoftBlend, seam_fade_window, soft_blend_window
from .classical import gaussian_blur
from .heap import heap_reuse
from .tiling import (
    Tile,
    auto_tile_side,
    balance_tile,
    iter_tiles,
    memory_budget,
    round_overlap,
)

ProgressFn = Callable[[int, int, str], None]


class FusionCancelled(Exception):
    """Raised inside fuse() when the caller's cancel event is set."""


class EstimateMessage(str):
    """A progress message that also carries the run's time estimate (``seconds``).

    Callers that only show text (the widget) see a normal message; the CLI reads ``seconds`` to
    print it on its own line before a long wait. Appending a label (``sub_progress``) keeps it.
    """

    seconds: float

    def __new__(cls, text: str, seconds: float) -> "EstimateMessage":
        obj = super().__new__(cls, text)
        obj.seconds = float(seconds)
        return obj

    def __add__(self, other: str) -> "EstimateMessage":
        return EstimateMessage(str(self) + other, self.seconds)


@dataclass
class FocusMaps:
    """Per time point: focus map (sub-slice), integer index and confidence, all (H, W).

    ``prob`` (N, H, W): the per-slice probabilities the index is the argmax of, for order-free models
    (whose slice numbers must not be averaged): tiles are cross-faded on these, not on the focus map.
    """

    focus: torch.Tensor
    index: torch.Tensor
    confidence: torch.Tensor
    prob: torch.Tensor | None = None
    #: (H, W) bool: pixels whose slice the halo vote decided (no detail of their own); a change of slice
    #: among them is cross-faded in the image (blend.seam_fade_window). None: no such pixels.
    flat: torch.Tensor | None = None


# ----------------------------------------------------------------------------------- helpers
def sub_progress(progress: ProgressFn | None, part: int, parts: int, label: str = "") -> ProgressFn | None:
    """Progress of one part of a run (a time point, a tile) reported as progress of the whole run."""
    if progress is None:
        return None
    report = progress

    def sub(done: int, total: int, message: str) -> None:
        report(part * total + done, parts * total, message + label)

    return sub


def check_cancel(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise FusionCancelled()


def _to_tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(img))
    if device.type == "cuda":
        t = t.pin_memory().to(device, non_blocking=True)
    elif device.type != "cpu":
        t = t.to(device)
    return t


_native_lock = threading.Lock()
_native_users = 0
_native_saved = True


@contextmanager
def native_cpu_conv(device: torch.device) -> Iterator[None]:
    """Run CPU convolutions with ATen's kernels instead of oneDNN's while a focus measure runs.

    oneDNN picks its 3x3 kernels by image size, so a tile could round differently from the whole
    image (1e-7 relative) and flip near-ties; ATen's kernels compute each pixel the same way at
    any size (and are faster for these small one-channel filters). Not for the wide fill blur:
    ATen's im2col would need (taps x H x W) floats there, and oneDNN's 1-D kernels are
    size-invariant (the tiling tests check it). The switch is process-wide, so it is
    reference-counted across threads.
    """
    global _native_users, _native_saved
    if device.type != "cpu":
        yield
        return
    with _native_lock:
        if _native_users == 0:
            _native_saved = torch.backends.mkldnn.is_available() and torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
        _native_users += 1
    try:
        yield
    finally:
        with _native_lock:
            _native_users -= 1
            if _native_users == 0:
                torch._C._set_mkldnn_enabled(_native_saved)


#: Devillard's 19 compare-exchanges that leave the median of 9 values in position 4.
_MED9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
         (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median3(x: torch.Tensor) -> torch.Tensor:
    """3×3 median of an (H, W) map: removes isolated wrong picks without moving edges.

    A min/max sorting network over the 9 shifted views: the same values as a sort-based median,
    in ~11 maps of memory instead of a (H, W, 9) copy plus the sort's indices.
    """
    h, w = x.shape
    p = F.pad(x[None, None], (1, 1, 1, 1), mode="replicate")[0, 0]
    out = torch.empty_like(x)
    for r0 in range(0, h, MEDIAN_BAND_ROWS):  # in bands: the network's ~11 temporaries are a band's
        r1 = min(h, r0 + MEDIAN_BAND_ROWS)
        v = [p[r0 + dy:r1 + dy, dx:dx + w] for dy in range(3) for dx in range(3)]
        for a, b in _MED9:
            v[a], v[b] = torch.minimum(v[a], v[b]), torch.maximum(v[a], v[b])
        out[r0:r1] = v[4]
    return out


#: 3×3 medians on the classical focus map: the second pass removes the two- and three-pixel clusters of wrong
#: picks the first leaves. Side by side (2026-12-07, RESULTS.md issue 26): 24 synthetic stacks (wavelet) PSNR
#: 27.27 -> 27.27 dB (+0.005), focus MAE 0.732 -> 0.714, within ±1 88.1 -> 88.4 %; bench_real.py Q4 up on 9 of
#: 11 real stacks (+0.0001 to +0.0016), the beetle -0.0002. A Gaussian of sigma 1.5 instead: cells3d -0.006,
#: rpi_disc -0.005 (it averages depths across depth edges).
CLASSICAL_MEDIAN_PASSES = 2

#: Rows per band of :func:`median3` (exact: each band reads its own rows of the padded map).
MEDIAN_BAND_ROWS = 256


def fill_low_confidence(focus: torch.Tensor, conf: torch.Tensor, threshold: float, sigma: float) -> torch.Tensor:
    """Where no slice clearly wins (flat, textureless areas) take the focus of confident neighbours.

    Normalised convolution: blur(conf·focus)/blur(conf), blended in as confidence drops below
    ``threshold``. Textured pixels keep their own decision; flat ones (which look the same in
    every slice anyway) stop producing salt-and-pepper in the focus map.
    """
    if threshold <= 0:
        return focus
    w = conf * conf
    num = gaussian_blur(w * focus, sigma)
    den = gaussian_blur(w, sigma)
    filled = torch.where(den > 1e-12, num / den.clamp_min(1e-12), focus)
    alpha = (conf / threshold).clamp(0, 1)
    return alpha * focus + (1 - alpha) * filled


def peak_maps(state: dict[str, torch.Tensor], n: int, *, window: int, fill_threshold: float, denoise: bool,
              halo: decision.Decision = decision.LEGACY, origin: tuple[int, int] = (0, 0)) -> FocusMaps:
    """Maps from a streamed argmax: ``state`` holds the best score ("best"), its slice ("idx"), its
    neighbours' scores ("left", "right"; NaN at the stack's ends) and the sum over slices ("total"); for the
    glow decision also the summed focus images ("luma") and the winning slice's brightness ("lit").
    ``halo``: the decision (decision.resolve_decision; falsy: the legacy decision); ``origin``: the
    maps' top-left pixel in the image (the halo vote's blocks lie on the image's grid). Used by the
    streaming and the device-resident classical engines. The state is consumed: its maps are taken out
    (emptying the dict) and reused in place, so each is freed once used (the streaming state is most of a
    tile's memory)."""
    best, idx, left, right, total = (state.pop(k) for k in ("best", "idx", "left", "right", "total"))
    luma, lit = state.pop("luma", None), state.pop("lit", None)
    state.clear()
    # Sub-slice peak: vertex of the parabola through (z-1, z, z+1); none at the stack's ends.
    denom = left - 2 * best + right
    offset = torch.sub(left, right, out=left).mul_(0.5)
    del left, right
    offset.div_(torch.where(denom.abs() > 1e-20, denom, torch.ones_like(denom)))
    offset = torch.nan_to_num_(offset, nan=0.0).clamp_(-0.5, 0.5)
    offset.masked_fill_(~(denom < 0), 0.0)
    del denom
    focus = offset.add_(idx.to(best.dtype))
    del offset
    conf = total.div_(n).div_(best.clamp_min(1e-20)).neg_().add_(1).mul_(n / (n - 1)).clamp_(0, 1)  # 1 - mean/best
    del total
    conf.masked_fill_(~(best > 1e-12), 0.0)
    decided = None
    if halo and denoise and fill_threshold > 0:  # defocus halos take the dominant detail's slice nearby
        gate = contrast = None
        if halo.gated and luma is not None and lit is not None:
            mean = luma.div_(n)
            gate = decision.glow_gate(lit, mean, halo.levels)
            del lit
            if bool(gate.any()):
                contrast = decision.relative_energy(best, mean, halo.levels)
            del mean, luma
        if gate is not None and contrast is None:
            # nothing lit by a defocused neighbour in this tile: the legacy decision, without the vote's work
            decided = torch.zeros_like(gate)
        else:
            dom, in_halo, share = decision.halo_vote(best, idx, n, halo.hi, origin=origin, contrast=contrast)
            del contrast
            decided = in_halo > 0.5
            if gate is not None:
                decided &= gate
                del gate
            torch.where(decided, dom.to(focus.dtype), focus, out=focus)
            torch.where(decided, share, conf, out=conf)
            del dom, in_halo, share
    maps = finish_maps(focus, conf, n, window=window, fill_threshold=fill_threshold, denoise=denoise,
                       decided=decided, median_passes=CLASSICAL_MEDIAN_PASSES)
    maps.flat = decided
    return maps


def finish_maps(
    focus: torch.Tensor, conf: torch.Tensor, n: int, *, window: int, fill_threshold: float, denoise: bool,
    decided: torch.Tensor | None = None, median_passes: int = 1,
) -> FocusMaps:
    """Shared clean-up of a raw focus map: low-confidence fill (the ``decided`` pixels of the halo decision,
    decision.py, keep their focus and are not filled), ``median_passes`` 3×3 medians, integer index."""
    if denoise:
        if decided is not None:
            conf = torch.where(decided, conf.clamp_min(fill_threshold), conf)
        focus = fill_low_confidence(focus, conf, fill_threshold, sigma=2.0 * window)
        for _ in range(median_passes):
            focus = median3(focus)
    focus = focus.clamp(0, n - 1)
    index = torch.round(focus).long().clamp(0, n - 1)
    return FocusMaps(focus=focus, index=index, confidence=conf)


def prob_maps(prob: torch.Tensor, conf: torch.Tensor) -> FocusMaps:
    """(N, H, W) per-slice probabilities -> maps whose index is their argmax (never an average of slices).

    Sub-slice refinement from the two index neighbours: for an ordered stack they are the neighbouring
    focus planes; for a shuffled one they carry ~no probability and change nothing. It never moves the
    focus by more than half a slice, so round(focus) is always the winner.
    """
    n = prob.shape[0]
    pmax, idx = prob.max(dim=0)
    lo, hi = (idx - 1).clamp(0, n - 1), (idx + 1).clamp(0, n - 1)
    p_lo = prob.gather(0, lo[None])[0] * (lo != idx)
    p_hi = prob.gather(0, hi[None])[0] * (hi != idx)
    focus = (lo * p_lo + idx * pmax + hi * p_hi) / (p_lo + pmax + p_hi).clamp_min(1e-30)
    focus = torch.minimum(torch.maximum(focus, idx - 0.49), idx + 0.49)
    return FocusMaps(focus=focus, index=idx, confidence=conf, prob=prob)


def renumber(maps: FocusMaps, keep: Sequence[int] | None) -> FocusMaps:
    """Maps computed over the slices ``keep`` (some left out) -> maps in the stack's own slice numbers
    (probabilities: zero for the slices left out)."""
    if keep is None:
        return maps
    prob = None
    if maps.prob is not None:
        prob = maps.prob.new_zeros((max(keep) + 1, *maps.prob.shape[1:]))
        prob[list(keep)] = maps.prob
    k = torch.tensor(list(keep), dtype=torch.float32, device=maps.focus.device)
    lo = maps.focus.floor().long().clamp(0, len(k) - 1)
    hi = (lo + 1).clamp(max=len(k) - 1)
    focus = k[lo] + (maps.focus - lo.float()) * (k[hi] - k[lo])  # sub-slice positions between kept slices
    index = k.long()[maps.index]
    return FocusMaps(focus=torch.where(focus.round().long() == index, focus, index.float()), index=index,
                     confidence=maps.confidence, prob=prob, flat=maps.flat)


# ---------------------------------------------------------------------------------- gather
def gather(stack: FocalStack, index: np.ndarray, t: int = 0) -> np.ndarray:
    """All-in-focus image: each pixel copied from the slice ``index`` names (dtype kept)."""
    h, w = stack.yx_shape
    return gather_window(stack, index, t, (slice(0, h), slice(0, w)))


def gather_window(stack: FocalStack, index: np.ndarray, t: int, window: tuple[slice, slice]) -> np.ndarray:
    """All-in-focus pixels of one (y, x) window; ``index`` has the window's shape.

    In-memory arrays gather in one vectorised step; lazy data (memmap/zarr/dask) is read slice
    by slice, only the window and only the slices some pixel uses: O(window) memory.
    """
    data = stack.data
    ys, xs = window
    if isinstance(data, np.ndarray):
        sub = data[t, :, ys, xs] if stack.has_time else data[:, ys, xs]
        idx = index[None, ..., None] if stack.has_channels else index[None]
        return np.take_along_axis(sub, idx, axis=0)[0]
    out = np.empty(index.shape + ((stack.n_channels,) if stack.has_channels else ()), dtype=stack.dtype)
    for z in np.unique(index):
        mask = index == z
        out[mask] = stack.read_window(int(z), t, window)[mask]
    return out


def height_from_focus(stack: FocalStack, focus: np.ndarray) -> np.ndarray | None:
    """Focus map (slice units) -> physical z, interpolating between (possibly uneven) positions."""
    if stack.z_positions is None:
        return None
    z = stack.z_positions
    return np.interp(focus, np.arange(len(z)), z).astype(np.float32)


class TileEngine(Protocol):
    """Computes finished focus maps of one time point on any (y, x) window of the stack."""

    overlap: int  # margin a tile needs on each side
    min_overlap: int  # the least margin a small user tile may shrink it to (= overlap when exactness needs it)
    single_tile: bool  # the method is global (e.g. the official resize inference): never tile
    feather: int  # px over which a tile's maps fade into its upper/left neighbour's (0: exact centre crop)
    estimate_s: float | None  # the run's estimated seconds, once the engine could tell (None: not estimated)

    def bytes_per_pixel(self) -> float:
        """Peak working memory per tile pixel, to size tiles from a budget."""

    def schedule(self, windows: Sequence[tuple[slice, slice]]) -> None:
        """The read windows about to be asked for, in order (lets an engine read ahead)."""

    def close(self) -> None:
        """Stop any read-ahead."""

    def maps(self, window: tuple[slice, slice], progress: ProgressFn | None,
             cancel: threading.Event | None) -> FocusMaps:
        """Finished maps on the read window (its borders are cropped off by the caller)."""


@dataclass
class TileOutput:
    """One tile's share of the result: where it goes and its pixels there."""

    write: tuple[slice, slice]
    all_in_focus: np.ndarray
    focus: np.ndarray  # float32, slice units
    confidence: np.ndarray  # float32


def plan_tile(stack: FocalStack, engine: TileEngine, device: torch.device, tile: int | None = None,
              budget: int | None = None, blend: SoftBlend | None = None) -> tuple[int, int]:
    """(tile side, overlap) for this engine: the user's tile, or the largest that fits the budget.

    A soft blend widens the margin by its filter's reach, so tiles still meet without seams.
    """
    h, w = stack.yx_shape
    if engine.single_tile:
        return max(h, w), 0
    reach = blend.support if blend is not None else 0
    overlap = round_overlap(engine.overlap + reach)
    if tile is None:
        gather_bytes = stack.dtype.itemsize * stack.n_channels * 2 + 12  # gathered + focus/conf out
        if blend is not None:
            gather_bytes += blend.bytes_per_pixel(stack.n_channels) + 8 * (stack.n_channels + 1)
        if budget is None:  # an engine may cap the automatic budget where bigger tiles buy nothing
            budget = memory_budget(str(device))
            cap = getattr(engine, "max_budget", None)
            budget = min(budget, cap) if cap and str(device).startswith("cpu") else budget
        tile = auto_tile_side(engine.bytes_per_pixel() + gather_bytes, int(budget), overlap=overlap)
        tile = balance_tile(h, w, tile, overlap)
    tile = int(tile)
    if tile < max(h, w) and tile - 2 * overlap < 64:
        # A small tile asked for: models may give up some margin, exact methods may not.
        overlap = max(round_overlap(engine.min_overlap + reach), (tile - 64) // 2 // 16 * 16)
        if tile - 2 * overlap < 16:
            raise StackMFFError(f"tile {tile} is too small for this method's {overlap} px overlap; use tile >= "
                                f"{2 * overlap + 32} (or leave it to choose from memory).")
    return tile, overlap


class TileFeather:
    """Cross-fades each tile's maps into its upper and left neighbours' over ``band`` pixels.

    Why: a network's tiles disagree slightly (V2 normalises each tile by its own statistics), and
    hard centre-crop stitching turns that into a step (a seam) at every tile boundary. The blend
    sits at the start of each tile's write window, where the earlier neighbour's read margin
    still covers it: tiles come in row-major order, so every output pixel is still written once,
    by its own tile, and one tile's maps are enough. A raised-cosine ramp goes from the
    neighbour (at the boundary, continuing its side) to this tile; rows are blended first, then
    the row of tiles above, so corners are covered.

    The planes blended are any (C, h, w) stack: focus and confidence for ordered models, the per-slice
    probabilities and confidence for order-free ones (the winner is then read again from the blend).
    """

    def __init__(self, band: int, width: int) -> None:
        self.band, self.width = band, width
        self.ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(band) + 0.5) / band)).astype(np.float32)
        self._left: np.ndarray | None = None  # (C, read rows, band): previous tile's maps right of its write
        self._above: np.ndarray | None = None  # (C, band, width) row of tiles above: maps below its write
        self._below: np.ndarray | None = None  # filled by this row of tiles

    def _fade(self, old: np.ndarray, new: np.ndarray, axis: int) -> None:
        """new[..., :k] (along ``axis``) <- ramp-weighted mix of old and new, in place."""
        k = min(self.band, new.shape[axis], old.shape[axis])
        r = self.ramp[:k] if axis == -1 else self.ramp[:k, None]
        sl = (..., slice(0, k)) if axis == -1 else (..., slice(0, k), slice(None))
        new[sl] = old[sl] + r * (new[sl] - old[sl])

    def blend(self, tl: Tile, maps: np.ndarray) -> np.ndarray:
        """(C, read h, read w) maps of tile ``tl`` -> blended (C, write h, write w)."""
        (ys, xs), (wy, wx), (cy, cx) = tl.read, tl.write, tl.crop
        band = self.band
        if self._above is None or self._above.shape[0] != maps.shape[0]:
            self._above = np.zeros((maps.shape[0], band, self.width), np.float32)
            self._below = np.zeros_like(self._above)
        assert self._below is not None
        rows = maps[:, :, cx].copy()  # this tile's columns over all its read rows
        if wx.start > 0 and self._left is not None:
            self._fade(self._left, rows, -1)
        self._left = maps[:, :, cx.stop:cx.stop + band].copy() if wx.stop < xs.stop else None
        out = rows[:, cy]
        if wy.start > 0:
            self._fade(self._above[:, :, wx], out, -2)
        below = rows[:, cy.stop:cy.stop + band]
        self._below[:, :below.shape[1], wx] = below
        if wx.stop == self._above.shape[-1]:  # end of a row of tiles
            self._above, self._below = self._below, self._above
        return out


def iter_fused_tiles(stack: FocalStack, engine: TileEngine, t: int, tile: int, overlap: int, *,
                     progress: ProgressFn | None = None, cancel: threading.Event | None = None,
                     timings: dict[str, float] | None = None, blend: SoftBlend | None = None,
                     fade: bool = True) -> Iterator[TileOutput]:
    """Fuse one time point tile by tile (row-major); only one tile's data is in memory at a time.

    An engine that estimates the run time (a model, after its first tile) reports it through
    ``progress`` and in ``timings["estimate_s"]``. Tiles of engines with ``feather`` are
    cross-faded (:class:`TileFeather`). With ``blend`` the pixels are the soft blend
    (:mod:`core.blend`) instead of the hard gather; the focus and confidence maps are the same. ``fade``: the
    hard gather cross-fades changes of slice among the halo vote's flat pixels (blend.seam_fade_window).
    """
    h, w = stack.yx_shape
    tiles = list(iter_tiles(h, w, tile, overlap))
    timings = {} if timings is None else timings
    band = min(engine.feather, overlap)
    feather = TileFeather(band, w) if band > 0 and len(tiles) > 1 else None
    engine.schedule([tl.read for tl in tiles])
    try:
        with heap_reuse():  # big activations reuse freed memory (core/heap.py)
            for i, tl in enumerate(tiles):
                check_cancel(cancel)
                sub = sub_progress(progress, i, len(tiles), f" (tile {i + 1}/{len(tiles)})" if len(tiles) > 1 else "")
                t1 = time.perf_counter()
                maps = engine.maps(tl.read, sub, cancel)
                read_index = maps.index.cpu().numpy() if blend is not None else None
                flat = None  # the halo vote's flat pixels: their changes of slice are cross-faded (hard only)
                if fade and blend is None and maps.flat is not None and bool(maps.flat[tl.crop].any()):
                    flat, read_index = maps.flat.cpu().numpy(), maps.index.cpu().numpy()
                if feather is None:
                    index = maps.index[tl.crop].cpu().numpy()
                    focus = maps.focus[tl.crop].float().cpu().numpy()
                    conf = maps.confidence[tl.crop].float().cpu().numpy()
                elif getattr(maps, "prob", None) is None:
                    focus, conf = feather.blend(tl, torch.stack((maps.focus, maps.confidence)).float().cpu().numpy())
                    index = np.rint(focus).astype(np.int64).clip(0, stack.n_slices - 1)
                else:  # order-free: blend the probabilities, read the winner again (slice numbers never averaged)
                    planes = feather.blend(tl, torch.cat((maps.prob, maps.confidence[None])).float().cpu().numpy())
                    m = prob_maps(torch.from_numpy(planes[:-1]), torch.from_numpy(planes[-1]))
                    focus, conf, index = m.focus.numpy(), m.confidence.numpy(), m.index.numpy()
                del maps
                if engine.estimate_s is not None:
                    timings["estimate_s"] = engine.estimate_s
                t2 = time.perf_counter()
                if blend is None:
                    # an engine holding the tile's slices on its device gathers there (classical_device.py)
                    device_gather = getattr(engine, "gather", None)
                    aif = device_gather(tl.crop, index) if device_gather is not None else None
                    if aif is None:
                        aif = gather_window(stack, index, t, tl.write)
                    if flat is not None:
                        aif = seam_fade_window(stack, read_index, flat, t, tl.read, tl.crop, aif)
                else:
                    read_index[tl.crop] = index  # the written part follows the (feathered) output map
                    guide = gather_window(stack, read_index, t, tl.read)
                    aif = soft_blend_window(stack, read_index, t, tl.read, tl.crop, guide, blend)
                timings["focus_s"] = timings.get("focus_s", 0.0) + t2 - t1
                timings["gather_s"] = timings.get("gather_s", 0.0) + time.perf_counter() - t2
                yield TileOutput(write=tl.write, all_in_focus=aif, focus=focus, confidence=conf)
    finally:
        engine.close()
