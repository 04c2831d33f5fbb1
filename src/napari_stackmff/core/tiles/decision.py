"""Which slice wins beside a sharp edge and where no slice is sharp: the classical decision (issue 26).

A streamed argmax over slices picks *some* slice everywhere. On a brightfield stack (a dark specimen on
a bright field) that makes **halo rings**: a defocused dark edge spreads into the bright field (and the
bright field into the dark body) as a broad ramp whose detail energy beats the flat, sharp background,
so each ring picks the slice whose blurred edge passes there. Measured on the pseudoscorpion leg
(14 slices, wavelet measure, window 9; crop rows 1000:1800, cols 1200:2000): ramp ~2e-5, flat
background ~4e-6 (noise), the sharp edge a few tens of px away ~1.7e-3, 100x the ramp; the ratio
``best / max of best within HALO_RADIUS`` is 0.005-0.03 in the rings, 0.4-1 on the edge and far from it.

**Halo vote** (:func:`halo_vote`): a pixel that weak beside a much stronger peak takes the slice that the
detail around it votes for, each pixel voting for its own slice with its energy squared: the sharp
edge's slice, in which the background right beside the edge is clean (z-order: the background is seen
correctly where the edge is in focus). Beside detail the **near vote** (:data:`NEAR_SIGMA`) decides instead:
the slice of the nearest detail, not of the strongest within the wide vote's reach (between specimens at
different depths each slice shows the other's defocused shadow). Where the vote changes slice in the open
field the image cross-fades the two over a few px (blend.seam_fade_window: no seam). Other unconfident
pixels (the legacy confidence ``(1 - mean/best)·n/(n-1)`` below the fill threshold) take the legacy fill
(pipeline.fill_low_confidence):
the vote, reaching :data:`HALO_RADIUS`, already decides the inside of a body up to its confident outline.
A multi-scale fill that voted per slice at 18 and 54 px (for a body the vote did not reach at radius 64)
cost the diamond ring 0.009 of Q4 (below its best single slice) once the radius was 128, and changed
0.2 % of the pseudoscorpion's pixels by more than 10 grey levels, none visibly (2026-12-07; RESULTS.md).

Every step is a filter with a finite radius (:func:`decision_radius`) on the image's own grid (the votes'
blocks too), so tiles with that margin equal the untiled result. Side by side on 24 synthetic stacks
(benchmarks/bench_classical.py --decisions legacy,halo, wavelet; none is a bright field, so this is the decision forced): PSNR 27.27 ->
27.29 dB, focus MAE 0.73 -> 0.69 slices, within ±1 88.1% -> 87.3% (2026-12-07); a coarse-window noise test
tried before lost 0.06 dB and 6% within ±1 and is gone.
``decision="auto"`` (the default) takes it on a bright field, where the rings form, and elsewhere the **glow
decision**: the same vote only where a defocused neighbour lights or darkens the winning slice and the pixel is
weak in relative contrast too (:func:`glow_gate`; bright glyphs and cells on a dark ground; :data:`DECISIONS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .classical import box_mean, gaussian_blur, gaussian_radius

#: The classical decisions: "legacy" (confidence from best/mean, one fill scale), "halo" (the halo vote,
#: then the same fill), "glow" (the halo vote only where the winning slice is lit or darkened by a defocused
#: neighbour, :func:`glow_gate`) and "auto" (the default): halo on a bright field (:func:`bright_field_share`),
#: else glow. Not halo everywhere: on the synthetic "cells" scene (bright cells of very different brightness
#: on a dark ground) the vote moves dim in-focus cells to a brighter neighbour's slice (within ±1
#: 0.92-0.94 -> 0.70-0.76, seeds 0-2); the glow decision's contrast test keeps them.
DECISIONS = ("auto", "legacy", "halo", "glow")
DEFAULT_DECISION = "auto"


@dataclass(frozen=True)
class Decision:
    """The classical decision a fusion runs (:func:`resolve_decision` picks it): ``hi`` is :func:`halo_vote`'s
    threshold (0: the legacy decision, no vote); ``levels`` (black level, 1-99 percentile range of the focus
    images) turn on the glow decision's gates, which are measured in those units."""

    hi: float = 0.0
    levels: tuple[float, float] | None = None

    @property
    def name(self) -> str:
        return "legacy" if self.hi <= 0 else ("glow" if self.levels is not None else "halo")

    def __bool__(self) -> bool:  # a vote runs
        return self.hi > 0

    @property
    def gated(self) -> bool:
        return self.hi > 0 and self.levels is not None

    def streams_glow(self, denoise: bool, fill_threshold: float) -> bool:
        """Whether an engine must stream the glow gates' maps (the summed focus images, the winners' brightness):
        the glow decision, and the clean-up that the vote is part of is on."""
        return self.gated and denoise and fill_threshold > 0


