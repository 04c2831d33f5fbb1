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
from typing import Any, Iterable, Sequence

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


#: Passes of re-measuring the patches' shifts after warping by the estimate so far: within a patch,
#: scale and rotation smear the correlation peak; once warped, the residual is a near-pure shift. One pass
#: cut the pair error on the synthetic stacks of bench_align.py from 0.10-0.45 px to 0.01-0.26 px.
REFINE_PASSES = 1


def _register(a: np.ndarray, b: np.ndarray, motion: str) -> np.ndarray | None:
    """The ``motion`` transform from ``a``'s coordinates to ``b``'s (None: too little texture to fit)."""
    from skimage.transform import warp

    if motion == "translation":
        return _shift_matrix(_translation(a, b))
    m = _fit(*_local_shifts(a, b), motion)
    for _ in range(REFINE_PASSES if m is not None else 0):
        on_a = warp(b, m, order=3, mode="edge", preserve_range=True).astype(np.float32)  # b on a's grid
        residual = _fit(*_local_shifts(a, on_a), motion)
        if residual is None:
            break
        m = m @ residual
    return m


def estimate(images: Sequence[np.ndarray] | Iterable[np.ndarray], motion: str = "similarity",
             reference: int | None = None) -> Alignment:
    """Transforms of each slice of ``images`` ((N, H, W), or any iterable of (H, W) slices, e.g. read one
    at a time from disk) against the reference slice (middle by default). Each slice is downscaled as
    soon as it is read, so memory is one full slice plus the small copies."""
    from skimage.transform import rescale

    if motion not in MOTIONS:
        raise StackMFFError(f"align must be one of {', '.join(MOTIONS)} (or True for similarity), got {motion!r}.")
    small_list, f = [], 1.0
    for im in images:
        h, w = im.shape
        f = min(1.0, ESTIMATE_SIDE / max(h, w))
        small_list.append(_band(rescale(im.astype(np.float32), f, anti_aliasing=True) if f < 1 else im))
    small = np.stack(small_list)
    n = len(small)
    ref = n // 2 if reference is None else int(reference)
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
    # disagree, and unless the chain matches the images better, the stack is better fused unaligned
    # than wrongly aligned. Slices two apart still share most of their focus, so real sweeps with strong
    # blur changes pass (direct registration to a far reference slice did not: 6 of 9 real stacks were
    # distrusted).
    yy, xx = np.mgrid[sh * 0.2:sh * 0.8:5j, sw * 0.2:sw * 0.8:5j]
    grid = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    worst = 0.0
    measured = [(i - 1, i, pair[i]) for i in range(1, n)]
    for i in range(2, n):
        direct = _register_direct(small[i - 2], small[i], motion, pair[i] @ pair[i - 1])
        if direct is None:
            continue
        two_step = pair[i] @ pair[i - 1]
        a, b = two_step @ grid, direct @ grid
        gap = float(np.linalg.norm(a[:2] / a[2] - b[:2] / b[2], axis=0).mean())
        if gap > CONSISTENCY_PX and _match(small[i - 2], small[i], two_step) > _match(small[i - 2], small[i], direct):
            # The images side with the chain: slices two apart near the ends of a deep sweep can be too
            # differently blurred for a direct fit (pcb_depthmap: 1.8 px off, and a worse match).
            continue
        measured.append((i - 2, i, direct))
        worst = max(worst, gap)
    distrust = (f"chained and direct registrations disagree by {worst / f:.1f} px (repetitive texture?)"
                if worst > CONSISTENCY_PX else None)
    if motion != "homography" and distrust is None:
        # Every slice from all measured pairs at once, not from one chain: chained errors add up along the
        # chain (0.4 px at the ends of 8-slice stacks), the least-squares solution averages them.
        chain = _solve_similarities(measured, n, ref)
    up = np.diag([1 / f, 1 / f, 1.0])
    down = np.diag([f, f, 1.0])
    full = np.stack([up @ m @ down for m in chain])
    return Alignment(motion, ref, full, notes, distrust)


