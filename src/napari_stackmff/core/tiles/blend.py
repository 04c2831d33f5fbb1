"""Soft, edge-aware blending of the slices: the halo-free alternative to hard selection.

Hard selection (the default) copies every pixel from the one slice the focus map names, so every
output value exists in the stack. At depth edges that stitches pixels from two slices along a line
the focus map draws a few pixels off the true edge, and the blurred foreground that spills over the
background in one slice shows as a glow or a dark ring ("halo"). The soft blend instead gives every
slice a weight map: the one-hot selection of that slice, smoothed by a guided filter (He, Sun & Tang,
2010) whose guide is the hard all-in-focus image. The filter keeps the weights' steps where the guide
has edges and averages them where it is flat, so the change of slice snaps onto real image edges and
isolated wrong picks fade; the output is the weight-normalised sum of the slices. It is **not
pixel-faithful**: values are mixes of slices (rounded back to the input dtype).

The filter is linear in its input, so the weights are computed one slice at a time, only inside the
box around that slice's pixels (plus the filter's reach): memory stays O(tile) for any number of
slices, and slices no pixel uses are never read. Its reach is :attr:`SoftBlend.support` px, which the
tile margin covers, so tiled and whole-image soft blends agree (to float rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from ..errors import StackMFFError
from ..io.stack import FocalStack, cast_to, dtype_scale, to_focus_image
from .classical import box_mean, gaussian_blur, gaussian_radius
from .decision import block_sums, max_filter

#: "hard" (the default): every pixel with detail copied from one slice; where the halo decision changes
#: slice in the open field, a few px are cross-faded (:func:`seam_fade_window`). "exact": every pixel copied
#: from one slice, those too (for measurements). "soft": the guided-filter blend below. "two-scale": the
#: soft blend's detail over a base layer blended wide (:func:`two_scale_window`).
BLENDS = ("hard", "exact", "soft", "two-scale")
#: Guided-filter radius (px) and regularisation (on the guide scaled to [0, 1]), from
#: benchmarks/bench_halo.py on synthetic occlusion stacks (RESULTS.md, issue 12): radius 2 is the largest
#: that beats hard selection in PSNR on mildly noisy stacks too (+0.28 dB; radius 4: -0.09, 8: -1.0 dB,
#: wider mixes blurred slices across depth edges) while cutting halos by 22-43%; on noisy stacks wider
#: radii gain more (r 8: +2.3 dB, halos -78%) by averaging noise. eps hardly matters (1e-4 to 1e-1: 0.1 dB).
SOFT_RADIUS = 2
SOFT_EPS = 1e-3
#: blend="two-scale" (issue 26), after Li, Kang & Hu's guided-filter fusion (GFF, IEEE TIP 2013), on our own
#: decision: each slice splits into a base layer (its 31 x 31 mean) and the detail above it. The base layers
#: are mixed by the selection guided-filtered wide (radius 45, eps 0.3, each slice its own guide: GFF's
#: values), so the low frequencies never follow a noisy or ringing choice; the detail by the soft blend's
#: narrow weights where the depth changes nearby and by wider ones (radius 7, eps 1e-6, GFF's detail
#: filter) where it does not: the local spread (std over 15 x 15 px) of the slice index, read as the share of
#: the narrow weights up to TWO_SCALE_SPREAD slices. Why the switch (benchmarks/RESULTS.md, session 21, 768-px
#: aligned real stacks, Q4): the wide detail weights everywhere lose cells3d's small nuclei (0.4275 against
#: 0.5057 for the soft blend); the narrow ones everywhere keep the beetle's and rpi_disc's JPEG grain; the
#: spread of 4 slices keeps both (0.5095, 0.8834, 0.8888; 1-2 slices lose the beetle, 8-12 cells3d).
TWO_SCALE_BASE_BOX = 31
TWO_SCALE_BASE_RADIUS = 45
TWO_SCALE_BASE_EPS = 0.3
TWO_SCALE_WIDE_RADIUS = 7
TWO_SCALE_WIDE_EPS = 1e-6
TWO_SCALE_SPREAD = 4.0
TWO_SCALE_SPREAD_BOX = 15
#: The base weights' guided filter runs on 4 x 4 block means of the guide and the selection, its
#: coefficients bilinearly back at full resolution ("fast guided filter", He & Sun 2015): the filter is
#: 91 px wide and its output smooth, so 16x fewer pixels lose nothing visible (the blocks lie on the image's
#: grid, so tiles see the same ones). Full-size pseudoscorpion (11 x 1905 x 2542 aligned, 2 threads): 113 s
#: at full resolution, against 9.4 s for the hard result.
TWO_SCALE_COARSE = 4
#: Every slice keeps this much of its own selection in each weight map, so no weight sum is ever 0 (the
#: guided filters of different guides need not add up to 1, and are clipped at 0).
_FLOOR = 1e-4


def resolve_blend(blend: str | None) -> str:
    """``blend=`` -> one of :data:`BLENDS` (None means hard, the default)."""
    b = "hard" if blend is None else str(blend).lower()
    if b not in BLENDS:
        raise StackMFFError(f"blend must be one of {', '.join(BLENDS)}, got {blend!r}.")
    return b


@dataclass(frozen=True)
class SoftBlend:
    """Settings of the soft blend of one run: filter size and the guide's value range."""

    radius: int = SOFT_RADIUS
    eps: float = SOFT_EPS
    guide_range: tuple[float, float] = (0.0, 1.0)  # focus-image values mapped to [0, 1] for the guide
    channel: int | None = None
    two_scale: bool = False  # blend="two-scale": the base layers mixed wide too (two_scale_window)

    @property
    def name(self) -> str:
        return "two-scale" if self.two_scale else "soft"

    @property
    def support(self) -> int:
        """Pixels an index change (or a slice's pixel) can reach in the output: two box filters of the
        guided filter's radius, and for two-scale the base layer's box beyond its wide filter."""
        if self.two_scale:  # the coarse filter's blocks and bilinear taps add up to 3 blocks
            return max(2 * TWO_SCALE_BASE_RADIUS + 3 * TWO_SCALE_COARSE + TWO_SCALE_BASE_BOX // 2,
                       2 * TWO_SCALE_WIDE_RADIUS + TWO_SCALE_SPREAD_BOX // 2, 2 * self.radius)
        return 2 * self.radius

    #: Working float32 maps per tile pixel (guide statistics, one slice's filter, sums): for tile sizing.
    def bytes_per_pixel(self, n_channels: int) -> float:
        if self.two_scale:  # two sums of layers and weights, the slice's layers, guide statistics, filters
            return 4.0 * (16 + 4 * n_channels)
        return 4.0 * (12 + 2 * n_channels)


def soft_blend_for(stack: FocalStack, channel: int | None = None, radius: int = SOFT_RADIUS,
                   eps: float = SOFT_EPS, two_scale: bool = False) -> SoftBlend:
    """The soft (or two-scale) blend of ``stack``: its guides are scaled by the stack's own value range (so
    dim 16-bit data, using a few percent of the dtype's range, gets edge-following weights like 8-bit data)."""
    from ..io.preview import stack_display_range

    rng = stack_display_range(stack)
    scale = dtype_scale(stack.dtype)
    lo, hi = (0.0, 1.0) if rng is None else (rng[0] / scale, rng[1] / scale)
    return SoftBlend(radius=int(radius), eps=float(eps), guide_range=(float(lo), float(max(hi, lo + 1e-6))),
                     channel=channel, two_scale=bool(two_scale))


def _box(x: torch.Tensor, k: int) -> torch.Tensor:
    return box_mean(x[None, None].contiguous(), k)[0, 0]


def _guide_stats(I: torch.Tensor, k: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Box mean and variance (+ ``eps``) of a guide: computed once per tile, shared by every slice's filter."""
    m = _box(I, k)
    return m, (_box(I * I, k) - m * m).clamp_min(0) + eps


def _coefficients(I: torch.Tensor, mean_I: torch.Tensor, var_I: torch.Tensor, p: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """He et al.'s guided filter of ``p`` (box ``k``): the box means of its linear coefficients a and b, so
    that the filtered map is a * I + b."""
    a = (_box(I * p, k) - mean_I * _box(p, k)) / var_I
    b = _box(p, k) - a * mean_I
    return _box(a.contiguous(), k), _box(b.contiguous(), k)


def _guided(I: torch.Tensor, mean_I: torch.Tensor, var_I: torch.Tensor, p: torch.Tensor, k: int) -> np.ndarray:
    """The guided filter of ``p`` with the guide's statistics given, clipped at 0 (a weight map)."""
    a, b = _coefficients(I, mean_I, var_I, p, k)
    return (a * I + b).clamp_min(0).numpy()


def _unit_guide(img: np.ndarray, stack: FocalStack, blend: SoftBlend) -> torch.Tensor:
    """The focus image of ``img`` with the stack's value range mapped to [0, 1] (the filters' eps assume it)."""
    lo, hi = blend.guide_range
    g = to_focus_image(img, rgb=stack.rgb, channel=blend.channel, dtype=stack.dtype)
    return torch.from_numpy((g - np.float32(lo)) * np.float32(1.0 / (hi - lo)))


def _slice_boxes(index: np.ndarray, reach: int) -> Iterator[tuple[int, np.ndarray, tuple[slice, slice]]]:
    """(slice, its selection mask inside the box, the box) for every slice the map uses: the box around its
    pixels plus ``reach``, clipped to the map. A slice's weights are 0 beyond it, so it is the only part read."""
    h, w = index.shape
    for z in np.unique(index):
        mask = index == z
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        sub = (slice(max(0, rows[0] - reach), min(h, rows[-1] + 1 + reach)),
               slice(max(0, cols[0] - reach), min(w, cols[-1] + 1 + reach)))
        yield int(z), mask[sub], sub


def _read_box(stack: FocalStack, z: int, t: int, read: tuple[slice, slice], sub: tuple[slice, slice]) -> np.ndarray:
    """Slice ``z``'s pixels in ``sub`` of the read window ``read``."""
    y0, x0 = read[0].start or 0, read[1].start or 0
    return stack.read_window(z, t, (slice(y0 + sub[0].start, y0 + sub[0].stop),
                                    slice(x0 + sub[1].start, x0 + sub[1].stop)))


def soft_blend_window(stack: FocalStack, index: np.ndarray, t: int, read: tuple[slice, slice],
                      crop: tuple[slice, slice], guide: np.ndarray, blend: SoftBlend) -> np.ndarray:
    """Soft all-in-focus pixels of a tile's write window.

    ``index`` is the integer focus map on the whole read window ``read``, ``guide`` the hard
    all-in-focus image there (the stack's dtype), ``crop`` the written part inside the read window.
    """
    if blend.two_scale:
        return two_scale_window(stack, index, t, read, crop, guide, blend)
    k = 2 * blend.radius + 1
    I = _unit_guide(guide, stack, blend)
    mean_I, var_I = _guide_stats(I, k, blend.eps)
    h, w = index.shape
    chans = (stack.n_channels,) if stack.has_channels else ()
    num = np.zeros((h, w) + chans, np.float64)
    den = np.zeros((h, w), np.float64)
    for z, mask, sub in _slice_boxes(index, blend.support):
        q = _guided(I[sub], mean_I[sub], var_I[sub], torch.from_numpy(mask.astype(np.float32)), k)
        pixels = _read_box(stack, z, t, read, sub)
        den[sub] += q
        num[sub] += (q[..., None] if chans else q) * pixels
    cy, cx = crop
    den_c = np.maximum(den[cy, cx], 1e-12)
    return cast_to(num[cy, cx] / (den_c[..., None] if chans else den_c), stack.dtype)


def _coarse_guided(I: torch.Tensor, p: torch.Tensor, radius: int, eps: float, f: int,
                   grid: tuple[int, int]) -> np.ndarray:
    """Guided filter of ``p`` (guide ``I``) with its coefficients found on f x f block means and applied at full
    resolution. ``grid``: how far the window's first pixel lies past the start of its block on the image's
    grid (partial blocks at the edges padded by replication)."""
    (h, w), (gy, gx) = I.shape, grid
    pad = (gx, -(w + gx) % f, gy, -(h + gy) % f)
    both = F.pad(torch.stack((I, p))[None], pad, mode="replicate")
    Ic, pc = F.avg_pool2d(both, f)[0]
    k = 2 * max(1, round(radius / f)) + 1
    ab = torch.stack(_coefficients(Ic, *_guide_stats(Ic, k, eps), pc, k))[None]
    ab = F.interpolate(ab, scale_factor=f, mode="bilinear", align_corners=False)[0, :, gy:gy + h, gx:gx + w]
    return (ab[0] * I + ab[1]).clamp_min(0).numpy()


def two_scale_window(stack: FocalStack, index: np.ndarray, t: int, read: tuple[slice, slice],
                     crop: tuple[slice, slice], guide: np.ndarray, blend: SoftBlend) -> np.ndarray:
    """Two-scale all-in-focus pixels of a tile's write window (arguments as :func:`soft_blend_window`).

    out = sum_k Wb_k B_k / sum Wb + sum_k Wd_k D_k / sum Wd, with B_k slice k's 31 x 31 mean, D_k the rest,
    Wb its selection guided-filtered wide (its own guide), Wd = c Wn + (1 - c) Ww its selection filtered narrow
    and wider (the hard all-in-focus image as guide), and c the share of the narrow detail weights: the
    local spread of the index over TWO_SCALE_SPREAD slices (constants above). Like the soft blend, each
    slice's terms are computed only in the box around its pixels (plus the filters' reach), one slice at a
    time: memory stays O(tile). Not pixel-faithful, and unlike the soft blend not even a convex mix per
    pixel: a slice's detail rides on the mixed base, so values can pass the slices' range (clipped to the dtype).
    """
    kn, kw = 2 * blend.radius + 1, 2 * TWO_SCALE_WIDE_RADIUS + 1
    I = _unit_guide(guide, stack, blend)
    mean_n, var_n = _guide_stats(I, kn, blend.eps)
    mean_w, var_w = _guide_stats(I, kw, TWO_SCALE_WIDE_EPS)
    fi = torch.from_numpy(index.astype(np.float32))
    _, spread = _guide_stats(fi, TWO_SCALE_SPREAD_BOX, 0.0)
    narrow_share = (spread.sqrt() * (1.0 / TWO_SCALE_SPREAD)).clamp_max(1.0).numpy()
    h, w = index.shape
    nc = stack.n_channels if stack.has_channels else 1
    # sums of weight x layer, channels first (every box filter and sum runs on whole rows), and of weights
    num_b, num_d = np.zeros((nc, h, w), np.float32), np.zeros((nc, h, w), np.float32)
    den_b, den_d = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
    y0, x0 = read[0].start or 0, read[1].start or 0
    for z, mask, sub in _slice_boxes(index, blend.support):
        m = mask.astype(np.float32)
        p = torch.from_numpy(m)
        pixels = _read_box(stack, z, t, read, sub)
        px = np.ascontiguousarray(np.moveaxis(pixels, -1, 0) if stack.has_channels else pixels[None], np.float32)
        base = box_mean(torch.from_numpy(px), TWO_SCALE_BASE_BOX).numpy()
        px -= base  # the detail layer
        wb = _coarse_guided(_unit_guide(pixels, stack, blend), p, TWO_SCALE_BASE_RADIUS, TWO_SCALE_BASE_EPS,
                            TWO_SCALE_COARSE, ((y0 + sub[0].start) % TWO_SCALE_COARSE,
                                               (x0 + sub[1].start) % TWO_SCALE_COARSE))
        wb += np.float32(_FLOOR) * m
        c = narrow_share[sub]
        # the narrow and wide detail weights of one guide each sum to ~1 over the slices (a guided filter is
        # linear in its input), so their mix by the share needs one sum, not two
        wd = c * _guided(I[sub], mean_n[sub], var_n[sub], p, kn) + (1 - c) * _guided(I[sub], mean_w[sub], var_w[sub], p, kw)
        wd += np.float32(_FLOOR) * m
        den_b[sub] += wb
        den_d[sub] += wd
        num_b[(slice(None), *sub)] += wb * base
        num_d[(slice(None), *sub)] += wd * px
    cy, cx = crop
    out = num_b[:, cy, cx] / den_b[cy, cx] + num_d[:, cy, cx] / den_d[cy, cx]
    return cast_to(np.moveaxis(out, 0, -1) if stack.has_channels else out[0], stack.dtype)


# ------------------------------------------------------------------ seams in flat areas (hard selection)
#: Cross-fade (Gaussian sigma, px) across a change of slice inside the halo decision's flat areas (pixels
#: whose slice the vote decided: no detail of their own, decision.halo_vote). Between two specimens at
#: different depths the vote changes slice in the open field, where each slice carries the other
#: specimen's defocused shadow: a hard switch there draws a curved seam (the pseudoscorpion's lower legs:
#: 1,885 steps of more than 24 grey levels (RGB sum) between horizontal neighbours in a 800 x 500 crop at
#: full size). Chosen from benchmarks/bench_seams.py (RESULTS.md, issue 26).
SEAM_SIGMA = 6.0


def seam_reach(sigma: float | None = None) -> int:
    """Pixels of focus map a faded output pixel depends on (the change test and the weights: the blur, a
    coarse block and the bilinear step, and the block grid's alignment); a tile margin of this beyond the
    decision's keeps tiled output equal to untiled."""
    sigma = SEAM_SIGMA if sigma is None else sigma
    return gaussian_radius(sigma) + 3 * SEAM_COARSE if sigma > 0 else 0


#: The cross-fade's weights are blurred on a grid this many times coarser (counts per block, then bilinear
#: back at the faded pixels only): the weights vary over ``sigma`` px, and at full resolution the blurs of
#: every slice's weight took 3.7 of 5.2 s on the pseudoscorpion (14 x 2592 x 1944).
SEAM_COARSE = 4


def _block_range(index: np.ndarray, f: int, offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Least and greatest label of each f x f block of the grid that starts ``offset`` px before the map
    (float32; partial blocks padded by replication)."""
    (h, w), (oy, ox) = index.shape, offset
    x = np.pad(index, ((oy, -(h + oy) % f), (ox, -(w + ox) % f)), mode="edge")
    x = x.reshape(x.shape[0] // f, f, x.shape[1] // f, f)
    return x.min((1, 3)).astype(np.float32), x.max((1, 3)).astype(np.float32)


def _bilinear_taps(pos: np.ndarray, f: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower tap, upper tap, weight of the upper) of full-resolution positions ``pos`` on a grid of blocks
    of ``f`` px (``n`` blocks): block centres at (i + 0.5) * f - 0.5, clamped at the ends (``block_up``'s
    bilinear, ``align_corners=False``)."""
    src = np.maximum((pos.astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / f) - np.float32(0.5), 0)
    lo = np.minimum(src.astype(np.int64), n - 1)
    return lo, np.minimum(lo + 1, n - 1), (src - lo).astype(np.float32)


def seam_fade_window(stack: FocalStack, index: np.ndarray, flat: np.ndarray, t: int, read: tuple[slice, slice],
                     crop: tuple[slice, slice], hard: np.ndarray, sigma: float | None = None) -> np.ndarray:
    """Hard-selected pixels ``hard`` of a tile's ``crop`` with every change of slice inside ``flat`` areas
    cross-faded over ``sigma``: within reach of such a change a flat pixel is the mean of its flat
    neighbours' slices, Gaussian-weighted; everywhere else (detail, and flat pixels away from a change)
    it stays the one slice's own pixel. ``index`` and ``flat`` cover the read window ``read``.

    Why only there: a flat pixel has no detail in any slice, so a mix loses none, while a switch of
    slice shows as a seam wherever the slices' backgrounds differ (a defocused neighbour's shadow).
    """
    sigma = SEAM_SIGMA if sigma is None else sigma
    if sigma <= 0:
        return hard
    r, f = gaussian_radius(sigma), SEAM_COARSE
    cy, cx = crop
    y0, x0 = read[0].start or 0, read[1].start or 0
    h, w = index.shape
    # the work window: the crop and reach r + 2f around it; its blocks lie on the image's grid (multiples of
    # f), so that every tile sees the same blocks (tiled = untiled)
    ya, xa = max(0, cy.start - r - 2 * f), max(0, cx.start - r - 2 * f)
    yb, xb = min(h, cy.stop + r + 2 * f), min(w, cx.stop + r + 2 * f)
    sub = (slice(ya, yb), slice(xa, xb))
    grid = ((y0 + ya) % f, (x0 + xa) % f)
    fl, isub = flat[sub], np.asarray(index[sub])
    hs, ws = fl.shape
    # where another slice lies within r: the blocks' label ranges, dilated (a few px generous)
    lo, hi = _block_range(isub.astype(np.int16), f, grid)
    reach = -(-r // f) + 1
    spread = max_filter(torch.from_numpy(hi), reach).numpy() + max_filter(torch.from_numpy(-lo), reach).numpy()
    sel = np.repeat(np.repeat(spread > 0, f, 0), f, 1)[grid[0]:grid[0] + hs, grid[1]:grid[1] + ws] & fl
    inside = np.zeros_like(sel)
    inside[cy.start - ya:cy.stop - ya, cx.start - xa:cx.stop - xa] = True
    sel &= inside
    if not sel.any():
        return hard
    # every flat pixel's slice counted per f x f block, all slices in one pass: (slices, hl, wl)
    zs = np.flatnonzero(np.bincount(isub[fl]))
    lut = np.zeros(int(isub.max()) + 1, np.int32)  # labels of non-flat pixels: slot 0, with weight 0
    lut[zs] = np.arange(len(zs), dtype=np.int32)
    low = block_sums(torch.from_numpy(lut[isub]), torch.from_numpy(fl).float(), len(zs), f, grid)
    oy, ox = np.nonzero(sel)
    lin = oy * ws + ox
    (y0_, y1_, ly), (x0_, x1_, lx) = (_bilinear_taps(v + o, f, n) for v, o, n in
                                       ((oy, grid[0], low.shape[1]), (ox, grid[1], low.shape[2])))
    wl = low.shape[2]
    taps = [(y * wl + x, wy * wx) for y, wy in ((y0_, 1 - ly), (y1_, ly)) for x, wx in ((x0_, 1 - lx), (x1_, lx))]
    del y0_, y1_, ly, x0_, x1_, lx

    def smooth(m: torch.Tensor) -> np.ndarray:
        """A coarse count map blurred, back at full resolution (bilinear, as ``block_up``), at the faded pixels
        only: upsampling every slice's map whole took most of the fade's time where much of a tile is flat."""
        c = gaussian_blur(m.contiguous(), sigma / f).numpy().reshape(-1)
        out = np.take(c, taps[0][0]) * taps[0][1]
        for i, w_ in taps[1:]:
            out += np.take(c, i) * w_
        return out

    den = np.maximum(smooth(low.sum(0)), 1e-12)
    chans = (stack.n_channels,) if stack.has_channels else ()
    num = np.zeros(den.shape + chans, np.float32)
    for k, z in enumerate(zs):
        wz = smooth(low[k])
        pixels = stack.read_window(int(z), t, (slice(y0 + ya, y0 + yb), slice(x0 + xa, x0 + xb)))
        pixels = np.take(pixels.reshape(hs * ws, -1) if chans else pixels.reshape(-1), lin, axis=0)
        num += (wz[:, None] if chans else wz) * pixels
    out = np.array(hard, copy=True)
    out[oy + ya - cy.start, ox + xa - cx.start] = cast_to(num / (den[:, None] if chans else den), stack.dtype)
    return out