LEGACY = Decision()

#: "auto" takes the halo decision when at least this share of the flattest pixels is bright (a bright
#: field). Measured on the middle slice as fuse() samples it (about 65k pixels): pseudoscorpion
#: (brightfield) 0.88, diamond ring (white backdrop) 1.0; every other real stack of ../shared/data
#: 0.0-0.29 (beetle, pcb, keyboard, leaves, cells3d, rpi disc, event stack); synthetic scenes 0.0-0.53
#: (cells 0.0, fibres 0.36-0.53, text 0.24-0.38). The threshold sits between. Noise-free synthetic text on
#: white (bench_events_model.py) measures 0.76-0.78: it takes the halo decision, at HALO_HI (THICK_DARK_SHARE).
BRIGHT_FIELD_SHARE = 0.7


def _unit_luma(image: np.ndarray) -> np.ndarray | None:
    """The image's luma (mean of channels) scaled so its 1-99 percentile range is [0, 1]; None if flat."""
    img = np.asarray(image, np.float32)
    if img.ndim == 3:
        img = img.mean(-1)
    lo, hi = np.percentile(img, [1, 99])
    return None if hi <= lo else (img - lo) / (hi - lo)


def bright_field_share(image: np.ndarray) -> float:
    """Share of the flattest 30% of pixels (local variance over 9x9) that lie in the top 30% of the
    1-99 percentile range: ~1 for a specimen on a bright field (transmitted light, a white backdrop), ~0
    for a dark ground (fluorescence), in between for scenes textured all over."""
    from scipy import ndimage as ndi

    x = _unit_luma(image)
    if x is None:
        return 0.0
    var = ndi.uniform_filter(x * x, 9) - ndi.uniform_filter(x, 9) ** 2
    flat = var <= np.quantile(var, 0.3)
    return float(np.mean(x[flat] > 0.7))


def dark_share(image: np.ndarray) -> float:
    """Share of pixels below 0.4 of the 1-99 percentile range (luma of RGB): large under a thick specimen."""
    x = _unit_luma(image)
    return 0.0 if x is None else float(np.mean(x < 0.4))


def focus_levels(focus: np.ndarray) -> tuple[float, float]:
    """(black level, range): the 1 and 99 percentiles of a focus image (a view of the middle slice) and their
    difference (at least 1e-6), the units of the glow decision's gates."""
    lo, hi = np.percentile(np.asarray(focus, np.float32), [1, 99])
    return float(lo), float(max(hi - lo, 1e-6))