def _match(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    """Normalised correlation of band-passed ``a`` with ``b`` brought onto ``a``'s grid by ``m`` (inner 80%)."""
    from skimage.transform import warp

    on_a = warp(b, m, order=1, mode="edge", preserve_range=True)
    h, w = a.shape
    inner = (slice(h // 10, h - h // 10), slice(w // 10, w - w // 10))
    x, y = a[inner] - a[inner].mean(), on_a[inner] - on_a[inner].mean()
    return float((x * y).sum() / max(np.sqrt((x * x).sum() * (y * y).sum()), 1e-12))


def _register_direct(a: np.ndarray, b: np.ndarray, motion: str, chained: np.ndarray) -> np.ndarray | None:
    """``a`` -> ``b`` registered independently of the chain's shift, for checking it.

    Slices two apart can differ by 3-4% in scale (pcb_depthmap breathes 14% over 10 slices), which
    smears each patch's correlation peak until the fit fails. So ``b`` is first brought to ``a``'s
    scale and rotation with the chain's linear part, about the image centre and with no shift: a
    chain locked one period off a repetitive texture (a wrong shift) is still measured afresh.
    """
    from skimage.transform import warp

    if motion == "translation":
        return _register(a, b, motion)
    h, w = a.shape
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    lin = np.eye(3)
    lin[:2, :2] = chained[:2, :2]
    lin[:2, 2] = c - chained[:2, :2] @ c
    on_a = warp(b, lin, order=3, mode="edge", preserve_range=True).astype(np.float32)
    rest = _register(a, on_a, motion)
    return None if rest is None else lin @ rest


def _solve_similarities(measured: list[tuple[int, int, np.ndarray]], n: int, ref: int) -> list[np.ndarray]:
    """Per-slice similarities (reference -> slice) that best agree with the measured pair transforms.

    A similarity is z -> a z + b on complex coordinates (a: scale and rotation, b: shift), so a pair
    measurement T_j = T_ij o T_i reads a_j = a_ij a_i and b_j = a_ij b_i + b_ij: linear in the unknowns
    (a_k, b_k), solved by least squares with the reference fixed at a = 1, b = 0.
    """
    unknown = [k for k in range(n) if k != ref]
    col = {k: c for c, k in enumerate(unknown)}
    rows_a, rhs_a, rows_b, rhs_b = [], [], [], []
    for i, j, m in measured:
        a_ij, b_ij = complex(m[0, 0], m[1, 0]), complex(m[0, 2], m[1, 2])
        ra, rb = np.zeros(len(unknown), complex), np.zeros(len(unknown), complex)
        ya, yb = 0j, b_ij
        if j == ref:
            ya -= 1.0
        else:
            ra[col[j]] += 1.0
            rb[col[j]] += 1.0
        if i == ref:
            ya += a_ij
        else:
            ra[col[i]] -= a_ij
            rb[col[i]] -= a_ij
        rows_a.append(ra)
        rhs_a.append(ya)
        rows_b.append(rb)
        rhs_b.append(yb)
    a = np.linalg.lstsq(np.array(rows_a), np.array(rhs_a), rcond=None)[0]
    b = np.linalg.lstsq(np.array(rows_b), np.array(rhs_b), rcond=None)[0]
    out = []
    for k in range(n):
        ak, bk = (1.0 + 0j, 0j) if k == ref else (a[col[k]], b[col[k]])
        out.append(np.array([[ak.real, -ak.imag, bk.real], [ak.imag, ak.real, bk.imag], [0.0, 0.0, 1.0]]))
    return out


def _shift_matrix(shift: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[0, 2], m[1, 2] = shift[1], shift[0]
    return m


#: Margin (px) read around a window's source region before resampling: covers the cubic spline's
#: support and lets its prefilter (an IIR filter, pole 0.27) decay to < 1e-4 before the window.
WARP_MARGIN = 8


def warp_window(read: Any, matrix: np.ndarray, shape: tuple[int, int], ys: slice, xs: slice,
                offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Pixels of one slice resampled onto the reference grid, for the output window (ys, xs) only.

    ``read(y_slice, x_slice)`` returns the slice's original pixels (H, W[, C]) in a window, so a lazy
    slice is read only around the source of this window. Cubic spline, edges repeated beyond the
    slice; ``offset`` (y, x) is where output (0, 0) lies on the reference grid (the crop's corner).
    """
    from scipy.ndimage import map_coordinates

    h, w = shape
    oy = np.arange(*ys.indices(10**9)[:2], ys.step or 1, dtype=np.float64) + offset[0]
    ox = np.arange(*xs.indices(10**9)[:2], xs.step or 1, dtype=np.float64) + offset[1]
    if np.allclose(matrix, np.eye(3)):
        return np.asarray(read(slice(int(oy[0]), int(oy[-1]) + 1, ys.step), slice(int(ox[0]), int(ox[-1]) + 1, xs.step)))
    gx, gy = np.meshgrid(ox, oy)
    q = matrix @ np.stack([gx.ravel(), gy.ravel(), np.ones(gx.size)])
    sx, sy = (q[0] / q[2]).reshape(gx.shape), (q[1] / q[2]).reshape(gx.shape)
    y0 = int(np.clip(np.floor(sy.min()) - WARP_MARGIN, 0, h - 1))
    y1 = int(np.clip(np.ceil(sy.max()) + WARP_MARGIN + 1, y0 + 1, h))
    x0 = int(np.clip(np.floor(sx.min()) - WARP_MARGIN, 0, w - 1))
    x1 = int(np.clip(np.ceil(sx.max()) + WARP_MARGIN + 1, x0 + 1, w))
    src = np.asarray(read(slice(y0, y1), slice(x0, x1)))
    coords = np.stack([sy - y0, sx - x0])
    chans = [src] if src.ndim == 2 else [src[..., c] for c in range(src.shape[-1])]
    out = [map_coordinates(c.astype(np.float32), coords, order=3, mode="nearest") for c in chans]
    res = out[0] if src.ndim == 2 else np.stack(out, -1)
    if src.dtype.kind in "ui":
        info = np.iinfo(src.dtype)
        res = np.clip(np.rint(res), info.min, info.max)
    return res.astype(src.dtype)


def warp_slice(img: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Slice ``img`` (H, W[, C]) resampled onto the reference grid (edges repeated), in its own dtype."""
    h, w = img.shape[:2]
    return warp_window(lambda ys, xs: img[ys, xs], matrix, (h, w), slice(0, h), slice(0, w))


class AlignedArray:
    """A lazy stack (T?, Z, Y, X, C?) seen through per-slice transforms and a crop box.

    Indexing warps only the window asked for, reading only the source region around it from the
    underlying (memory-mapped, zarr, dask) data: tiled fusion of an aligned lazy stack stays bounded
    in memory. ``matrices[t]`` is (Z, 3, 3) or None for a time point fused unaligned.
    """

    def __init__(self, data: Any, has_time: bool, matrices: list[np.ndarray | None], box: tuple[int, int, int, int],
                 yx_axis: int) -> None:
        self.data, self.has_time, self.matrices, self.box, self.yx_axis = data, has_time, matrices, box, yx_axis
        y0, y1, x0, x1 = box
        shape = list(data.shape)
        shape[yx_axis:yx_axis + 2] = [y1 - y0, x1 - x0]
        self.shape = tuple(shape)
        self.dtype = np.dtype(data.dtype)
        self.ndim = len(shape)
        self._src_yx = tuple(data.shape[yx_axis:yx_axis + 2])

    def _plane(self, t: int, z: int, ys: slice, xs: slice, rest: tuple) -> np.ndarray:
        lead = (t, z) if self.has_time else (z,)
        m = self.matrices[t]
        read = lambda a, b: self.data[(*lead, a, b, *rest)]  # noqa: E731
        return warp_window(read, np.eye(3) if m is None else m[z], self._src_yx, ys, xs, (self.box[0], self.box[2]))

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        n_lead = self.yx_axis
        if len(key) < n_lead and all(isinstance(k, (int, np.integer)) for k in key):
            return _Fixed(self, tuple(int(k) for k in key))  # data[t] / data[z]: stay lazy
        key = key + (slice(None),) * (self.ndim - len(key))
        lead, (ys, xs), rest = key[:n_lead], key[n_lead:n_lead + 2], key[n_lead + 2:]
        h, w = self.shape[n_lead:n_lead + 2]
        ys = slice(*ys.indices(h)) if isinstance(ys, slice) else slice(int(ys), int(ys) + 1)
        xs = slice(*xs.indices(w)) if isinstance(xs, slice) else slice(int(xs), int(xs) + 1)
        ranges = [range(*k.indices(self.shape[i])) if isinstance(k, slice) else [int(k)] for i, k in enumerate(lead)]
        ts = ranges[0] if self.has_time else [0]
        zs = ranges[-1]
        planes = np.stack([np.stack([self._plane(t, z, ys, xs, rest) for z in zs]) for t in ts])
        if not self.has_time:
            planes = planes[0]
        drop = tuple(i for i, k in enumerate(lead) if not isinstance(k, slice))
        yx_ints = tuple(n_lead + j for j, k in enumerate(key[n_lead:n_lead + 2]) if not isinstance(k, slice))
        return planes.squeeze(axis=drop + yx_ints) if drop or yx_ints else planes

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[(slice(None),) * self.ndim]
        return a if dtype is None else a.astype(dtype)


class _Fixed:
    """``AlignedArray[t]`` (or ``[z]``): the leading indices fixed, still lazy."""

    def __init__(self, parent: AlignedArray, lead: tuple[int, ...]) -> None:
        self.parent, self.lead = parent, lead
        self.shape = parent.shape[len(lead):]
        self.dtype, self.ndim = parent.dtype, len(self.shape)

    def __getitem__(self, key: Any) -> Any:
        key = key if isinstance(key, tuple) else (key,)
        return self.parent[self.lead + key]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[(slice(None),) * self.ndim]
        return a if dtype is None else a.astype(dtype)


#: Alignments that move a slice this far are not believed (too little texture, or a different scene):
#: the stack is fused unaligned, with a warning. Real sweeps breathe 2.5-8.5% (../shared/data README).
MAX_SHIFT_SHARE, SCALE_RANGE = 0.25, (0.8, 1.25)
#: Refuse an alignment whose crop (the rectangle every slice covers) keeps less than this share of the image.
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


def _covered(matrices: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """(rows, cols) mask of reference-grid points (every ``step`` px) that every slice covers."""
    h, w = shape
    yy, xx = np.mgrid[0:h:step, 0:w:step]
    pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    ok = np.ones(xx.size, bool)
    for m in matrices:
        q = m @ pts
        x, y = q[0] / q[2], q[1] / q[2]
        ok &= (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    return ok.reshape(xx.shape)


def valid_share(matrices: np.ndarray, shape: tuple[int, int]) -> float:
    """Share of the reference grid that every slice covers after warping."""
    return float(_covered(matrices, shape, max(1, min(shape) // 64)).mean())


def crop_box(all_matrices: list[np.ndarray], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): an axis-aligned rectangle that every slice of every time point covers.

    Peels the border row or column with the largest uncovered share until none is left: for the
    near-rectangular regions that shifts, small rotations and breathing leave, this finds the
    largest such rectangle to within the sampling step (1/256 of the shorter side).
    """
    h, w = shape
    step = max(1, min(h, w) // 256)
    ok = np.ones((len(range(0, h, step)), len(range(0, w, step))), bool)
    for m in all_matrices:
        ok &= _covered(m, shape, step)
    r0, r1, c0, c1 = 0, ok.shape[0], 0, ok.shape[1]
    while r1 > r0 and c1 > c0:
        sub = ok[r0:r1, c0:c1]
        if sub.all():
            break
        bad = [(~sub[0]).mean(), (~sub[-1]).mean(), (~sub[:, 0]).mean(), (~sub[:, -1]).mean()]
        side = int(np.argmax(bad))
        r0, r1, c0, c1 = (r0 + (side == 0), r1 - (side == 1), c0 + (side == 2), c1 - (side == 3))
    if r1 <= r0 or c1 <= c0:
        return 0, 0, 0, 0
    # Grid rows r0..r1-1 are covered: pixels from row r0*step to (r1-1)*step inclusive (inner bound).
    y0, x0 = r0 * step, c0 * step
    y1 = min(h, (r1 - 1) * step + 1) if r1 < ok.shape[0] else h
    x1 = min(w, (c1 - 1) * step + 1) if c1 < ok.shape[1] else w
    return y0, y1, x0, x1


def _believable(al: Alignment, shape: tuple[int, int]) -> str | None:
    h, w = shape
    for i, m in enumerate(al.matrices):
        scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2]))))
        centre = m @ np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
        move = np.hypot(centre[0] / centre[2] - (w - 1) / 2, centre[1] / centre[2] - (h - 1) / 2)
        if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or move > MAX_SHIFT_SHARE * min(h, w):
            return f"slice {i} would move {move:.0f} px and scale {scale:.3f}"
    return None


def _in_memory(data: Any) -> bool:
    return isinstance(data, np.ndarray) and not isinstance(data, np.memmap)


def align_stack(stack, align: bool | str | None, source: str = "the stack"):
    """(stack with every slice on the reference slice's grid, cropped to what every slice covers;
    alignment records per time point as JSON), or (stack, None) when ``align`` is off.

    In-memory stacks are warped once; lazy ones (memory-mapped, zarr, dask) become an
    :class:`AlignedArray` that warps each window when fusion reads it, so memory stays one tile's
    worth. Transforms are estimated on downscaled copies read one slice at a time. A time point that
    cannot be registered is fused unaligned, with a warning, never silently wrong; an alignment
    whose crop would keep less than :data:`MIN_VALID_SHARE` of the image is refused.
    """
    import dataclasses
    import warnings

    motion = resolve_motion(align)
    if motion is None:
        return stack, None
    h, w = stack.yx_shape
    matrices: list[np.ndarray | None] = []
    records: list[dict] = []
    for t in range(stack.n_times):
        al = estimate((stack.focus_image(z, t) for z in range(stack.n_slices)), motion)
        why = al.distrust or _believable(al, (h, w))
        if why is not None:
            warnings.warn(f"{source}: could not register the slices ({why}); fused unaligned.", stacklevel=2)
            matrices.append(None)
            records.append({"motion": motion, "aligned": False, "why": why})
            continue
        matrices.append(al.matrices)
        records.append({**al.to_json(), "aligned": True})
    used = [m for m in matrices if m is not None]
    if not used:
        return stack, records
    box = crop_box(used, (h, w))
    share = (box[1] - box[0]) * (box[3] - box[2]) / float(h * w)
    if share < MIN_VALID_SHARE:
        raise StackMFFError(f"{source}: after {motion} alignment the slices share only {share:.0%} of the image "
                            f"(at least {MIN_VALID_SHARE:.0%} needed): they move too far, or are not of one scene.")
    for r in records:
        r["crop"] = {"y": [box[0], box[1]], "x": [box[2], box[3]], "share": round(share, 4)}
    yx_axis = stack.axes.index("Y")
    view = AlignedArray(stack.data, stack.has_time, matrices, box, yx_axis)
    data = view if not _in_memory(stack.data) else np.asarray(view)
    events = None
    if stack.events is not None:  # event frames follow their slices
        ev = AlignedArray(stack.events, stack.has_time, matrices, box, yx_axis)
        events = ev if not _in_memory(stack.events) else np.asarray(ev).astype(np.asarray(stack.events[:1]).dtype)
    return dataclasses.replace(stack, data=data, events=events), records


def summary(records: list[dict] | None) -> str:
    """One line per time point saying what alignment did (for the CLI and the widget)."""
    lines = []
    for t, rec in enumerate(records or []):
        when = f"t={t}: " if len(records or []) > 1 else ""
        if not rec["aligned"]:
            lines.append(f"{when}not registered ({rec['why']}); fused unaligned")
            continue
        scale, crop = rec["scale"], rec["crop"]
        shift = max(float(np.hypot(*xy)) for xy in rec["shift_px"])
        lines.append(f"{when}{rec['motion']} onto slice {rec['reference']}: scale {min(scale):.4f}-{max(scale):.4f}, "
                     f"largest shift {shift:.1f} px, kept {crop['share']:.0%} of the image "
                     f"(y {crop['y'][0]}:{crop['y'][1]}, x {crop['x'][0]}:{crop['x'][1]})")
    return "\n".join(lines)


def crop_offset(records: list[dict] | None) -> tuple[int, int]:
    """(y, x) pixel where a result cropped by alignment starts on the input's grid ((0, 0): not cropped)."""
    for rec in records or []:
        if "crop" in rec:
            return int(rec["crop"]["y"][0]), int(rec["crop"]["x"][0])
    return 0, 0
