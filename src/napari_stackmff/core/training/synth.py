"""Synthetic focal stacks whose true focus is known: for tests, benchmarks, training and samples.

A scene is an all-in-focus image plus an inverse-depth map d in [0, 1]. Slice j is focused at
f_j; under the thin-lens model the blur-circle diameter is proportional to |d - f_j| when d is
inverse depth, so that is what we use. Scenes are composited in depth layers back to front
(occlusion-aware: a near object's blurred edge covers what is behind it), blurred by a disc-like
PSF, then given Poisson-Gaussian sensor noise and quantised to 8 or 16 bits. Nothing is
downloaded: scenes are made in code or taken from images bundled inside scikit-image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage as ndi

from ..io.stack import FocalStack, as_focal_stack
from .realism import Realism, compress, degrade, draw_psf, psf_kernel

SCENE_KINDS = ("cells", "fibres", "particles", "tissue", "natural", "text", "bundled")
DEPTH_KINDS = ("smooth", "plane", "objects")
#: z-step of the bundled sample stack, in micrometres.
SAMPLE_Z_STEP_UM = 2.0
#: Images shipped inside the scikit-image wheel (no download needed).
BUNDLED_IMAGES = ("astronaut", "camera", "coffee", "chelsea", "rocket", "coins", "moon", "page", "immunohistochemistry",
                  "hubble_deep_field", "brick", "grass", "gravel")


@dataclass
class SynthStack:
    """A rendered focal stack with its ground truth."""

    slices: np.ndarray  # (N, H, W[, 3]) uint8/uint16
    aif: np.ndarray  # (H, W[, 3]) same dtype: the noise-free all-in-focus truth
    depth: np.ndarray  # (H, W) float32 inverse depth in [0, 1]
    focus_positions: np.ndarray  # (N,) focus position of each slice, same units as depth
    focus_index: np.ndarray  # (H, W) float32: true focus in slice units (sub-slice)
    events: np.ndarray | None = None  # (N, H, W) float32 signed event counts, when simulated

    @property
    def nearest_index(self) -> np.ndarray:
        """Index of the slice focused closest to each pixel's depth."""
        return np.abs(self.depth[None] - self.focus_positions[:, None, None]).argmin(axis=0)

    def to_stack(self, z_scale: float | None = None, unit: str | None = None) -> FocalStack:
        z = None if z_scale is None else self.focus_positions * z_scale
        stack = as_focal_stack(self.slices, z_positions=z, unit=unit, source="synthetic")
        stack.events = self.events
        return stack


# --------------------------------------------------------------------------------- scenes
def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    f -= f.min()
    return f / max(float(f.max()), 1e-6)


def _pink_noise(rng: np.random.Generator, shape: tuple[int, int], beta: float = 2.0) -> np.ndarray:
    """1/f^beta noise: the power spectrum of natural images."""
    h, w = shape
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fy, fx), 1.0 / max(h, w)) ** (beta / 2)
    spec = amp * np.exp(2j * np.pi * rng.random(amp.shape))
    img = np.fft.irfft2(spec, s=shape).astype(np.float32)
    img -= img.min()
    return img / max(float(img.max()), 1e-6)


def _cells(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Fluorescence-like: textured nuclei and puncta on a dim, slightly structured background."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = 0.05 + 0.06 * _smooth_noise(rng, shape, max(h, w) / 16) + 0.06 * _smooth_noise(rng, shape, 1.0)
    count = int(rng.integers(6, 18) * h * w / 256**2) + 2
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(6, 22, size=2) * max(h, w) / 256
        th = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(th) + dx * np.sin(th)) / ry
        v = (-dy * np.sin(th) + dx * np.cos(th)) / rx
        r2 = u * u + v * v
        inside = 1.0 / (1.0 + np.exp(np.clip((r2 - 1.0) * 12, -50, 50)))
        chromatin = 0.3 + 0.7 * _smooth_noise(rng, shape, 1.0)
        img = np.maximum(img, inside * chromatin * rng.uniform(0.5, 1.0))
    spots = rng.random(shape) > 1 - 0.002
    img += ndi.gaussian_filter(spots.astype(np.float32), 1.0) * 3
    return np.clip(img, 0, 1)


