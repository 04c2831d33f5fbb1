"""Which slice wins where no slice is sharp: the classical decision's confidence and its fill (issue 26).

A streamed argmax over slices picks *some* slice everywhere. Two kinds of pixels get a wrong pick with a
high legacy confidence ``(1 - mean/best)·n/(n-1)``, measured on the pseudoscorpion leg (brightfield,
14 slices, wavelet measure, window 9; crop rows 1000:1800, cols 1200:2000):

* **flat regions (speckle)**: in the flat body and background the measure is noise, and the max of 14
  noisy values is ~1.5× their mean: legacy confidence 0.33 (body) to 0.47 (background) at the median,
  0.44-0.76 at the 90th percentile, far above the 0.25 fill threshold. Averaged over a coarser window
  (``coarse_window``: 4·w+1 = 37 px) the noise averages out while real detail does not: the same
  confidence on the coarse measure drops to 0.10 (body) / 0.18 (background) at the median, 0.16 / 0.27
  at p90, while the leg's outline keeps 0.80. :data:`NOISE_LO` / :data:`NOISE_HI` sit between.
* **defocus halos (rings)**: a defocused dark edge spreads into the bright field as a broad ramp whose
  detail energy (~2e-5) beats the flat, sharp background (~4e-6, the noise), so each ring of background
  picks the slice whose blurred edge passes there (slice 0, 2-7 slice away from the sharp 3-4 / 12-13),
  with legacy confidence 0.5-0.7. The sharp edge a few tens of px away is ~100× stronger (1.7e-3).
  The halo ratio ``best / max over a (2R+1)² neighbourhood of best`` is 0.005-0.01 in the ring and
  0.4-1 on the edge (0.1-0.6 in the noisy body). Genuine texture next to a stronger edge at the same
  depth loses little when it is filled from that edge. :data:`HALO_LO` / :data:`HALO_HI`.

Unconfident pixels take the focus of confident ones by a multi-scale normalised convolution
(:func:`multiscale_fill`): the finest scale that has enough confident weight decides, so the flat
inside of a 200-px body reaches the confident outline (the single 2·w blur reached ~50 px). Every
step is a shift-invariant filter with a finite radius (:func:`decision_radius`), so tiles with that
margin stay exactly equal to the untiled result.

Set :data:`ENABLED` to False for the legacy decision (benchmarks compare both in one run).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .classical import gaussian_blur, gaussian_radius

#: OFF for now (issue 26 open): its radius (213 px at window 9, tile overlap rounds to 256) makes tiles
#: under 544 px an error, which broke tests/test_scale_tiling.py and test_speed_paths.py; and on synthetic
#: "cells" (8 slices) it lost within-±1 0.934 -> 0.896 (wavelet, seed 0). True = robust; False = legacy
#: (confidence from best/mean, one fill scale). Read at call time, so a benchmark can compare both.
ENABLED = False

#: Coarse measure window = COARSE_FACTOR·window + 1 (37 px at window 9), see the module docstring.
COARSE_FACTOR = 4
#: Coarse-window confidence below NOISE_LO: noise (pseudoscorpion body/background p90 0.16/0.27);
#: above NOISE_HI: detail (leg outline 0.80). Linear in between.
NOISE_LO, NOISE_HI = 0.2, 0.35
#: Halo neighbourhood radius (px): the defocus blur of the pseudoscorpion's outer slices spreads the
#: dark edge ~30-50 px into the bright field.
HALO_RADIUS = 64
#: Halo ratio below HALO_LO: halo/shadow zone (ring 0.005-0.01); above HALO_HI: own detail.
HALO_LO, HALO_HI = 0.01, 0.04
#: Fill scales, in multiples of the window (sigma = 2·w, 6·w: 18 and 54 px at w = 9; the box-Gaussian's
#: support is 3 sigma, so the coarsest reaches 162 px).
FILL_SCALES = (2.0, 6.0)
#: A finer fill scale decides once its blurred confident weight reaches this (a fraction of the
#: neighbourhood that is fully confident); below it the coarser scale's focus is kept.
FILL_ENOUGH = 0.05


def coarse_window(window: int) -> int:
    return COARSE_FACTOR * (int(window) | 1) + 1


def _ramp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return ((x - lo) / (hi - lo)).clamp(0, 1)


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


def robust_confidence(conf: torch.Tensor, best: torch.Tensor, best2: torch.Tensor | None,
                      total2: torch.Tensor | None, n: int) -> torch.Tensor:
    """Legacy confidence × noise test (coarse-window peak) × halo test (weak beside a much stronger peak)."""
    out = conf
    if best2 is not None and total2 is not None and n > 1:
        conf2 = ((1 - (total2 / n) / best2.clamp_min(1e-20)) * (n / (n - 1))).clamp(0, 1)
        out = out * _ramp(conf2, NOISE_LO, NOISE_HI)
    ratio = best / max_filter(best, HALO_RADIUS).clamp_min(1e-20)
    return out * _ramp(ratio, HALO_LO, HALO_HI)


def multiscale_fill(focus: torch.Tensor, conf: torch.Tensor, threshold: float, window: int, n: int) -> torch.Tensor:
    """Unconfident pixels take the slice most confident neighbours chose: a weighted vote per slice
    (normalised convolution of each slice's indicator, weights conf²) at the scales :data:`FILL_SCALES`,
    coarse to fine (a finer scale takes over where it has enough weight).

    A vote, not an average: where the outline is sharp in slices 3 and 12 (a stack focused out and back)
    an average fills the flat background with slice 7 or 8, whose blurred edge is the halo; the vote
    fills it with 3 or 12. Pixels below half the ``threshold`` take the vote, the others keep their own
    pick (a soft blend of two far-apart slices would pick a third one)."""

    if threshold <= 0:
        return focus
    w = conf * conf
    idx = torch.round(focus).clamp(0, n - 1)
    used = [z for z in torch.unique(idx[w > 0]).long().tolist()]
    if not used:
        return focus
    filled = focus
    for k, scale in enumerate(sorted(FILL_SCALES, reverse=True)):
        top = torch.zeros_like(focus)
        mode = torch.zeros_like(focus)
        den = torch.zeros_like(focus)
        for c in range(0, len(used), 4):  # a few slices per batch: O(H·W) memory whatever n
            zs = used[c:c + 4]
            ind = torch.stack([(idx == z).to(w.dtype) * w for z in zs])[:, None]
            votes = gaussian_blur(ind, scale * window)[:, 0]
            for z, v in zip(zs, votes):
                better = v > top
                mode = torch.where(better, torch.full_like(mode, float(z)), mode)
                top = torch.maximum(top, v)
                den += v
        if k == 0:
            filled = torch.where(den > 1e-12, mode, focus)
        else:
            filled = torch.where(den >= FILL_ENOUGH, mode, filled)
    return torch.where(conf >= threshold, focus, filled)


def decision_radius(window: int) -> int:
    """Pixels the robust decision adds to the measure's footprint: the wider of the coarse box and the halo
    max filter (both read the measure), then the widest fill (the median's 1 px is counted by the caller)."""

    w = int(window) | 1
    return max(coarse_window(w) // 2, HALO_RADIUS) + gaussian_radius(max(FILL_SCALES) * w)