def resolve_decision(name: str | None, sample: np.ndarray | None = None, focus: np.ndarray | None = None) -> Decision:
    """The decision to fuse with: "auto" takes the halo decision when ``sample``, a view of the stack's middle
    slice, is a bright field, else the glow decision; "halo" and "glow" take theirs anyway, "legacy" the plain
    clean-up. :data:`HALO_HI_BRIGHT` under a thick dark specimen on a bright field, else :data:`HALO_HI`.
    ``focus``: the sample as the focus measure sees it (``to_focus_image``; default: its channel mean scaled by
    the dtype), for the glow decision's levels. One clear line for an unknown name."""
    from ..errors import StackMFFError
    from ..io.stack import to_focus_image

    name = DEFAULT_DECISION if name is None else str(name)
    if name not in DECISIONS:
        raise StackMFFError(f"decision must be one of {', '.join(DECISIONS)}, got {name!r}.")
    if name == "legacy":
        return LEGACY
    bright = sample is not None and bright_field_share(sample) >= BRIGHT_FIELD_SHARE
    if name == "halo" or (name == "auto" and bright):
        thick = bright and dark_share(sample) >= THICK_DARK_SHARE
        return Decision(HALO_HI_BRIGHT if thick else HALO_HI)
    if focus is None and sample is not None:
        focus = to_focus_image(np.asarray(sample), rgb=False)
    return Decision(HALO_HI, focus_levels(focus) if focus is not None else (0.0, 1.0))

#: Halo neighbourhood radius (px): the defocus blur of the pseudoscorpion's outer slices spreads the
#: dark edge ~30-50 px into the bright field, and in a thick specimen the outline seen out of focus lies
#: inside the sharp one: at full size (2592 px) slice 7's bright ramp reaches ~100 px into the leg's dark
#: body, where 64 px left speckle of that slice (docs/img/issue26_fullres_radius.png; tests/test_decision.py
#: thick specimen: 19% of the band 40-130 px inside wrong at 64, 0 at 128). On synthetic stacks 32-64
#: measured alike (PSNR within 0.01 dB); 128 costs no time (a van Herk max filter, a box-Gaussian vote).
HALO_RADIUS = 128
#: Halo ratio below HALO_LO: in a stronger edge's halo; above HALO_HI: the pixel's own detail (a pixel is
#: decided by the vote below the midpoint, 0.06). 0.01-0.04 left rings inside the leg's dark body
#: (ratio 0.03-0.1 there); on synthetic stacks both measured alike.
HALO_LO, HALO_HI = 0.02, 0.1
#: HALO_HI under a thick dark specimen on a bright field (midpoint 0.16). 0.1 left thin lines ~5-10 px
#: inside the pseudoscorpion leg's outline: the knee of the edge of slices 1-2 off focus, whose outline lies
#: a few px inside the sharp one (ratio 0.08-0.17 at 768 px; docs/img/issue26_halo_hi.png); 0.3 removes
#: them, 0.5 lost 0.028 of Q4 there (bench_real.py at 768 px: 0.8345 / 0.8317 / 0.8064 for 0.1 / 0.3 / 0.5).
#: Only there (:data:`THICK_DARK_SHARE`): on dark text on white (synthetic, noise-free) 0.3 moved weak strokes
#: to a stronger neighbour's slice, 20.55 -> 18.60 and 15.85 -> 14.92 dB; and on 24 synthetic stacks with the
#: halo decision forced, 27.32 -> 26.90 dB.
HALO_HI_BRIGHT = 0.3
#: A bright field takes HALO_HI_BRIGHT when at least this share of its middle slice is dark (below 0.4 of the
#: 1-99 percentile range): the knees come from thick bodies. Measured: pseudoscorpion 0.50, the knee test's
#: thick specimen 0.26; synthetic text on white 0.04-0.05, the diamond ring 0.06, the sparse brightfield
#: test object 0.16.
THICK_DARK_SHARE = 0.2

#: Blur of the halo vote (px). Half the radius: with 32 at radius 128 the vote's reach stopped inside the
#: leg's body and left an elliptic seam between two slices there (full size, pseudoscorpion).
VOTE_SIGMA = HALO_RADIUS / 2


def max_filter(x: torch.Tensor, radius: int) -> torch.Tensor:
    """(H, W) max over a (2r+1)² square, separable; outside the image counts as absent."""
    if radius <= 0:
        return x
    if x.device.type == "cpu" and x.dtype == torch.float32:
        from scipy.ndimage import maximum_filter1d

        a = maximum_filter1d(x.numpy(), 2 * radius + 1, axis=0, mode="nearest")
        return torch.from_numpy(maximum_filter1d(a, 2 * radius + 1, axis=1, mode="nearest"))
    k = 2 * radius + 1
    y = F.max_pool2d(x[None, None], (1, k), stride=1, padding=(0, radius))
    return F.max_pool2d(y, (k, 1), stride=1, padding=(radius, 0))[0, 0]


