"""Quality scores: against ground truth (PSNR, SSIM, focus error) and without it (Q^AB/F over N sources,
gradient-energy sharpness and excess against the sharpest slice), for real stacks that have no truth."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
from scipy import ndimage as ndi


def _as_float(img: np.ndarray) -> tuple[np.ndarray, float]:
    img = np.asarray(img)
    rng = float(np.iinfo(img.dtype).max) if img.dtype.kind == "u" else 1.0
    return img.astype(np.float64), rng


def psnr(result: np.ndarray, truth: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, peak = the dtype's full range."""
    a, peak = _as_float(result)
    b, _ = _as_float(truth)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def ssim(result: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    a, peak = _as_float(result)
    b, _ = _as_float(truth)
    return float(structural_similarity(a, b, data_range=peak, channel_axis=-1 if a.ndim == 3 else None))


def focus_error(focus_map: np.ndarray, truth_index: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Mean absolute error (slices) and fraction within ±1 / ±0.5 slice, over ``mask`` if given."""
    err = np.abs(np.asarray(focus_map, np.float64) - truth_index)
    if mask is not None:
        err = err[mask]
    return {"mae": float(err.mean()), "within1": float((err <= 1).mean()), "within05": float((err <= 0.5).mean())}


#: Rec. 601 luma, as the fusion core uses for RGB (core.stack.LUMA_WEIGHTS).
_LUMA = np.array([0.299, 0.587, 0.114])
#: Edge-weight exponent L (w_S = |grad S|^L) for deep stacks. L = 1 is the published pair score, but
#: summed over N slices it lets the many defocused slices' weak edges vote: on make_synth stacks (seeds
#: 0-5, natural/cells, gray/RGB, 24 noisy stacks of 8 slices) the best single slice beats the true
#: all-in-focus image in 15 of 24 at L = 1, in 3 of 24 at L = 2 and in none at L = 4 (margin 0.003-0.32).
DEEP_STACK_WEIGHT_POWER = 4.0
#: Box window (px) over which gradient energy is averaged before the fused image is compared with the
#: sharpest slice. Per pixel (window 1) the max over N noisy slices is inflated by the largest noise
#: draw, and an edge one pixel off (focus breathing, JPEG) counts as lost. Measured on make_synth(seed=3)
#: (8 noisy gray slices, 128 px): the true all-in-focus image scores 0.896 / 0.969 / 0.989 / 0.997 at
#: windows 1 / 3 / 7 / 15, the best single slice 0.51-0.60 and the truth blurred (sigma 1.5) 0.16-0.18 at
#: all four; adding noise to the truth costs 0.033 at window 1 and nothing (+0.002) at 7. At 15 nearby
#: edges start to count (single slice 0.60, the truth's own excess 0.08 -> 0.14), so 7.
SHARPNESS_WINDOW = 7


def _luma(img: Any) -> np.ndarray:
    """One image as float64 2-D: luma of RGB(A), the mean of other channel counts, gray as is."""
    x = np.asarray(img, np.float64)
    if x.ndim == 3:
        if x.shape[-1] in (3, 4):
            return x[..., :3] @ _LUMA
        return x.mean(axis=-1)
    if x.ndim != 2:
        raise ValueError(f"expected one (H, W) or (H, W, C) image, got shape {x.shape}")
    return x


def _iter_slices(sources: Any) -> Iterator[Any]:
    """The sources one at a time: an (N, H, W[, C]) array (numpy, memmap, zarr, dask), a ZYX[C]
    FocalStack, a list, or any iterator of images (so a stack never has to be in memory at once)."""
    data = getattr(sources, "data", sources) if hasattr(sources, "n_slices") else sources
    if hasattr(data, "shape") and hasattr(data, "__getitem__"):
        for i in range(int(data.shape[0])):
            yield data[i]
    else:
        yield from data


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = ndi.sobel(img, axis=1), ndi.sobel(img, axis=0)
    return np.hypot(gx, gy), np.arctan(gy / (gx + 1e-12))


def _edge_terms(fused: Any, sources: Any, weight_power: float = 1.0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per source S, (Q^SF, w_S): the Xydeas-Petrović edge preservation of S in F per pixel, and the
    weight w_S = S's Sobel strength ** L. One source's arrays live at a time."""
    gf, af = _sobel(_luma(fused))
    for s in _iter_slices(sources):
        gs, as_ = _sobel(_luma(s))
        if gs.shape != gf.shape:
            raise ValueError(f"source shape {gs.shape} differs from the fused image's {gf.shape}")
        g = np.where(gs > gf, gf / (gs + 1e-12), gs / (gf + 1e-12))
        a = 1 - np.abs(as_ - af) / (np.pi / 2)
        qg = 0.9994 / (1 + np.exp(-15 * (g - 0.5)))
        qa = 0.9879 / (1 + np.exp(-22 * (a - 0.8)))
        yield qg * qa, (gs if weight_power == 1 else gs ** weight_power)


def qabf(fused: np.ndarray, sources: Any, weight_power: float = 1.0) -> float:
    """Xydeas-Petrović Q^AB/F generalised from pairs to N sources (in [0, 1], higher is better).

    Q = sum_S sum_px Q^SF w_S / sum_S sum_px w_S: at each pixel, how well each source's edges
    (strength and orientation) reappear in the fused image, weighted by that source's edge strength
    w_S = |grad S| ** ``weight_power``. For N = 2 and L = 1 this is the published pair score. Rewards
    keeping the sources' edges; penalises lost edges (blur) and also gained ones (the gradient ratio
    is symmetric, so halos and seams cost too). With many slices every defocused slice's weak edges
    also count, so a perfect fusion of a deep stack scores well below 1 and, at L = 1, can score below
    its sharpest single slice; ``weight_power=DEEP_STACK_WEIGHT_POWER`` lets the sharpest source at
    each pixel dominate. Compare methods on the same stack, not across stacks.

    ``sources`` is an (N, H, W[, C]) array or any iterable of images; they are read one at a time,
    so memory is a few (H, W) float64 arrays whatever N is. Needs no ground truth.
    """
    num = den = 0.0
    for q, w in _edge_terms(fused, sources, weight_power):
        num += float((q * w).sum())
        den += float(w.sum())
    return num / den if den else 0.0


def qabf_map(fused: np.ndarray, sources: Any, weight_power: float = 1.0) -> np.ndarray:
    """Per-pixel Q^AB/F over N sources, sum_S Q^SF w_S / sum_S w_S (0 where no source has an edge):
    shows where a fusion loses edges (halos, seams at depth edges), which the single number hides."""
    num = den = None
    for q, w in _edge_terms(fused, sources, weight_power):
        num = q * w if num is None else num + q * w
        den = w.copy() if den is None else den + w
    if num is None:
        raise ValueError("no source images given")
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def gradient_energy(img: np.ndarray, window: int = SHARPNESS_WINDOW) -> np.ndarray:
    """Local gradient energy: squared Sobel magnitude of the luma, box-averaged over ``window`` px."""
    gx, gy = ndi.sobel(img, axis=1), ndi.sobel(img, axis=0)
    e = gx * gx + gy * gy
    return ndi.uniform_filter(e, window, mode="reflect") if window > 1 else e


def sharpness_scores(fused: np.ndarray, sources: Any, window: int = SHARPNESS_WINDOW) -> dict[str, float]:
    """Gradient energy of the fused image against the sharpest source at each pixel (no ground truth).

    With E = local gradient energy (:func:`gradient_energy`) and E_max = its per-pixel maximum over
    the sources (running max: one source in memory at a time):

    ``sharpness`` = sum min(E_f, E_max) / sum E_max, in [0, 1]; 1 = as sharp as the sharpest slice
        everywhere. Capped per pixel, so energy beyond the sharpest slice (halos, ringing, seams,
        amplified noise) earns nothing; energy-weighted, so flat areas (where the ratio is noise over
        noise) barely count. Blur, i.e. taking a pixel from a defocused slice, lowers it.
    ``excess`` = sum max(E_f - E_max, 0) / sum E_max, >= 0 (0 is best): gradient energy that no
        source has at that place: seams between slices of different brightness or magnification,
        ringing, sharpening halos, noise. Selection-based fusions show it only at seams, and any
        single slice scores 0, so read it next to ``sharpness``, never alone.

    Both are ratios of sums, so they do not depend on the intensity scale (8/16-bit, float).
    """
    ef = gradient_energy(_luma(fused), window)
    emax = None
    for s in _iter_slices(sources):
        e = gradient_energy(_luma(s), window)
        if e.shape != ef.shape:
            raise ValueError(f"source shape {e.shape} differs from the fused image's {ef.shape}")
        emax = e if emax is None else np.maximum(emax, e, out=emax)
    if emax is None:
        raise ValueError("no source images given")
    total = float(emax.sum())
    if total == 0:
        return {"sharpness": 1.0 if not ef.any() else 0.0, "excess": float(ef.sum() > 0)}
    return {"sharpness": float(np.minimum(ef, emax).sum()) / total,
            "excess": float(np.maximum(ef - emax, 0).sum()) / total}
