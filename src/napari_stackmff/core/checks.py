"""Slices that should not take part in a fusion: over-exposed frames and frames of another scene.

Both look sharp to every focus measure: an over-exposed frame has its contrast multiplied, and another
scene has focused structure of its own, so they win pixels in any method (measured, issue 13: one
over-exposed slice took 79% of a stack's pixels from StackMFF-V3, 31% from V2 and most from tenengrad).
They are found from what they share with the other slices, on a small copy, and left out with a
warning naming them. Blank slices need no check: they never win (and networks skip them).
"""

from __future__ import annotations

import numpy as np

from .stack import FocalStack

#: A slice is over-exposed when at least CLIP_SHARE of its pixels sit at the top value, CLIP_RATIO times the
#: stack's median share (highlights clip in every slice alike), and its mean is BRIGHT_RATIO times the
#: median slice mean (a focus sweep keeps the brightness; an exposure x3-8 does not). A synthetic frame
#: exposed x5 had 16% of its pixels clipped and 4.6x the mean brightness.
CLIP_SHARE, CLIP_RATIO, BRIGHT_RATIO = 0.05, 4.0, 1.5
#: A slice is from another scene when its coarse layout (a copy blurred by 1/16 of the side, where defocus
#: changes little) correlates below OTHER_CORR with every other slice while the slices' typical best
#: correlation is at least TYPICAL_CORR (a stack whose slices all differ, e.g. a time-lapse, is left alone).
OTHER_CORR, TYPICAL_CORR = 0.5, 0.8
#: Pixels per slice read for the checks (a strided grid): a lazy stack's reads stay one small window.
SAMPLE_PIXELS = 65536


def _small(stack: FocalStack, z: int, t: int, step: int) -> np.ndarray:
    ys, xs = slice(0, None, step), slice(0, None, step)
    px = stack.read_sample(z, t, (ys, xs))
    if px.dtype.kind == "f":
        px = np.nan_to_num(px, nan=0.0, posinf=0.0, neginf=0.0)  # the fusion's own reads report them
    return px if px.ndim == 2 else px.max(-1)  # a channel at its top counts as clipped


def suspicious_slices(stack: FocalStack, t: int = 0) -> dict[int, str]:
    """Slice number -> why it is left out (empty when every slice looks like part of the sweep)."""
    from scipy import ndimage as ndi

    n = stack.n_slices
    if n < 3:  # a pair cannot outvote anything
        return {}
    h, w = stack.yx_shape
    step = max(1, int(np.ceil(np.sqrt(h * w / SAMPLE_PIXELS))))
    imgs = [_small(stack, z, t, step).astype(np.float32) for z in range(n)]
    out: dict[int, str] = {}
    top = float(np.iinfo(stack.dtype).max) if stack.dtype.kind in "ui" else max(float(np.max(imgs)), 1e-6)
    clipped = np.array([float((im >= top).mean()) for im in imgs])
    means = np.array([float(im.mean()) for im in imgs])
    typical = float(np.median(clipped))
    bright = means >= BRIGHT_RATIO * max(float(np.median(means)), 1e-12)
    for z in np.flatnonzero((clipped >= CLIP_SHARE) & (clipped >= CLIP_RATIO * max(typical, 1e-3)) & bright):
        out[int(z)] = f"over-exposed ({clipped[z]:.0%} of pixels at the top value)"
    sigma = max(imgs[0].shape) / 16
    coarse = []
    for im in imgs:
        c = ndi.gaussian_filter(im, sigma)
        c = c - c.mean()
        coarse.append(c / max(float(np.linalg.norm(c)), 1e-12))
    corr = np.array([[float((a * b).sum()) for b in coarse] for a in coarse])
    np.fill_diagonal(corr, -1.0)
    best = corr.max(1)
    if np.median(best) >= TYPICAL_CORR:
        for z in np.flatnonzero(best < OTHER_CORR):
            out.setdefault(int(z), f"unlike every other slice (best coarse correlation {best[z]:.2f}): another scene?")
    if len(out) > n - 2:  # never leave fewer than two slices
        return {}
    return dict(sorted(out.items()))
