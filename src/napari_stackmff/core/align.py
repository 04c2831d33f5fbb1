"""Slice alignment: drift, shake and focus breathing, estimated between neighbouring slices.

Neighbours differ little in focus, so they are compared directly; every slice is then chained to a
reference slice (the middle one by default). Images are compared after a band-pass (difference of
Gaussians at a few pixels), which keeps the edges both slices share and drops the illumination and
the blur that differ. Estimation runs on a copy downscaled to at most :data:`ESTIMATE_SIDE` px, so
large and lazy stacks stay cheap; transforms are then scaled back to full resolution.

Motion models (scikit-image does the work):
- ``"translation"``: phase correlation with sub-pixel refinement
  (:func:`skimage.registration.phase_cross_correlation`);
- ``"similarity"`` (breathing: scale, rotation, shift) and ``"homography"``: the local shifts of a grid
  of patches (phase correlation each), fitted with RANSAC (:func:`skimage.measure.ransac`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import StackMFFError

MOTIONS = ("translation", "similarity", "homography")
#: Longer side of the copy that transforms are estimated on (px): the median shift error on synthetic
#: stacks is already sub-pixel at this size (tests/test_align.py), and larger costs time for nothing.
ESTIMATE_SIDE = 512
#: Largest mean disagreement (px of the estimation copy) between a two-step chain of neighbour
#: registrations and the direct registration across it before the alignment is distrusted.
CONSISTENCY_PX = 1.0
#: Band-pass of the compared images: DoG sigmas in px of the estimation copy.
BAND = (1.0, 4.0)


@dataclass
class Alignment:
    """Per-slice 3x3 matrices mapping reference coordinates (x, y) to slice coordinates, at full size."""

    motion: str
    reference: int
    matrices: np.ndarray  # (N, 3, 3)
    notes: list[str] = field(default_factory=list)
    distrust: str | None = None  # why the transforms should not be used (see estimate), None when trusted

    def to_json(self) -> dict:
        return {"motion": self.motion, "reference": self.reference,
                "matrices": [m.round(6).tolist() for m in self.matrices], "notes": self.notes,
                "shift_px": [[round(float(m[0, 2]), 3), round(float(m[1, 2]), 3)] for m in self.matrices],
                "scale": [round(float(np.sqrt(abs(np.linalg.det(m[:2, :2])))), 5) for m in self.matrices]}


def _band(img: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    img = img.astype(np.float32)
    return ndi.gaussian_filter(img, BAND[0]) - ndi.gaussian_filter(img, BAND[1])


def _translation(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    """(dy, dx): where content of ``ref`` at p is found in ``mov`` (at p + shift)."""
    from skimage.registration import phase_cross_correlation

    shift, _, _ = phase_cross_correlation(ref, mov, upsample_factor=20, normalization=None)
    return -np.asarray(shift, np.float64)  # phase_cross_correlation gives the shift that registers mov to ref


#: Patches per side whose local shifts a similarity or homography is fitted to (RANSAC), and their size
#: as a share of the shorter side: local phase correlation is as precise as the global one (0.05 px
#: on a shifted test image), where log-polar estimates of scale were off by 1-2 px at the corners.
GRID, PATCH_SHARE = 5, 0.3


def _local_shifts(ref: np.ndarray, mov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres (x, y) in ``ref`` and where they are in ``mov``, for textured patches."""
    h, w = ref.shape
    size = max(32, int(PATCH_SHARE * min(h, w)))
    src, dst = [], []
    energy = float(np.abs(ref).mean())
    for cy in np.linspace(size / 2, h - size / 2, GRID):
        for cx in np.linspace(size / 2, w - size / 2, GRID):
            y0, x0 = int(cy - size / 2), int(cx - size / 2)
            a, b = ref[y0:y0 + size, x0:x0 + size], mov[y0:y0 + size, x0:x0 + size]
            if np.abs(a).mean() < 0.3 * energy:  # flat patch: nothing to lock on to
                continue
            dy, dx = _translation(a, b)
            src.append((cx, cy))
            dst.append((cx + dx, cy + dy))
    return np.asarray(src, float), np.asarray(dst, float)


