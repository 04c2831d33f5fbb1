"""What real lenses and cameras do that the thin-lens renderer (:mod:`.synth`) does not.

Our weights beat classical fusion on rendered stacks and lose to it on real ones; these effects are
the candidates for that gap. Each is one switch of :class:`Realism`, applied by
:func:`.synth.render_stack` (PSF shape) or after it (:func:`degrade`), so a training run can turn
each on alone and the real-stack benchmark can measure what it buys
(``benchmarks/bench_realism.py``; measured figures in ``benchmarks/RESULTS.md``).

The truth (focus index, all-in-focus image) stays in the frame of the stack's middle slice: breathing
and misalignment move the other slices, as a real sweep does, and the network has to cope.
Occlusion spill (a defocused foreground spreading over a sharp background) is not here: the renderer
composites depth layers far to near with blurred coverage, which already produces it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, fields

import numpy as np
import torch
from scipy import ndimage as ndi

from ..defaults import REALISM_EFFECTS
from ..errors import StackMFFError

#: PSF shapes: a pillbox (ideal thin lens), a Gaussian (soft, e.g. apodised or diffraction-dominated
#: optics) and a bright-rimmed disc (under/over-corrected spherical aberration: "soap-bubble" bokeh).
PSF_KINDS = ("disc", "gaussian", "rim")


@dataclass(frozen=True)
class Realism:
    """Probabilities (per rendered stack) and strengths of each real-optics effect. All off: the
    renderer as it was. The strengths are drawn uniformly up to the given maximum."""

    psf: float = 0.0  # chance of a non-disc PSF (Gaussian or bright rim, equally)
    breathing: float = 0.0  # chance of focus breathing
    max_breathing: float = 0.05  # total magnification change over the sweep (real: 2.5-8.5 %)
    shift: float = 0.0  # chance of slice-to-slice misalignment
    max_shift: float = 1.5  # px, random walk amplitude over the sweep
    jpeg: float = 0.0  # chance of JPEG compression of every slice
    jpeg_quality: tuple[int, int] = (70, 95)
    vignetting: float = 0.0  # chance of a radial fall-off
    max_vignetting: float = 0.4  # darkening at the corners
    sensor: float = 0.0  # chance of fixed-pattern noise (column gain, hot pixels) on top of shot/read noise

    @classmethod
    def only(cls, name: str) -> "Realism":
        """One effect always on, the rest off (for measuring each alone)."""
        if name == "none":
            return cls()
        if name == "all":
            return cls(**{f.name: 1.0 for f in fields(cls) if f.name in EFFECTS})
        if name not in EFFECTS:
            raise StackMFFError(f"unknown realism effect {name!r}; choose one of none, all, {', '.join(EFFECTS)}.")
        return cls(**{name: 1.0})

    @classmethod
    def mix(cls, names: tuple[str, ...] | list[str], p: float = 0.5) -> "Realism":
        """The named effects (or ``all``) each on with probability ``p``."""
        names = EFFECTS if "all" in names else names
        unknown = [n for n in names if n not in EFFECTS]
        if unknown:
            raise StackMFFError(f"unknown realism effect {unknown[0]!r}; choose from all, {', '.join(EFFECTS)}.")
        return cls(**{n: p for n in names})


EFFECTS = REALISM_EFFECTS


def psf_kernel(radius: float, rr: torch.Tensor, kind: str = "disc") -> torch.Tensor:
    """Unnormalised PSF of blur radius ``radius`` (px) on a grid of distances ``rr`` from its centre."""
    if radius < 0.5:
        return torch.exp(-0.5 * (rr / 0.35) ** 2)
    disc = (radius + 0.5 - rr).clamp(0, 1)  # pillbox with a one-pixel soft rim
    if kind == "disc":
        return disc
    if kind == "gaussian":  # same second moment as the disc: sigma = r / sqrt(2)
        return torch.exp(-0.5 * (rr / (radius / 2 ** 0.5)) ** 2)
    if kind == "rim":  # brightness rising to 3x at the rim
        return disc * (1.0 + 2.0 * (rr / radius).clamp(0, 1) ** 4)
    raise ValueError(f"unknown PSF kind {kind!r}; choose one of {', '.join(PSF_KINDS)}")


def draw_psf(rng: np.random.Generator, realism: Realism) -> str:
    """The PSF shape of one stack."""
    if realism.psf and rng.random() < realism.psf:
        return str(rng.choice(PSF_KINDS[1:]))
    return "disc"


def _warp(img: np.ndarray, scale: float, dy: float, dx: float) -> np.ndarray:
    """Magnify by ``scale`` about the centre and shift by (dy, dx); edges repeat (a real frame has
    content there too)."""
    h, w = img.shape[:2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    # output (y, x) samples input ((y - cy - dy) / scale + cy, ...)
    matrix = np.diag([1 / scale, 1 / scale])
    offset = np.array([cy - (cy + dy) / scale, cx - (cx + dx) / scale])
    if img.ndim == 2:
        return ndi.affine_transform(img, matrix, offset, order=1, mode="nearest")
    return np.stack([ndi.affine_transform(img[..., c], matrix, offset, order=1, mode="nearest")
                     for c in range(img.shape[-1])], -1)


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    from PIL import Image

    u8 = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(u8).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    return np.asarray(Image.open(buf), np.float32) / 255


def degrade(slices: np.ndarray, focus_positions: np.ndarray, rng: np.random.Generator,
            realism: Realism) -> tuple[np.ndarray, bool]:
    """Apply the camera-side effects to float slices in [0, 1] (N, H, W[, C]), before noise and
    quantisation; returns the slices and whether they must be stored as 8-bit (JPEG)."""
    n, h, w = slices.shape[:3]
    out = slices
    f = np.asarray(focus_positions, np.float32)
    mid = float(np.median(f))
    scales = np.ones(n)
    shifts = np.zeros((n, 2))
    if realism.breathing and rng.random() < realism.breathing:
        total = rng.uniform(-realism.max_breathing, realism.max_breathing)
        scales = 1.0 + total * (f - mid) / max(float(np.ptp(f)), 1e-6)
    if realism.shift and rng.random() < realism.shift:
        walk = np.cumsum(rng.normal(0, 1, (n, 2)), 0)
        walk -= walk[int(np.argmin(np.abs(f - mid)))]
        shifts = walk / max(float(np.abs(walk).max()), 1e-6) * rng.uniform(0.3, realism.max_shift)
    if np.any(scales != 1) or np.any(shifts != 0):
        out = np.stack([_warp(s, float(scales[j]), *shifts[j]) if (scales[j] != 1 or np.any(shifts[j])) else s
                        for j, s in enumerate(out)])
    if realism.vignetting and rng.random() < realism.vignetting:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((yy - (h - 1) / 2) ** 2 + (xx - (w - 1) / 2) ** 2) / (((h - 1) / 2) ** 2 + ((w - 1) / 2) ** 2)
        # The image circle is larger than a crop of it: centre the fall-off anywhere near the crop.
        fall = 1.0 - rng.uniform(0.05, realism.max_vignetting) * r2
        out = out * (fall[..., None] if out.ndim == 4 else fall)
    if realism.sensor and rng.random() < realism.sensor:
        cols = 1.0 + rng.normal(0, 0.01, w).astype(np.float32)  # column gain of a CMOS readout
        out = out * (cols[:, None] if out.ndim == 4 else cols)
        hot = rng.random((h, w)) < 2e-4  # stuck-bright pixels, the same in every slice
        out = np.where(hot[..., None] if out.ndim == 4 else hot, 1.0, out)
    jpeg = bool(realism.jpeg and rng.random() < realism.jpeg)
    return np.clip(out, 0, 1).astype(np.float32), jpeg


def compress(slices: np.ndarray, rng: np.random.Generator, realism: Realism) -> np.ndarray:
    """JPEG-compress every 8-bit slice at one random quality (after noise, as a camera does)."""
    q = int(rng.integers(realism.jpeg_quality[0], realism.jpeg_quality[1] + 1))
    return np.stack([_jpeg(s, q) for s in slices])
