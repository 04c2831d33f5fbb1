"""Slices that should not take part in a fusion: over-exposed frames and frames of another scene.

Both look sharp to every focus measure: an over-exposed frame has its contrast multiplied, and another
scene has focused structure of its own, so they win pixels in any method (measured, issue 13: one
over-exposed slice took 79% of a stack's pixels from StackMFF-V3, 31% from V2 and most from tenengrad).
They are found from what they share with the other slices, on a small copy, and left out with a
warning naming them. The same look finds the flat (blank) slices: a stack of nothing but those is refused,
and networks skip them (classical measures give them no score anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.stack import FocalStack

#: A slice is over-exposed when at least CLIP_SHARE of its pixels sit at the top value, CLIP_RATIO times the
#: stack's median share (highlights clip in every slice alike), and its mean is BRIGHT_RATIO times the
#: median slice mean (a focus sweep keeps the brightness; an exposure x3-8 does not). A synthetic frame
#: exposed x5 had 16% of its pixels clipped and 4.6x the mean brightness.
CLIP_SHARE, CLIP_RATIO, BRIGHT_RATIO = 0.05, 4.0, 1.5
#: A slice is from another scene when its coarse layout (a copy blurred by 1/16 of the side, where defocus
#: changes little) correlates below OTHER_CORR with every other slice while the slices' typical best
#: correlation is at least TYPICAL_CORR (a stack whose slices all differ, e.g. a time-lapse, is left alone).
OTHER_CORR, TYPICAL_CORR = 0.5, 0.8
#: Side of the block-averaged copy on which the coarse layouts are compared.
COARSE_SIDE = 64
#: Pixels per slice read for the checks (a strided grid): a lazy stack's reads stay one small window.
SAMPLE_PIXELS = 65536


@dataclass
class SliceSurvey:
    """What one look at every slice of a time point found (one strided sample read per slice)."""

    flat: list[int]  # one value all over (blank, or saturated everywhere): no focus to find in them
    suspicious: dict[int, str]  # slice -> why it should be left out (over-exposed, another scene)


def survey_slices(stack: FocalStack, t: int = 0) -> SliceSurvey:
    """Flat and suspicious slices of time point ``t``, from a strided sample of each slice.

    NaN/inf in the sample are ignored here: the fusion's own reads report (and count) them.
    """
    n = stack.n_slices
    h, w = stack.yx_shape
    step = max(1, int(np.ceil(np.sqrt(h * w / SAMPLE_PIXELS))))  # reads stay <= SAMPLE_PIXELS pixels
    imgs, flat = [], []
    for z in range(n):
        px = stack.read_sample(z, t, (slice(0, None, step), slice(0, None, step)))
        if px.dtype.kind == "f":
            finite = px[np.isfinite(px)]
            px = np.nan_to_num(px, nan=0.0, posinf=0.0, neginf=0.0)
        else:
            finite = px
        if not finite.size or finite.min() == finite.max():
            flat.append(z)
        imgs.append((px if px.ndim == 2 else px.max(-1)).astype(np.float32))  # a channel at its top is clipped
    live = [z for z in range(n) if z not in flat]
    return SliceSurvey(flat, _suspicious({z: imgs[z] for z in live}, stack.dtype) if len(live) >= 3 else {})


def _suspicious(imgs: dict[int, np.ndarray], dtype: np.dtype) -> dict[int, str]:
    """Slice number -> why it is left out, among slices that are not flat (a pair cannot outvote anything)."""
    from scipy import ndimage as ndi

    zs = list(imgs)
    ims = [imgs[z] for z in zs]
    out: dict[int, str] = {}
    top = float(np.iinfo(dtype).max) if dtype.kind in "ui" else max(float(max(im.max() for im in ims)), 1e-6)
    clipped = np.array([float((im >= top).mean()) for im in ims])
    means = np.array([float(im.mean()) for im in ims])
    typical = float(np.median(clipped))
    bright = means >= BRIGHT_RATIO * max(float(np.median(means)), 1e-12)
    for i in np.flatnonzero((clipped >= CLIP_SHARE) & (clipped >= CLIP_RATIO * max(typical, 1e-3)) & bright):
        out[zs[i]] = f"over-exposed ({clipped[i]:.0%} of pixels at the top value)"
    # The layout blurred by 1/16 of the side lives at 64 px: block means first, then a blur of the same reach
    # (the blur on the full 256-px sample was 0.5 s of a 64-slice 1024² variance fusion's 3.8 s).
    f = max(1, max(ims[0].shape) // COARSE_SIDE)
    hh, ww = (ims[0].shape[0] // f) * f, (ims[0].shape[1] // f) * f
    sigma = max(ims[0].shape) / 16 / f
    coarse = np.empty((len(ims), (hh // f) * (ww // f)), np.float64)
    for i, im in enumerate(ims):
        small = im[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3)) if f > 1 else im
        c = ndi.gaussian_filter(small.astype(np.float64), sigma).ravel()
        c -= c.mean()
        coarse[i] = c / max(float(np.linalg.norm(c)), 1e-12)
    corr = coarse @ coarse.T
    np.fill_diagonal(corr, -1.0)
    best = corr.max(1)
    if np.median(best) >= TYPICAL_CORR:
        for i in np.flatnonzero(best < OTHER_CORR):
            out.setdefault(zs[i], f"unlike every other slice (best coarse correlation {best[i]:.2f}): another scene?")
    if len(out) > len(zs) - 2:  # never leave fewer than two slices
        return {}
    return dict(sorted(out.items()))