def halo_vote(best: torch.Tensor, idx: torch.Tensor, n: int, hi: float | None = None,
              origin: tuple[int, int] = (0, 0), contrast: torch.Tensor | None = None,
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(slice of the dominant detail nearby, how much each pixel lies in a stronger peak's halo in [0, 1],
    the winning slice's share of the votes).

    Beside a sharp edge the background is right in the edge's own slice (flat and clean there); every
    other slice shows the edge's defocused spread (the rings). So the vote: every pixel votes for its
    slice with its energy squared, blurred with sigma = :data:`VOTE_SIGMA`; the sharp edge outvotes
    its own halo by ~10^4 (100x the energy). A plain max filter carried the edge's slice in square blocks,
    and energy (not squared) let the rings' own votes win (both tried on the leg). ``hi``: the ratio above
    which a pixel keeps its own detail (default :data:`HALO_HI`); ``origin``: the maps' top-left pixel in
    the image (the votes' blocks lie on the image's grid); ``contrast``: the same energies relative to the local
    brightness (:func:`relative_energy`, the glow decision): a pixel is then in a halo only when it is weak
    beside a stronger peak on both counts.
    """
    # in place where it can be: at 2048² every map is 16 MB, and this is the widest step of a tile
    ratio = max_filter(best, HALO_RADIUS).clamp_min_(1e-20)
    ratio = torch.div(best, ratio, out=ratio)
    if contrast is not None:  # a dim object in its own focus is as contrasty as a bright one: not a halo
        rel = max_filter(contrast, HALO_RADIUS).clamp_min_(1e-20)
        torch.maximum(ratio, torch.div(contrast, rel, out=rel), out=ratio)
        del rel
    lo, hi_ = HALO_LO, HALO_HI if hi is None else hi
    halo = ratio.sub_(lo).div_(hi_ - lo).clamp_(0, 1).neg_().add_(1)  # 1 - ramp(ratio)
    if not bool((halo > 0).any()):
        return torch.zeros_like(best), halo, torch.zeros_like(best)
    # slices nobody picked get no votes: skip their blurs (a count per slice, not torch.unique's sort of the map)
    used = torch.nonzero(torch.bincount(idx.reshape(-1), minlength=n)).flatten().tolist()
    sigmas = (VOTE_SIGMA, NEAR_SIGMA) if NEAR_SIGMA else (VOTE_SIGMA,)
    weight = best * best
    mode, share, total = _vote(idx, weight, used, sigmas[:1], origin)[0]
    if len(sigmas) > 1:  # beside detail, its own slice: where the near vote's density beats the wide one's
        mode_n, share_n, total_n = _vote(idx, weight, used, sigmas[1:], origin)[0]
        close = total_n >= total
        del total, total_n, weight
        torch.where(close, mode_n, mode, out=mode)
        torch.where(close, share_n, share, out=share)
        del close, mode_n, share_n
    return mode, halo, share


#: Blur (px) of the near vote: beside detail, the slice of the nearest detail, not of the strongest within
#: VOTE_SIGMA. A defocused edge darkens the open field around it in every slice but its own; where a weaker
#: specimen lies beside a stronger one at another depth, the wide vote gave the field right beside the
#: weak one the strong one's slice, in which the weak one's shadow shows (the cyan bands along the
#: pseudoscorpion's lower legs; the two-specimen test). Where the near vote's density (its total) beats the
#: wide one's, it decides. Measured in benchmarks/bench_seams.py (RESULTS.md, issue 26); 0: off.
NEAR_SIGMA = 16.0

#: The votes are blurred on a grid of blocks: sigma / 4 px, at most VOTE_BLOCK_MAX (the wide vote's 64 px on
#: 8 px blocks, the near vote's 16 px on 4 px blocks); the winner is read per block, the votes come back
#: bilinear. Blurring every slice's votes at full resolution took 4.9 of the pseudoscorpion's 11 s of
#: focus (14 x 2592 x 1944), and the near vote doubled it; the blocks' own steps fall in flat field,
#: where the image's cross-fade (blend.seam_fade_window) covers them. bench_seams.py, RESULTS.md issue 26.
VOTE_BLOCK_MAX = 8


def vote_block(sigma: float) -> int:
    """Side (px) of the blocks a vote of blur ``sigma`` is computed on."""
    return min(VOTE_BLOCK_MAX, max(1, int(sigma // 4)))


def _vote(idx: torch.Tensor, w: torch.Tensor, slices: Sequence[int], sigmas: Sequence[float],
          origin: tuple[int, int] = (0, 0)) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Weighted vote per slice at each blur in ``sigmas``: each pixel votes for its slice ``idx`` with weight
    ``w``, blurred with sigma. Per sigma: (winning slice as float, its share of the votes, all votes), at full
    size; ties go to the earlier slice. The votes are summed per block (:func:`vote_block`) on the grid of absolute image
    coordinates (``origin``: the map's top-left pixel in the image), so every tile sees the same blocks."""
    slices = [int(z) for z in slices]
    lut = torch.zeros(max(slices) + 1, dtype=torch.int32, device=idx.device)
    lut[torch.tensor(slices, device=idx.device)] = torch.arange(len(slices), dtype=torch.int32, device=idx.device)
    slot = lut[idx.long()] if idx.dtype != torch.int32 else lut[idx]  # int32 maps: a quarter of the memory
    names = torch.tensor(slices, dtype=w.dtype, device=w.device)
    h, w_ = idx.shape
    out = []
    for sigma in sigmas:
        f = vote_block(sigma)
        oy, ox = origin[0] % f, origin[1] % f
        votes = block_sums(slot, w, len(slices), f, (oy, ox)).div_(f * f)
        for k in range(len(slices)):
            votes[k] = gaussian_blur(votes[k].contiguous(), sigma / f)
        top, slot_c = votes.max(dim=0)  # the first maximum: ties go to the earlier slice
        total = votes.sum(dim=0)
        if f == 1:
            mode = names[slot_c]
        else:
            mode = names[_bilinear_argmax(votes, slot_c, (h, w_), (oy, ox), f)]
            top, total = block_up(top, f, (oy, ox), (h, w_)), block_up(total, f, (oy, ox), (h, w_))
        del votes, slot_c
        share = torch.where(total > 0, top.div_(total.clamp_min(1e-30)), torch.zeros_like(top))
        out.append((mode, share, total))
    return out


def block_sums(slot: torch.Tensor, weight: torch.Tensor, slots: int, f: int, offset: tuple[int, int]) -> torch.Tensor:
    """(slots, hl, wl): the sum of ``weight`` over each f x f block, per value of ``slot`` (an int32 map of
    values in [0, slots)), in one pass. ``offset``: where the map's top-left pixel lies in its block, so that
    maps of different windows share the image's block grid."""
    (h, w), (oy, ox) = slot.shape, offset
    hl, wl = -(-(h + oy) // f), -(-(w + ox) // f)
    by = (torch.arange(h, dtype=torch.int32, device=slot.device) + oy) // f
    bx = (torch.arange(w, dtype=torch.int32, device=slot.device) + ox) // f
    key = slot * (hl * wl)  # in place from here: one int32 map
    key.add_(by[:, None] * wl).add_(bx[None, :])
    sums = torch.zeros(slots * hl * wl, dtype=weight.dtype, device=weight.device)
    sums.index_add_(0, key.reshape(-1), weight.reshape(-1))
    return sums.view(slots, hl, wl)


def block_up(m: torch.Tensor, f: int, offset: tuple[int, int], shape: tuple[int, int]) -> torch.Tensor:
    """A block map (:func:`block_sums`' grid) back at full size ``shape``, bilinear (block centres at
    (i + 0.5) * f - 0.5 on the grid that starts ``offset`` px before the map)."""
    (oy, ox), (h, w) = offset, shape
    return F.interpolate(m[None, None], scale_factor=f, mode="bilinear", align_corners=False)[0, 0, oy:oy + h, ox:ox + w]


#: Pixels per band of :func:`_bilinear_argmax`'s edge work. Where the blocks' winners change often (a textured
#: specimen filling a 2048² tile) nearly every pixel is an edge pixel, and the int64 indices and float weights of
#: all of them at once set the halo decision's peak. With bands of 2^18 px (~30 MB of that work) and the slices'
#: votes counted, not sorted: 64 x 2048² bright field from a path 565-620 -> 507-516 MB peak anonymous memory, the
#: same maps (benchmarks/bench_memory.py, RESULTS.md session 20).
ARGMAX_BAND_PIXELS = 1 << 18


def _bilinear_argmax(votes: torch.Tensor, slot_c: torch.Tensor, shape: tuple[int, int], offset: tuple[int, int],
                     f: int) -> torch.Tensor:
    """Per full-size pixel, the slot whose bilinearly interpolated votes are highest, among the winners of the
    four blocks around it (where those agree, their winner): the argmax of the votes brought back at full
    size, without bringing back every slice's votes. Block-sized steps in the winner would show as seams."""
    (h, w), (oy, ox), (hl, wl) = shape, offset, slot_c.shape

    def axis(n: int, o: int, nc: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = (torch.arange(n, dtype=votes.dtype, device=votes.device) + o + 0.5) / f - 0.5
        p0 = torch.floor(p)
        frac = p - p0
        return p0.long().clamp(0, nc - 1), (p0.long() + 1).clamp(0, nc - 1), frac

    y0, y1, fy = axis(h, oy, hl)
    x0, x1, fx = axis(w, ox, wl)
    small = slot_c.to(torch.int16)  # slots < 2^15: four full-size int16 maps, not int64 ones
    corners = [small[a][:, b] for a in (y0, y1) for b in (x0, x1)]
    out = corners[0].clone()
    edge = (corners[0] != corners[1]) | (corners[0] != corners[2]) | (corners[0] != corners[3])
    band = max(1, ARGMAX_BAND_PIXELS // max(w, 1))
    for r0 in range(0, h, band):  # bands of rows: the per-pixel work below is ~100 B per edge pixel
        yy, xx = torch.nonzero(edge[r0:r0 + band], as_tuple=True)
        if yy.numel() == 0:
            continue
        yy += r0
        a, b, c, d = y0[yy], y1[yy], x0[xx], x1[xx]
        wy, wx = fy[yy], fx[xx]
        best_v = torch.full(yy.shape, -1.0, dtype=votes.dtype, device=votes.device)
        best_s = out[yy, xx].long()
        for cand in (m[yy, xx].long() for m in corners):
            v = ((1 - wy) * ((1 - wx) * votes[cand, a, c] + wx * votes[cand, a, d])
                 + wy * ((1 - wx) * votes[cand, b, c] + wx * votes[cand, b, d]))
            better = v > best_v
            best_v = torch.where(better, v, best_v)
            best_s = torch.where(better, cand, best_s)
        out[yy, xx] = best_s.to(out.dtype)
    return out.int()


#: The glow decision (``decision="glow"``; what "auto" takes off a bright field). A bright glyph on a dark
#: circuit board, a bright cell on a dark ground: defocused, each spreads a glow ramp whose detail beats the
#: flat, faintly textured ground around it, and the plain argmax draws concentric bands, each another slice
#: (pcb_depthmap at full size, docs/img/issue26_pcb_depthmap_fullsize_glyph_rings.png). The halo vote removes
#: them, but forced everywhere it moved dim cells to a bright neighbour's slice (rendered fluorescence -0.33 dB)
#: and the weak texture of a surface beside strong specks (rpi_disc Q4 0.8815 -> 0.8750). So the vote decides
#: a pixel only (1) where the winning slices' brightness, averaged over a GLOW_BOX box, differs from the
#: slices' mean there by at least GLOW_SHARE of the range, i.e. the winners are lit or darkened by something
#: defocused (defocus keeps a texture's local mean; a glow moves it), and around such pixels: where a Gaussian
#: (GLOW_SIGMA) of their map exceeds GLOW_LEVEL, ~33 px beyond the edge of a glowing area (the gate's own edge
#: drew a ring at reach 0; a square 24-px max filter drew rectangular blocks in the focus map of the demo
#: stack; a Gaussian of 12 px at 0.05 left a faint arc beside the PCB's "6"); and (2) where the pixel is weak
#: beside a stronger peak in contrast relative to its brightness too (energy / (brightness - black +
#: CONTRAST_EPS x range)², brightness a Gaussian of CONTRAST_SIGMA): a dim cell is as contrasty as a bright one.
#: Measured side by side with the legacy decision (benchmarks/RESULTS.md, issue 26, 2026-12-07): rendered
#: fluorescence 36.78 -> 37.06 dB (within ±1 92.3% both), 24 synthetic stacks -0.01 dB, rendered macro and the
#: aligned real stacks' Q4 level, the PCB's glyph rings gone; without the contrast test cells3d lost 0.010 of
#: Q4, without the glow gate rpi_disc 0.0135.
GLOW_SHARE, GLOW_BOX = 0.05, 19
GLOW_SIGMA, GLOW_LEVEL = 16.0, 0.02
CONTRAST_EPS, CONTRAST_SIGMA = 0.3, 4.0


def glow_gate(lit: torch.Tensor, mean: torch.Tensor, levels: tuple[float, float]) -> torch.Tensor:
    """Where the halo vote may decide (bool map): around pixels (a Gaussian of :data:`GLOW_SIGMA` of their map
    above :data:`GLOW_LEVEL`) where the winning slices' brightness ``lit`` (each pixel's own winner's focus image)
    and the slices' mean ``mean``, both averaged over a :data:`GLOW_BOX` box, differ by more than
    :data:`GLOW_SHARE` of the range."""
    def box(m: torch.Tensor) -> torch.Tensor:  # (1, 1, H, W): maps smaller than the box are padded by replication
        return box_mean(m[None, None].contiguous(), GLOW_BOX)[0, 0]

    glow = box(lit).sub_(box(mean)).abs_()
    return gaussian_blur(glow.gt_(GLOW_SHARE * levels[1]).float(), GLOW_SIGMA) > GLOW_LEVEL


def relative_energy(best: torch.Tensor, mean: torch.Tensor, levels: tuple[float, float]) -> torch.Tensor:
    """``best`` relative to the local brightness (above the black level, plus :data:`CONTRAST_EPS` of the
    range so a dark ground's noise is not magnified), squared as the energy is."""
    black, span = levels
    lum = gaussian_blur(mean.contiguous(), CONTRAST_SIGMA).sub_(black).clamp_min_(0).add_(CONTRAST_EPS * span)
    return best / lum.mul_(lum)


def glow_radius() -> int:
    """Footprint (px) of the glow decision's gates on the focus images (before the vote's own reach)."""
    return max(GLOW_BOX // 2 + gaussian_radius(GLOW_SIGMA), gaussian_radius(CONTRAST_SIGMA))


def decision_radius(window: int) -> int:
    """Pixels the robust decision adds to the measure's footprint: the halo test's max filter and its vote's
    blur (both read the measure), then the fill (the medians' 1 px each is counted by the caller)."""

    w = int(window) | 1
    halo = HALO_RADIUS + gaussian_radius(VOTE_SIGMA) + 2 * vote_block(VOTE_SIGMA)  # max filter, vote: blur, blocks
    return halo + gaussian_radius(2.0 * w)
