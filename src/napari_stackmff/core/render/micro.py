"""Microscope focal stacks from a 3-D specimen and a wave-optics PSF, with exact truth (issue 28).

Why: our synthetic stacks blur flat layers with discs; a microscope's defocus is not a disc (rings,
an axially elongated, NA-dependent PSF), and a thick specimen is many layers at once. Here a 3-D
specimen (``L`` layers, each at its own z) is imaged at ``N`` focal planes through the widefield PSF
of a circular pupil: the scalar angular-spectrum (Debye) model, |IFFT(P(k) exp(2 pi i z kz(k)))|^2,
with kz = sqrt((n/lambda)^2 - |k|^2) and P the pupil of radius NA/lambda. Written from the optics;
no PSF library (the GPL ones may not be dependencies, see issue 28).

* **fluorescence**: emitters (cells with textured nuclei, filaments running through z, beads) add up
  incoherently: slice(f) = sum_l emit_l * PSF(z_f - z_l); Poisson photons, read noise, camera offset, uint16.
* **brightfield** (transmitted light, Koehler illumination filling the pupil: incoherent): an absorbing
  specimen (a textured body surface of varying height, hairs at their own depths) in a bright field;
  each layer's transmittance is blurred by its own defocus and the layers multiply along the light path;
  RGB through three wavelengths (the PSF widens with lambda: colour fringes at defocused edges), uint8.

Truth: the all-in-focus image is the same specimen with every layer imaged in focus (PSF(0)); the
depth is the z of the layer that dominates each pixel in that image; ``focus_index`` maps it onto the
slices (sub-slice, linear between focal planes); ``valid`` marks pixels with signal to judge focus by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Emission wavelength (um) of the fluorescence renders, and the three of the brightfield RGB channels
#: (red, green, blue): the PSF's width scales with lambda / NA.
FLUO_WAVELENGTH = 0.52
RGB_WAVELENGTHS = (0.61, 0.54, 0.47)
KINDS = ("fluorescence", "brightfield")


@dataclass
class Optics:
    """A widefield microscope: numerical aperture, immersion index, pixel size at the sample (um)."""

    na: float = 0.5
    n: float = 1.0
    pixel_um: float = 0.25

    def depth_of_field_um(self, wavelength: float) -> float:
        """Wave-optical depth of field, n lambda / NA^2 (the axial extent of the PSF's core)."""
        return self.n * wavelength / self.na ** 2


@dataclass
class MicroStack:
    """A rendered microscope stack with its truth (same fields as the synthetic stacks, plus z in um)."""

    slices: np.ndarray  # (N, H, W[, 3]) uint16 (fluorescence) / uint8 RGB (brightfield)
    aif: np.ndarray  # (H, W[, 3]) same dtype: every layer in focus, no noise
    depth_um: np.ndarray  # (H, W) float32: z of the dominant layer
    focus_um: np.ndarray  # (N,) z of each focal plane
    focus_index: np.ndarray  # (H, W) float32: depth in slice units (sub-slice)
    valid: np.ndarray  # (H, W) bool: pixels whose in-focus signal is clearly above the background
    kind: str = "fluorescence"
    optics: Optics | None = None


def otf(shape: tuple[int, int], dz_um: float, wavelength: float, optics: Optics) -> np.ndarray:
    """Optical transfer function (rfft2 layout) of the widefield intensity PSF at defocus ``dz_um``,
    normalised to 1 at zero frequency."""
    h, w = shape
    fy = np.fft.fftfreq(h, optics.pixel_um)[:, None]
    fx = np.fft.fftfreq(w, optics.pixel_um)[None, :]
    k2 = fx ** 2 + fy ** 2
    cut = optics.na / wavelength
    pupil = k2 <= cut ** 2
    kz = np.sqrt(np.maximum((optics.n / wavelength) ** 2 - k2, 0.0))
    field = np.fft.ifft2(pupil * np.exp(2j * np.pi * dz_um * kz))
    psf = np.abs(field) ** 2
    psf /= psf.sum()
    return np.fft.rfft2(psf)


class _Imager:
    """Caches OTFs by (defocus, wavelength): a stack needs one per distinct layer-to-plane distance."""

    def __init__(self, shape: tuple[int, int], optics: Optics) -> None:
        self.shape, self.optics, self._cache = shape, optics, {}

    def otf(self, dz: float, wavelength: float) -> np.ndarray:
        key = (round(abs(dz), 6), wavelength)  # the scalar PSF is symmetric in +-z
        if key not in self._cache:
            self._cache[key] = otf(self.shape, abs(dz), wavelength, self.optics)
        return self._cache[key]

    def blur(self, spectrum: np.ndarray, dz: float, wavelength: float) -> np.ndarray:
        return np.fft.irfft2(spectrum * self.otf(dz, wavelength), s=self.shape)


# ------------------------------------------------------------------------------ specimens
def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    from scipy import ndimage as ndi

    x = ndi.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (x - x.mean()) / (x.std() + 1e-12)


def _fluorescent_specimen(rng: np.random.Generator, shape: tuple[int, int], z_layers: np.ndarray) -> np.ndarray:
    """Emitter density per layer (L, H, W): cells (a textured nucleus and a dim cytoplasm) at random
    heights, filaments running through z, beads. Structures are a few pixels thick in z: real cells span
    several layers."""
    h, w = shape
    L = len(z_layers)
    emit = np.zeros((L, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    tex = 0.6 + 0.4 * np.clip(_smooth(rng, shape, 1.2), -2, 2) / 2
    for _ in range(rng.integers(4, 9)):  # cells
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.06, 0.14) * min(h, w)
        ecc = rng.uniform(0.7, 1.0)
        ang = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / r
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) / (r * ecc)
        d2 = u ** 2 + v ** 2
        zc = rng.uniform(0.15, 0.85) * (L - 1)
        bright = rng.uniform(0.4, 1.0)
        thick = rng.uniform(1.0, 2.5)
        for li in range(L):
            wz = np.exp(-0.5 * ((li - zc) / thick) ** 2)
            if wz < 0.02:
                continue
            emit[li] += (bright * wz * tex * (d2 < 0.35) + 0.15 * bright * wz * (d2 < 1.0)).astype(np.float32)
    for _ in range(rng.integers(3, 8)):  # filaments: random walks in (y, x, z)
        p = np.array([rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0, L - 1)])
        d = rng.standard_normal(3)
        d[2] *= 0.05
        d /= np.linalg.norm(d[:2]) + 1e-9
        bright = rng.uniform(0.5, 1.2)
        for _step in range(int(rng.uniform(0.5, 1.5) * max(h, w))):
            d[:2] += 0.15 * rng.standard_normal(2)
            d[:2] /= np.linalg.norm(d[:2]) + 1e-9
            d[2] = np.clip(d[2] + 0.01 * rng.standard_normal(), -0.05, 0.05)
            p = p + d
            iy, ix, iz = int(p[0]) % h, int(p[1]) % w, int(np.clip(round(p[2]), 0, L - 1))
            emit[iz, iy, ix] += bright
    for _ in range(rng.integers(10, 40)):  # beads (sub-resolution points)
        emit[rng.integers(0, L), rng.integers(0, h), rng.integers(0, w)] += rng.uniform(2.0, 6.0)
    return emit


