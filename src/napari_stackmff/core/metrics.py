"""Quality scores: against ground truth (PSNR, SSIM, focus error) and without it (gradient Q^AB/F)."""

from __future__ import annotations

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


def _sobel(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx, gy = ndi.sobel(img, axis=1), ndi.sobel(img, axis=0)
    return np.hypot(gx, gy), np.arctan(gy / (gx + 1e-12))


def qabf(fused: np.ndarray, sources: np.ndarray) -> float:
    """Xydeas-Petrović gradient-transfer score generalised from pairs to stacks (in [0, 1]).

    Each source's edges, weighted by their strength, should reappear in the fused image; with
    N sources every edge is counted where it is strongest. Needs no ground truth.
    """
    def gray(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float64)
        return x @ np.array([0.299, 0.587, 0.114]) if x.ndim == 3 and x.shape[-1] == 3 else x

    gf, af = _sobel(gray(fused))
    num = den = 0.0
    for s in sources:
        gs, as_ = _sobel(gray(s))
        g = np.where(gs > gf, gf / (gs + 1e-12), gs / (gf + 1e-12))
        a = 1 - np.abs(as_ - af) / (np.pi / 2)
        qg = 0.9994 / (1 + np.exp(-15 * (g - 0.5)))
        qa = 0.9879 / (1 + np.exp(-22 * (a - 0.8)))
        w = gs ** 1.0
        num += float((qg * qa * w).sum())
        den += float(w.sum())
    return num / den if den else 0.0