def _fit(src: np.ndarray, dst: np.ndarray, motion: str) -> np.ndarray | None:
    """A similarity (or homography) mapping ``src`` to ``dst``, robust to a few wrong patches."""
    from skimage.measure import ransac
    from skimage.transform import ProjectiveTransform, SimilarityTransform

    model, least = (SimilarityTransform, 2) if motion == "similarity" else (ProjectiveTransform, 4)
    if len(src) <= least:  # at least one patch beyond the minimum, to have something to check against
        return None
    fit, inliers = ransac((src, dst), model, min_samples=least, residual_threshold=1.0, max_trials=200, rng=0)
    if fit is None or inliers is None or inliers.sum() <= least:
        return None
    return np.asarray(fit.params, float)


def similarity_matrix(scale: float, angle_deg: float, shift: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Reference (x, y) -> slice (x, y): scale and rotate about ``centre`` (x, y), then shift (dy, dx)."""
    a = np.deg2rad(angle_deg)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.asarray(centre)
    m = np.eye(3)
    m[:2, :2] = r
    m[:2, 2] = c - r @ c + np.array([shift[1], shift[0]])
    return m


def _register(a: np.ndarray, b: np.ndarray, motion: str) -> np.ndarray | None:
    """The ``motion`` transform from ``a``'s coordinates to ``b``'s (None: too little texture to fit)."""
    if motion == "translation":
        return _shift_matrix(_translation(a, b))
    return _fit(*_local_shifts(a, b), motion)


def estimate(images: np.ndarray, motion: str = "similarity", reference: int | None = None) -> Alignment:
    """Transforms of each slice of ``images`` (N, H, W) against the reference slice (middle by default)."""
    from skimage.transform import rescale

    if motion not in MOTIONS:
        raise StackMFFError(f"align must be one of {', '.join(MOTIONS)} (or True for similarity), got {motion!r}.")
    n, h, w = images.shape
    ref = n // 2 if reference is None else int(reference)
    f = min(1.0, ESTIMATE_SIDE / max(h, w))
    small = np.stack([_band(rescale(im.astype(np.float32), f, anti_aliasing=True) if f < 1 else im)
                      for im in images])
    sh, sw = small.shape[1:]
    pair = [np.eye(3)]  # pair[i]: slice i-1 coordinates -> slice i coordinates (small scale)
    notes: list[str] = []
    for i in range(1, n):
        m = _register(small[i - 1], small[i], motion)
        if m is None:  # too little texture for a local fit: fall back to the global shift
            notes.append(f"slices {i - 1}-{i}: too little texture for a {motion} fit; translation only")
            m = _register(small[i - 1], small[i], "translation")
        pair.append(m)
    # Chain to the reference: ref -> i.
    chain = [np.eye(3) for _ in range(n)]
    for i in range(ref + 1, n):
        chain[i] = pair[i] @ chain[i - 1]
    for i in range(ref - 1, -1, -1):
        chain[i] = np.linalg.inv(pair[i + 1]) @ chain[i + 1]
    # Check: every two-step chain (i-2 -> i-1 -> i) against a direct registration of i-2 to i. Periodic
    # textures (bricks, gratings) let phase correlation lock one period off; the two routes then
    # disagree, and the stack is better fused unaligned than wrongly aligned. Slices two apart still
    # share most of their focus, so real sweeps with strong blur changes pass (direct registration to
    # a far reference slice did not: 6 of 9 real stacks were distrusted).
    yy, xx = np.mgrid[sh * 0.2:sh * 0.8:5j, sw * 0.2:sw * 0.8:5j]
    grid = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    worst = 0.0
    for i in range(2, n):
        direct = _register(small[i - 2], small[i], motion)
        if direct is None:
            continue
        a, b = (pair[i] @ pair[i - 1]) @ grid, direct @ grid
        worst = max(worst, float(np.linalg.norm(a[:2] / a[2] - b[:2] / b[2], axis=0).mean()))
    distrust = (f"chained and direct registrations disagree by {worst / f:.1f} px (repetitive texture?)"
                if worst > CONSISTENCY_PX else None)
    up = np.diag([1 / f, 1 / f, 1.0])
    down = np.diag([f, f, 1.0])
    full = np.stack([up @ m @ down for m in chain])
    return Alignment(motion, ref, full, notes, distrust)


def _shift_matrix(shift: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[0, 2], m[1, 2] = shift[1], shift[0]
    return m


def warp_slice(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Slice ``img`` (H, W[, C]) resampled onto the reference grid (edges repeated), in its own dtype."""
    from skimage.transform import warp

    if np.allclose(matrix, np.eye(3)):
        return img
    out = warp(img.astype(np.float32), matrix, order=3, mode="edge", preserve_range=True)
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(img.dtype)


#: Alignments that move a slice this far are not believed (too little texture, or a different scene):
#: the stack is fused unaligned, with a warning. Real sweeps breathe 2.5-8.5% (../shared/data README).
MAX_SHIFT_SHARE, SCALE_RANGE = 0.25, (0.8, 1.25)
#: Refuse an alignment after which less than this share of the image is covered by every slice.
MIN_VALID_SHARE = 0.5


def resolve_motion(align: bool | str | None) -> str | None:
    """``align=`` -> a motion model or None: True means similarity."""
    if align is None or align is False:
        return None
    if align is True:
        return "similarity"
    if isinstance(align, str) and align.lower() in MOTIONS:
        return align.lower()
    raise StackMFFError(f"align must be one of {', '.join(MOTIONS)}, True or None, got {align!r}.")


def valid_share(matrices: np.ndarray, shape: tuple[int, int]) -> float:
    """Share of the reference grid that every slice covers after warping."""
    h, w = shape
    step = max(1, min(h, w) // 64)
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    ok = np.ones(xx.size, bool)
    for m in matrices:
        q = m @ pts
        x, y = q[0] / q[2], q[1] / q[2]
        ok &= (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)
    return float(ok.mean())


def _believable(al: Alignment, shape: tuple[int, int]) -> str | None:
    h, w = shape
    for i, m in enumerate(al.matrices):
        scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        centre = m @ np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
        move = np.hypot(centre[0] / centre[2] - (w - 1) / 2, centre[1] / centre[2] - (h - 1) / 2)
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or move > MAX_SHIFT_SHARE * min(h, w):
            return f"slice {i} would move {move:.0f} px and scale {scale:.3f}"
    return None


def align_stack(stack, align: bool | str | None, source: str = "the stack"):
    """(stack with every slice on the reference slice's grid, alignments per time point as JSON).

    The stack must be in memory (lazy stacks: load them, or align beforehand with the same call).
    A stack that cannot be registered is returned as it was, with a warning, never silently wrong.
    """
    import dataclasses
    import warnings

    motion = resolve_motion(align)
    if motion is None:
        return stack, None
    if not isinstance(stack.data, np.ndarray):
        raise StackMFFError(f"{source}: align needs the stack in memory; load it with lazy=False (--lazy off).")
    h, w = stack.yx_shape
    data = stack.data if stack.has_time else stack.data[None]
    out = np.empty_like(data)
    records = []
    for t in range(stack.n_times):
        gray = np.stack([stack.focus_image(z, t) for z in range(stack.n_slices)])
        al = estimate(gray, motion)
        why = al.distrust or _believable(al, (h, w))
        share = valid_share(al.matrices, (h, w)) if why is None else 0.0
        if why is None and share < MIN_VALID_SHARE:
            raise StackMFFError(f"{source}: after {motion} alignment only {share:.0%} of the image is covered by "
                                f"every slice (at least {MIN_VALID_SHARE:.0%} needed); the slices hardly overlap.")
        if why is not None:
            warnings.warn(f"{source}: could not register the slices ({why}); fused unaligned.", stacklevel=2)
            out[t] = data[t]
            records.append({"motion": motion, "aligned": False, "why": why})
            continue
        for z in range(stack.n_slices):
            out[t, z] = warp_slice(data[t, z], al.matrices[z])  # channels are warped alike
        records.append({**al.to_json(), "aligned": True, "valid_share": round(share, 4)})
    return dataclasses.replace(stack, data=out if stack.has_time else out[0]), records