def _brightfield_specimen(rng: np.random.Generator, shape: tuple[int, int],
                          z_layers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optical density per layer (L, H, W) and per-channel absorption weights (L, 3): a textured body
    whose surface height varies smoothly (thicker than the depth of field: its outline is in focus at
    one height, its top at another), dark hairs sticking out of it at their own depths, and debris."""
    h, w = shape
    L = len(z_layers)
    od = np.zeros((L, h, w), np.float32)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.2, 0.35) * h, rng.uniform(0.2, 0.35) * w
    ang = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(ang) + dy * np.sin(ang)) / rx
    v = (-dx * np.sin(ang) + dy * np.cos(ang)) / ry
    r2 = u ** 2 + v ** 2 + 0.15 * _smooth(rng, shape, 8)
    body = r2 < 1.0
    # Height of the visible layer: the rim is at the body's middle plane, the centre nearer (a dome).
    zmid = rng.uniform(0.3, 0.7) * (L - 1)
    dome = zmid + rng.uniform(0.25, 0.45) * (L - 1) * np.sqrt(np.clip(1 - r2, 0, 1)) * rng.choice([-1, 1])
    zlay = np.clip(np.rint(dome), 0, L - 1).astype(int)
    tex = np.clip(1.2 + 0.5 * _smooth(rng, shape, 1.0) + 0.3 * _smooth(rng, shape, 4), 0.3, 2.5)
    for li in range(L):
        od[li][body & (zlay == li)] += tex[body & (zlay == li)]
    for _ in range(rng.integers(15, 40)):  # hairs from the rim outwards, each at its own depth
        t = rng.uniform(0, 2 * np.pi)
        p = np.array([cy + ry * np.sin(t), cx + rx * np.cos(t)])
        d = np.array([np.sin(t), np.cos(t)])
        z = zmid + rng.uniform(-0.3, 0.3) * (L - 1)
        dzs = rng.uniform(-0.02, 0.02) * L
        for _step in range(int(rng.uniform(0.05, 0.15) * max(h, w))):
            p = p + d + 0.1 * rng.standard_normal(2)
            z = float(np.clip(z + dzs, 0, L - 1))
            iy, ix = int(p[0]), int(p[1])
            if 0 <= iy < h and 0 <= ix < w:
                od[int(round(z)), iy, ix] += rng.uniform(1.0, 2.0)
    for _ in range(rng.integers(5, 20)):  # debris on other planes
        iy, ix, r = rng.integers(0, h), rng.integers(0, w), rng.uniform(1, 4)
        m = (yy - iy) ** 2 + (xx - ix) ** 2 <= r * r
        od[rng.integers(0, L)][m] += rng.uniform(0.3, 1.0)
    colour = np.array([0.5, 0.8, 1.1], np.float32) * rng.uniform(0.8, 1.2, 3).astype(np.float32)  # brownish
    return od, colour


# ------------------------------------------------------------------------------ imaging
def _depth_truth(infocus_per_layer: np.ndarray, z_layers: np.ndarray) -> np.ndarray:
    return z_layers[np.argmax(infocus_per_layer, axis=0)].astype(np.float32)


def _focus_index(depth: np.ndarray, focus_um: np.ndarray) -> np.ndarray:
    return np.interp(depth, focus_um, np.arange(len(focus_um))).astype(np.float32)


def render_micro(kind: str = "fluorescence", seed: int = 0, *, size: int = 192, n_slices: int = 12,
                 optics: Optics | None = None, layers: int | None = None, thickness_dof: float | None = None,
                 photons: float = 800.0, read_noise: float = 2.0, chromatic: float = 0.0) -> MicroStack:
    """One deterministic microscope stack (``seed`` in, stack and truth out).

    The specimen spans ``thickness_dof`` depths of field (random 3-8 by default); the focal planes cover
    it evenly; ``layers`` specimen layers (default 2 per focal plane). Fluorescence peaks at ``photons``
    per pixel (Poisson) with ``read_noise`` electrons; brightfield's field gives ``4 * photons``.
    ``chromatic`` (brightfield): axial chromatic aberration, the red channel focused this many depths of field
    beyond green and blue as far before it (an uncorrected objective: the coloured fringes of a defocused edge
    that a cheap microscope shows, e.g. the pseudoscorpion's); the truth stays every layer in focus in every
    channel.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rng = np.random.default_rng(seed)
    optics = optics or Optics(na=float(rng.uniform(0.3, 0.75)), n=1.0, pixel_um=0.0)
    waves = (FLUO_WAVELENGTH,) if kind == "fluorescence" else RGB_WAVELENGTHS
    if optics.pixel_um <= 0:  # sample at ~Nyquist of the shortest wavelength's cut-off (lambda / 4 NA), a bit finer
        optics.pixel_um = min(waves) / (4.4 * optics.na)
    dof = optics.depth_of_field_um(float(np.mean(waves)))
    thick = (thickness_dof or float(rng.uniform(3.0, 8.0))) * dof
    L = layers or 2 * n_slices
    z_layers = np.linspace(0, thick, L)
    focus_um = np.linspace(0, thick, n_slices)
    shape = (size, size)
    im = _Imager(shape, optics)
    if kind == "fluorescence":
        emit = _fluorescent_specimen(rng, shape, z_layers)
        spectra = np.fft.rfft2(emit)
        w = waves[0]
        infocus = np.stack([im.blur(s, 0.0, w) for s in spectra])
        aif = infocus.sum(0)
        scale = photons / max(float(np.percentile(aif, 99.9)), 1e-6)
        bg = 0.02 * photons
        planes = [np.maximum(sum(im.blur(spectra[li], zf - z_layers[li], w) for li in range(L)), 0) for zf in focus_um]
        offset = 100.0
        slices = np.stack([rng.poisson(np.maximum(p * scale + bg, 0)) + rng.normal(offset, read_noise, shape)
                           for p in planes])
        slices = np.clip(np.rint(slices), 0, 65535).astype(np.uint16)
        aif_img = np.clip(np.rint(aif * scale + bg + offset), 0, 65535).astype(np.uint16)
        depth = _depth_truth(infocus, z_layers)
        valid = aif * scale > 0.1 * photons
    else:
        od, colour = _brightfield_specimen(rng, shape, z_layers)
        keep = [li for li in range(L) if od[li].any()]
        top = 4.0 * photons
        chans_s, chans_aif, inf_abs = [], [], np.zeros((L, *shape), np.float32)
        for c, w in enumerate(waves):
            trans = {li: np.fft.rfft2(np.exp(-colour[c] * od[li])) for li in keep}
            lag = (1 - c) * chromatic * dof  # red (c = 0) focuses beyond green, blue before it

            def plane(zf: float) -> np.ndarray:
                img = np.ones(shape)
                for li in keep:
                    img *= np.clip(im.blur(trans[li], zf - z_layers[li] - lag, w), 0, 1)
                return img
            chans_s.append(np.stack([plane(zf) for zf in focus_um]))
            inf = {li: np.clip(im.blur(trans[li], 0.0, w), 0, 1) for li in keep}
            aif_c = np.ones(shape)
            for li in keep:
                aif_c *= inf[li]
                if c == 1:
                    inf_abs[li] = 1 - inf[li]
            chans_aif.append(aif_c)
        clean = np.stack(chans_s, -1)
        vignette = 1 - 0.15 * (np.hypot(*np.mgrid[-1:1:size * 1j, -1:1:size * 1j]) / np.sqrt(2)) ** 2
        lit = clean * top * vignette[None, :, :, None]
        noisy = rng.poisson(lit) + rng.normal(0, read_noise, lit.shape)
        slices = np.clip(np.rint(noisy / top * 235), 0, 255).astype(np.uint8)
        aif_img = np.clip(np.rint(np.stack(chans_aif, -1) * vignette[..., None] * 235), 0, 255).astype(np.uint8)
        depth = _depth_truth(inf_abs, z_layers)
        valid = inf_abs.sum(0) > 0.1
    return MicroStack(slices=slices, aif=aif_img, depth_um=depth, focus_um=focus_um.astype(np.float32),
                      focus_index=_focus_index(depth, focus_um), valid=valid, kind=kind, optics=optics)