def _fibres(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    canvas = np.zeros(shape, np.float32)
    for _ in range(int(rng.integers(15, 40))):
        p = np.array([rng.uniform(0, h), rng.uniform(0, w)])
        ang = rng.uniform(0, 2 * np.pi)
        bright = rng.uniform(0.4, 1.0)
        for _ in range(int(max(h, w) * 1.5)):
            ang += rng.normal(0, 0.08)
            p += (np.sin(ang), np.cos(ang))
            iy, ix = int(p[0]) % h, int(p[1]) % w
            canvas[iy, ix] = max(canvas[iy, ix], bright)
    img = ndi.gaussian_filter(canvas, 0.8) * 3 + 0.1 * _pink_noise(rng, shape)
    return np.clip(img, 0, 1)


def _particles(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    spots = (rng.random(shape) > 0.985).astype(np.float32) * rng.uniform(0.3, 1.0, shape).astype(np.float32)
    img = ndi.gaussian_filter(spots, rng.uniform(0.7, 1.5)) * 8 + 0.25 * _smooth_noise(rng, shape, 12)
    return np.clip(img, 0, 1)


def _tissue(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    base = _pink_noise(rng, shape, 1.6)
    cells = np.sin(base * rng.uniform(20, 40)) * 0.5 + 0.5
    return np.clip(0.6 * base + 0.4 * cells * _smooth_noise(rng, shape, 3), 0, 1)


def _text(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image, ImageDraw

    h, w = shape
    im = Image.new("L", (w, h), int(rng.integers(150, 255)))
    draw = ImageDraw.Draw(im)
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    for y in range(0, h, int(rng.integers(9, 16))):
        line = "".join(rng.choice(list(letters + "  "), size=w // 5))
        draw.text((int(rng.integers(-5, 5)), y), line, fill=int(rng.integers(0, 90)))
    return np.asarray(im, np.float32) / 255


def _bundled(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    from skimage import data as skdata
    from skimage.color import rgb2gray
    from skimage.transform import resize

    for _ in range(5):
        name = str(rng.choice(BUNDLED_IMAGES))
        try:
            img = getattr(skdata, name)()
            break
        except Exception:  # an image that would need a download: try another
            continue
    else:
        return _pink_noise(rng, shape)
    img = img.astype(np.float32) / (255.0 if img.dtype == np.uint8 else max(float(img.max()), 1.0))
    if img.ndim == 3:
        img = rgb2gray(img[..., :3])
    h, w = shape
    scale = rng.uniform(max(h / img.shape[0], w / img.shape[1]), max(1.0, 1.5 * h / img.shape[0]))
    img = resize(img, (max(h, int(img.shape[0] * scale)), max(w, int(img.shape[1] * scale))), anti_aliasing=True)
    y0 = int(rng.integers(0, img.shape[0] - h + 1))
    x0 = int(rng.integers(0, img.shape[1] - w + 1))
    return np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w], dtype=np.float32)


_SCENES = {
    "cells": _cells, "fibres": _fibres, "particles": _particles, "tissue": _tissue,
    "natural": lambda rng, s: _pink_noise(rng, s), "text": _text, "bundled": _bundled,
}


def random_scene(rng: np.random.Generator, shape: tuple[int, int], kind: str | None = None,
                 rgb: bool = False) -> np.ndarray:
    """An all-in-focus image in [0, 1]: (H, W), or (H, W, 3) tinted when ``rgb``."""
    kind = kind or str(rng.choice(SCENE_KINDS))
    img = _SCENES[kind](rng, shape).astype(np.float32)
    if rgb:
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        colour = np.stack([_smooth_noise(rng, shape, max(shape) / 8) for _ in range(3)], -1)
        img = np.clip(img[..., None] * (0.6 * tint + 0.4 * colour), 0, 1)
    return img


def random_depth(rng: np.random.Generator, shape: tuple[int, int], kind: str | None = None) -> np.ndarray:
    """Inverse depth in [0, 1]: smooth fields, tilted planes, or objects with occlusion edges."""
    kind = kind or str(rng.choice(DEPTH_KINDS))
    h, w = shape
    if kind == "plane":
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        a, b = rng.normal(size=2)
        d = a * yy / h + b * xx / w
    elif kind == "smooth":
        d = _smooth_noise(rng, shape, rng.uniform(0.08, 0.25) * max(h, w))
    else:
        d = 0.3 * _smooth_noise(rng, shape, 0.3 * max(h, w))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            r = rng.uniform(0.1, 0.35) * min(h, w)
            blob = _smooth_noise(rng, shape, r / 3) * 0.6 + np.hypot(yy - cy, xx - cx) / r
            level = rng.uniform(0.3, 1.0)
            d = np.where(blob < 1.0, np.maximum(d, level + 0.1 * (1 - blob)), d)
    d = d - d.min()
    return (d / max(float(d.max()), 1e-6)).astype(np.float32)


# --------------------------------------------------------------------------------- optics
def disc_psf_fft(radius: float, shape: tuple[int, int], device: torch.device, kind: str = "disc") -> torch.Tensor:
    """rFFT of a PSF of blur radius ``radius`` centred at the origin: a disc with an anti-aliased rim
    by default, or another shape of :data:`.realism.PSF_KINDS`."""
    h, w = shape
    y = torch.fft.fftfreq(h, 1.0 / h, device=device).view(-1, 1)
    x = torch.fft.fftfreq(w, 1.0 / w, device=device).view(1, -1)
    k = psf_kernel(radius, torch.sqrt(y * y + x * x), kind)
    return torch.fft.rfft2(k / k.sum())


def render_stack(
    aif: np.ndarray,
    depth: np.ndarray,
    focus_positions: Sequence[float],
    *,
    max_radius: float = 8.0,
    layers: int = 24,
    dtype: str | np.dtype = np.uint8,
    peak_photons: float | None = None,
    read_noise: float = 0.0,
    rng: np.random.Generator | None = None,
    psf: str = "disc",
    realism: Realism | None = None,
) -> SynthStack:
    """Render the focal stack of an all-in-focus image and an inverse-depth map.

    The blur radius at a pixel of depth d in slice j is ``max_radius * |d - f_j|``. Depth is cut
    into ``layers`` layers composited far to near with premultiplied alpha, so a near object's
    defocused rim spreads over the background and not the other way round. ``psf`` picks the PSF
    shape; ``realism`` adds camera-side effects (breathing, misalignment, vignetting, fixed-pattern
    noise, JPEG; :mod:`.realism`), the truth staying in the middle slice's frame.
    """
    rng = rng or np.random.default_rng(0)
    f = np.asarray(focus_positions, dtype=np.float32)
    img = np.asarray(aif, np.float32)
    gray = img.ndim == 2
    if gray:
        img = img[..., None]
    h, w, c = img.shape
    pad = int(np.ceil(max_radius)) + 2
    fft_size = lambda n: int(2 ** np.ceil(np.log2(n))) if n <= 256 else -(-n // 64) * 64
    pad_y, pad_x = fft_size(h + 2 * pad) - h, fft_size(w + 2 * pad) - w  # FFT-friendly sizes
    dev = torch.device("cpu")
    # Layers: far (small inverse depth) to near.
    edges = np.linspace(0, 1, layers + 1)
    centre = 0.5 * (edges[:-1] + edges[1:])
    lab = np.clip(np.digitize(depth, edges[1:-1]), 0, layers - 1)
    present = np.unique(lab)
    planes = []
    for l in present:
        m = (lab == l).astype(np.float32)
        planes.append(np.concatenate([img * m[..., None], m[..., None]], axis=-1))
    vol = torch.from_numpy(np.stack(planes)).permute(0, 3, 1, 2)  # (L, C+1, H, W)
    mode = "reflect" if max(pad_x - pad, pad_y - pad) < min(h, w) else "replicate"  # reflect needs pad < size
    vol = torch.nn.functional.pad(vol, (pad, pad_x - pad, pad, pad_y - pad), mode=mode)
    spec = torch.fft.rfft2(vol)
    hp, wp = vol.shape[-2:]
    psf_cache: dict[float, torch.Tensor] = {}
    slices = np.empty((len(f), h, w, c), np.float32)
    for j, fj in enumerate(f):
        psfs = []
        for l in present:
            r = round(float(max_radius * abs(centre[l] - fj)) * 4) / 4  # quarter-pixel radius bins
            if r not in psf_cache:
                psf_cache[r] = disc_psf_fft(r, (hp, wp), dev, psf)
            psfs.append(psf_cache[r])
        blurred = torch.fft.irfft2(spec * torch.stack(psfs)[:, None], s=(hp, wp))  # (L, C+1, H, W)
        # "Over" compositing far to near, vectorised: layer l is seen through all nearer layers.
        alpha = blurred[:, -1].clamp(0, 1)
        through = torch.cumprod(torch.flip(1 - alpha, [0]), 0)
        transmit = torch.flip(torch.cat([torch.ones_like(through[:1]), through[:-1]]), [0])  # prod over k > l
        out = (blurred[:, :-1] * transmit[:, None]).sum(0)
        # Where two layers of different blur meet, their soft edges leave partial coverage; the
        # real scene continues behind, so renormalise by the coverage instead of darkening.
        out = out / (1 - through[-1]).clamp_min(1e-3)
        slices[j] = out[:, pad:pad + h, pad:pad + w].permute(1, 2, 0).numpy()
    slices = np.clip(slices, 0, 1)
    jpeg = False
    if realism is not None:
        slices, jpeg = degrade(slices, f, rng, realism)
    if peak_photons:
        slices = rng.poisson(slices * peak_photons).astype(np.float32) / peak_photons
    if read_noise:
        slices = slices + rng.normal(0, read_noise, slices.shape).astype(np.float32)
    if jpeg:
        slices = compress(slices[..., 0] if gray else slices, rng, realism)
        slices = slices[..., None] if gray else slices
        dtype = np.uint8  # a JPEG holds 8 bits
    dtype = np.dtype(dtype)
    top = float(np.iinfo(dtype).max) if dtype.kind == "u" else 1.0
    q = lambda a: (np.clip(a, 0, 1) * top + (0.5 if dtype.kind == "u" else 0)).astype(dtype)
    stack_q, aif_q = q(slices), q(img)
    if gray:
        stack_q, aif_q = stack_q[..., 0], aif_q[..., 0]
    # Truth follows what was rendered: each pixel was blurred as if at its layer's centre depth.
    rendered_depth = centre[lab].astype(np.float32)
    order = np.argsort(f)
    focus_index = np.interp(rendered_depth, f[order], order.astype(np.float32)).astype(np.float32)
    return SynthStack(slices=stack_q, aif=aif_q, depth=depth.astype(np.float32), focus_positions=f,
                      focus_index=focus_index)


def focus_positions(rng: np.random.Generator, n: int, uniform: bool = False) -> np.ndarray:
    """Increasing focus positions spanning [0, 1]; non-uniform steps unless ``uniform``."""
    if uniform or n <= 2:
        return np.linspace(0, 1, n, dtype=np.float32)
    steps = rng.uniform(0.5, 1.5, n - 1)
    pos = np.concatenate([[0], np.cumsum(steps)])
    return (pos / pos[-1]).astype(np.float32)


def random_stack(
    rng: np.random.Generator,
    *,
    size: int | tuple[int, int] = 128,
    n: int | None = None,
    n_range: tuple[int, int] = (2, 32),
    dtype: str | np.dtype | None = None,
    rgb: bool | None = None,
    scene: str | None = None,
    depth: str | None = None,
    noise: bool = True,
    max_radius: tuple[float, float] = (3.0, 10.0),
    realism: Realism | None = None,
) -> SynthStack:
    """One random stack: scene, depth, N, focus steps, blur strength, noise and bit depth drawn;
    with ``realism``, also the PSF shape and the camera-side effects (:mod:`.realism`)."""
    shape = (size, size) if isinstance(size, int) else tuple(size)
    n = n or int(rng.integers(n_range[0], n_range[1] + 1))
    dtype = np.dtype(dtype or rng.choice(["uint8", "uint16"]))
    rgb = bool(rng.random() < 0.3) if rgb is None else rgb
    aif = random_scene(rng, shape, scene, rgb=rgb)
    d = random_depth(rng, shape, depth)
    photons = float(rng.choice([30.0, 200.0, 2000.0])) if noise else None
    read = float(rng.uniform(0.002, 0.01)) if noise else 0.0
    psf = draw_psf(rng, realism) if realism is not None else "disc"
    return render_stack(aif, d, focus_positions(rng, n), max_radius=float(rng.uniform(*max_radius)),
                        layers=min(24, max(12, 2 * n)), dtype=dtype, peak_photons=photons, read_noise=read, rng=rng,
                        psf=psf, realism=realism)


def make_sample(kind: str = "cells", *, n: int = 12, size: int = 256, seed: int = 7,
                dtype: str = "uint16", events: bool = False) -> SynthStack:
    """The deterministic sample stack we bundle (napari sample data, README demo)."""
    rng = np.random.default_rng(seed)
    shape = (size, size)
    aif = random_scene(rng, shape, kind, rgb=False)
    d = random_depth(rng, shape, "objects")
    radius = 1.2 * (n - 1)  # ~1 px more blur per slice step, as when the z-step matches the depth of field
    s = render_stack(aif, d, focus_positions(rng, n, uniform=True), max_radius=radius, layers=24, dtype=dtype,
                     peak_photons=1500.0, read_noise=0.003, rng=rng)
    if events:
        s.events = simulate_events(aif, d, s.focus_positions, max_radius=radius, rng=rng)
    return s


def texture_mask(aif: np.ndarray, window: int = 9, quantile: float = 0.4) -> np.ndarray:
    """Pixels with real texture (where focus is decidable): local std above a quantile."""
    img = aif.astype(np.float32)
    if img.ndim == 3:
        img = img.mean(-1)
    m = ndi.uniform_filter(img, window)
    sd = np.sqrt(np.clip(ndi.uniform_filter(img * img, window) - m * m, 0, None))
    return sd > np.quantile(sd, quantile)


def write_dataset(outdir: str | Path, count: int, *, seed: int = 0, size: int = 256,
                  n_range: tuple[int, int] = (4, 24), dtype: str | None = None) -> Path:
    """A dataset in the seed layout: stacks/<scene>/1.png..., depth_maps/<scene>.png, aif/<scene>.png
    (16-bit colour slices are written as .tif).

    Depth maps hold the true focus as a fraction of the stack (0 = first slice, 65535 = last).
    """
    from ..io.write import write_png, write_tiff

    def write(path: Path, img: np.ndarray) -> None:
        # PNG cannot hold 16-bit colour through Pillow: those slices go to TIFF (readers take both).
        if img.ndim == 3 and img.dtype == np.uint16:
            write_tiff(path.with_suffix(".tif"), img)
        else:
            write_png(path, img)

    out = Path(outdir)
    rng = np.random.default_rng(seed)
    for i in range(count):
        s = random_stack(rng, size=size, n_range=n_range, dtype=dtype)
        name = f"scene{i:05d}"
        for j, sl in enumerate(s.slices, start=1):
            write(out / "stacks" / name / f"{j}.png", sl)
        rel = s.focus_index / max(len(s.focus_positions) - 1, 1)
        write_png(out / "depth_maps" / f"{name}.png", (np.clip(rel, 0, 1) * 65535 + 0.5).astype(np.uint16))
        write(out / "aif" / f"{name}.png", s.aif)
    return out


def simulate_events(
    aif: np.ndarray,
    depth: np.ndarray,
    focus_positions: Sequence[float],
    *,
    max_radius: float = 8.0,
    substeps: int = 4,
    threshold: float = 0.2,
    threshold_jitter: float = 0.03,
    noise_rate: float = 0.002,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """ESIM-style events of a focal sweep, accumulated per focal slice -> (N, H, W) float32.

    The sweep is rendered at ``substeps`` positions between consecutive slices; a pixel fires
    each time its log intensity moves ``threshold`` (jittered per pixel) away from its last
    reference level; a few noise events are sprinkled in. Sub-steps nearest slice j count for j.
    """
    rng = rng or np.random.default_rng(0)
    f = np.asarray(focus_positions, np.float32)
    n = len(f)
    fine = np.concatenate([np.linspace(f[i], f[i + 1], substeps, endpoint=False) for i in range(n - 1)] + [f[-1:]])
    owner = np.abs(fine[:, None] - f[None, :]).argmin(axis=1)
    sweep = render_stack(aif, depth, fine, max_radius=max_radius, layers=24, dtype=np.float32).slices
    if sweep.ndim == 4:
        sweep = sweep @ np.array([0.299, 0.587, 0.114], np.float32)
    logi = np.log(sweep + 1e-3)
    c = threshold + threshold_jitter * rng.standard_normal(logi.shape[1:]).astype(np.float32)
    c = np.maximum(c, 0.05)
    ref = logi[0].copy()
    out = np.zeros((n, *logi.shape[1:]), np.float32)
    for k in range(1, len(fine)):
        diff = logi[k] - ref
        count = np.floor(np.abs(diff) / c)
        ref += np.sign(diff) * count * c
        out[owner[k]] += np.sign(diff) * count
    noise = rng.random(out.shape) < noise_rate
    out[noise] += rng.choice([-1.0, 1.0], size=int(noise.sum()))
    return out


#: Kinds of invalid slices :func:`disorder` inserts: what real stacks contain (a frame taken with the lens
#: cap on, an over-exposed frame, a repeated frame, a frame from elsewhere, a dark noisy frame, a jolt).
INVALID_KINDS = ("blank", "saturated", "duplicate", "other_scene", "noise", "shift")


def invalid_slice(kind: str, stack: np.ndarray, rng: np.random.Generator, top: float,
                  other: np.ndarray | None = None) -> np.ndarray:
    """One invalid slice shaped like ``stack``'s slices (any dtype, values in [0, top])."""
    f = stack.astype(np.float32)
    pick = f[int(rng.integers(len(f)))]
    if kind == "blank":
        out = np.full_like(pick, float(rng.uniform(0, 0.1)) * top)
    elif kind == "saturated":
        out = np.clip(pick * float(rng.uniform(3, 8)), 0, top)
    elif kind == "duplicate":
        out = pick
    elif kind == "other_scene":
        src = other.astype(np.float32) if other is not None else f[:, ::-1, ::-1]  # elsewhere: flipped
        out = src[int(rng.integers(len(src)))]
        if out.shape != pick.shape:
            out = np.resize(out, pick.shape)
    elif kind == "noise":
        out = np.clip(0.2 * pick + rng.normal(0.3, 0.25, pick.shape).astype(np.float32) * top, 0, top)
    elif kind == "shift":
        dy, dx = (int(v) * int(rng.choice([-1, 1])) for v in rng.integers(3, 9, 2))
        out = np.roll(pick, (dy, dx), axis=(0, 1))
    else:
        raise ValueError(f"unknown invalid slice kind {kind!r}; known: {', '.join(INVALID_KINDS)}")
    return out.astype(stack.dtype)


def disorder(stack: np.ndarray, label: np.ndarray, rng: np.random.Generator, *, shuffle: bool = True,
             n_invalid: int = 0, kinds: Sequence[str] = INVALID_KINDS, other: np.ndarray | None = None,
             top: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An untidy version of a stack, as real ones come: (stack, label, valid) with ``n_invalid`` invalid
    slices inserted at random places and, with ``shuffle``, every slice moved to a random place.

    ``label`` is the integer index of the in-focus slice per pixel; it follows the slices. ``valid``
    marks, in the new order, the slices that were in the original stack. A duplicate keeps its
    original as the label (they look the same: either is right when gathering).
    """
    n = len(stack)
    if top is None:
        top = float(np.iinfo(stack.dtype).max) if stack.dtype.kind in "ui" else 1.0
    extra = [invalid_slice(str(rng.choice(list(kinds))), stack, rng, top, other) for _ in range(n_invalid)]
    full = np.concatenate([stack, np.stack(extra)]) if extra else stack
    order = rng.permutation(len(full)) if shuffle else np.concatenate(
        [np.arange(n), np.arange(n, len(full))])
    if not shuffle and extra:  # keep the valid ones in order, put the invalid ones anywhere
        slots = np.sort(rng.choice(len(full), size=n, replace=False))
        order = np.empty(len(full), int)
        order[slots] = np.arange(n)
        order[np.setdiff1d(np.arange(len(full)), slots)] = np.arange(n, len(full))
    new_pos = np.empty(len(full), int)
    new_pos[order] = np.arange(len(full))
    valid = order < n
    return full[order], new_pos[np.asarray(label, int)], valid
