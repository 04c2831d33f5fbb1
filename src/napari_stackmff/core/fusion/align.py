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

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import StackMFFError
from ..io.stack import cast_to
from ..tiles.classical import band_pool

MOTIONS = ("translation", "similarity", "homography")
#: Longer side of the copy that transforms are estimated on (px): the median shift error on synthetic
#: stacks is already sub-pixel at this size (tests/test_align.py), and larger costs time for nothing.
#: 384 (512 before): on four 768-px synthetic stacks (bench_align.py's camera model) the registration
#: error went from 0.039 to 0.049 px (0.031 with the code before issue 24), fused PSNR unchanged (25.67 ->
#: 25.66 dB, benchmarks/bench_align_auto.py), and the beetle's estimation (28 slices of 750x500) took 30%
#: less time.
ESTIMATE_SIDE = 384
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
    left_out: dict[int, str] = field(default_factory=dict)  # slices that do not register with the rest, and why

    def to_json(self) -> dict:
        # Matrices at full precision: a retouch (core.retouch) re-warps slices with the recorded ones and must
        # land on the fused pixels exactly (6 decimals moved a rare pixel by one grey level on 192 px).
        return {"motion": self.motion, "reference": self.reference,
                "matrices": [m.tolist() for m in self.matrices], "notes": self.notes,
                "left_out": {str(z): why for z, why in self.left_out.items()},
                "shift_px": [[round(float(m[0, 2]), 3), round(float(m[1, 2]), 3)] for m in self.matrices],
                "scale": [round(float(np.sqrt(abs(np.linalg.det(m[:2, :2])))), 5) for m in self.matrices]}


def _band(img: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    img = img.astype(np.float32)
    return ndi.gaussian_filter(img, BAND[0]) - ndi.gaussian_filter(img, BAND[1])


#: Sub-pixel precision of phase correlation: the correlation peak is refined on a 1/20 px grid.
UPSAMPLE = 20
#: The refinement in two steps: a 1/4 px grid over +-0.75 px around the integer peak, then the 1/20 px
#: grid over +-0.25 px around the best of those (one 30 x 30 grid over +-0.75 px before: 1.7x the work).
COARSE_UPSAMPLE, COARSE_REGION, FINE_REGION = 4, 7, 11


def _upsampled_peak(half: Any, shift: np.ndarray, up: int, region: int, w: int) -> np.ndarray:
    """Refined shifts: the cross-correlation whose half spectrum (rfft layout) is ``half`` ((B, h, w // 2 + 1),
    torch complex) evaluated by matrix DFTs on a ``region`` x ``region`` grid of step 1/``up`` centred on
    ``shift`` (B, 2), and its peak taken (the upsampled DFT of
    :func:`skimage.registration.phase_cross_correlation`).

    The correlation of real images is real: the columns of the half spectrum stand for their mirror images
    too (weight 2, the zero and Nyquist columns 1), so the DFT runs over half the columns and keeps the real
    part. Half the work of the full-spectrum DFT, and no mirrored copy of the spectrum; the peaks are
    scikit-image's (tests/test_align.py)."""
    import torch
    from scipy import fft

    b, h, wh = half.shape
    shift = np.round(shift * up) / up
    centre = np.trunc(region / 2.0)
    offset = centre - shift * up  # (B, 2): where the region starts, in steps of 1/up
    k = np.arange(region, dtype=np.float64)

    def turns(t: np.ndarray, weight: np.ndarray) -> Any:  # weight * exp(2 pi i t), t reduced in float64
        t = np.mod(t, 1.0)
        return torch.polar(torch.from_numpy(np.broadcast_to(weight, t.shape).astype(np.float32)),
                           torch.from_numpy((2 * np.pi * t).astype(np.float32)))

    def kernel(f: np.ndarray, off: np.ndarray, weight: np.ndarray | float = 1.0) -> Any:
        # (B, region, len(f)): exp(-2 pi i (k - off) f) = exp(-2 pi i k f) exp(2 pi i off f), the first
        # shared by the batch: B x len(f) exponentials, not B x region x len(f)
        return turns(-k[:, None] * f[None, :], weight)[None] * turns(off[:, None] * f[None, :], 1.0)[:, None, :]

    weight = np.full(wh, 2.0)
    weight[0] = 1.0
    if w % 2 == 0:
        weight[-1] = 1.0
    cc = (kernel(fft.fftfreq(h, up), offset[:, 0]) @ half
          @ kernel(fft.rfftfreq(w, up), offset[:, 1], weight).transpose(1, 2)).real.numpy()
    peak = np.abs(cc).reshape(b, -1).argmax(1)
    return shift + (np.stack([peak // region, peak % region], 1) - centre) / up


def _shifts(refs: np.ndarray, movs: np.ndarray) -> np.ndarray:
    """(B, 2) shifts (dy, dx): where content of ``refs[b]`` at p is found in ``movs[b]`` (at p + shift).

    Phase correlation (``normalization=None``) refined to 1/:data:`UPSAMPLE` px by upsampled matrix DFTs
    around the peak, as :func:`skimage.registration.phase_cross_correlation` (Guizar-Sicairos et al. 2008)
    does, on a batch of (B, h, w) pairs at once (all the patches of all the pairs of a stack) and with
    the refinement in two steps; it agreed with skimage's ``upsample_factor=20`` to within one 1/20 px
    step. The small complex matrix products run in torch: NumPy's multi-threaded BLAS took 40x longer
    on them on a loaded 2-core machine (200 against 5 ms of CPU per pair).
    """
    import torch
    from scipy import fft

    b, h, w = refs.shape
    threads = torch.get_num_threads()  # 1 in Dask workers (core/distributed.py)
    # Real images: half spectra (rfft). The inverse transform of mov x conj(ref) peaks at our shift; the
    # upsampled DFT below evaluates the same spectrum with the opposite sign (phase_cross_correlation's
    # convention), so it is centred on -shift and its result negated back.
    prod = fft.rfft2(np.asarray(movs, np.float32), workers=threads)
    prod *= fft.rfft2(np.asarray(refs, np.float32), workers=threads).conj()
    peak = np.abs(fft.irfft2(prod, s=(h, w), workers=threads)).reshape(b, -1).argmax(1)
    shift = np.stack([peak // w, peak % w], 1).astype(np.float64)
    size = np.array([h, w], np.float64)
    shift = np.where(shift > np.trunc(size / 2), shift - size, shift)
    data = torch.from_numpy(prod.astype(np.complex64, copy=False))
    shift = _upsampled_peak(data, -shift, COARSE_UPSAMPLE, COARSE_REGION, w)
    shift = _upsampled_peak(data, shift, UPSAMPLE, FINE_REGION, w)
    return -shift


def _translation(ref: np.ndarray, mov: np.ndarray) -> np.ndarray:
    """(dy, dx): where content of ``ref`` at p is found in ``mov`` (at p + shift)."""
    return _shifts(ref[None], mov[None])[0]


#: Patches per side whose local shifts a similarity or homography is fitted to (RANSAC), and their size
#: as a share of the shorter side: local phase correlation is as precise as the global one (0.05 px
#: on a shifted test image), where log-polar estimates of scale were off by 1-2 px at the corners.
GRID, PATCH_SHARE = 5, 0.3


#: Patches phase-correlated per call: all the pairs of a stack share calls (each call runs its FFTs and
#: matrix products on torch's threads), in batches that bound the memory to some 30 MB.
PATCH_BATCH = 256


def _smooth_size(n: int) -> int:
    """The largest m <= n whose prime factors are 2, 3 and 5: patch FFTs of such sides are the fast ones
    (the 77-px patches of 256-px slices, 7 x 11, took 1.5x the time of 75-px ones)."""
    for m in range(int(n), 0, -1):
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
    return 1


def _patch_side(h: int, w: int) -> int:
    """Side of the patches whose local shifts are measured on an (h, w) image."""
    return _smooth_size(max(32, int(PATCH_SHARE * min(h, w))))


def _local_shifts_many(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each (ref, mov) pair: patch centres (x, y) in ``ref`` and where they are in ``mov``, for
    textured patches (a grid of :data:`GRID` x :data:`GRID`)."""
    centres, pa, pb, counts = [], [], [], []
    for ref, mov in pairs:
        h, w = ref.shape
        size = _patch_side(h, w)
        energy = float(np.abs(ref).mean())
        count = 0
        for cy in np.linspace(size / 2, h - size / 2, GRID):
            for cx in np.linspace(size / 2, w - size / 2, GRID):
                y0, x0 = int(cy - size / 2), int(cx - size / 2)
                a = ref[y0:y0 + size, x0:x0 + size]
                if np.abs(a).mean() < 0.3 * energy:  # flat patch: nothing to lock on to
                    continue
                centres.append((cx, cy))
                pa.append(a)
                pb.append(mov[y0:y0 + size, x0:x0 + size])
                count += 1
        counts.append(count)
    out, start = [], 0
    shifts = np.zeros((0, 2))
    if pa:
        # Patches of one size batch together (every pair of a stack has the same shape).
        shifts = np.concatenate([_shifts_same_size(pa[k:k + PATCH_BATCH], pb[k:k + PATCH_BATCH])
                                 for k in range(0, len(pa), PATCH_BATCH)])
    src_all = np.asarray(centres, float).reshape(-1, 2)
    for c in counts:
        src = src_all[start:start + c]
        out.append((src, src + shifts[start:start + c, ::-1]))  # (dy, dx) -> (x, y)
        start += c
    return out


def _shifts_same_size(pa: list[np.ndarray], pb: list[np.ndarray]) -> np.ndarray:
    """:func:`_shifts` of patch lists, grouped by patch shape."""
    shapes = [a.shape for a in pa]
    out = np.zeros((len(pa), 2))
    for shape in dict.fromkeys(shapes):
        idx = [k for k, s in enumerate(shapes) if s == shape]
        out[idx] = _shifts(np.stack([pa[k] for k in idx]), np.stack([pb[k] for k in idx]))
    return out


def _local_shifts(ref: np.ndarray, mov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patch centres (x, y) in ``ref`` and where they are in ``mov``, for textured patches."""
    return _local_shifts_many([(ref, mov)])[0]


def _complex_similarity(a: complex, b: complex) -> np.ndarray:
    """The 3x3 matrix of z -> a z + b on complex coordinates z = x + i y."""
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag], [0.0, 0.0, 1.0]])


#: Inlier distance of the robust fits (px of the estimation copy).
RESIDUAL_PX = 1.0


def _ransac_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """A similarity mapping ``src`` to ``dst`` (x, y rows), robust to wrong patches: RANSAC over *every*
    pair of points (a grid of 5 x 5 patches gives at most 300 hypotheses), vectorised.

    A similarity is z -> a z + b on complex coordinates; two points fix it. The hypothesis with the most
    points within :data:`RESIDUAL_PX` wins (ties: the smaller squared residual), then a least-squares fit
    on its inliers (Umeyama's similarity, in closed form in 2-D). scikit-image's ``ransac`` did the same
    with 200 random draws at ~0.5 ms each: 7.4 of the 11.3 s that aligning 60 slices of 256² took.
    """
    n = len(src)
    if n <= 2:
        return None
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    i, j = np.triu_indices(n, 1)
    dz = zs[i] - zs[j]
    ok = np.abs(dz) > 1e-9
    i, j, dz = i[ok], j[ok], dz[ok]
    if not len(i):
        return None
    a = (zd[i] - zd[j]) / dz
    b = zd[i] - a * zs[i]
    r2 = np.abs(a[:, None] * zs[None] + b[:, None] - zd[None]) ** 2  # (hypotheses, points)
    inl = r2 < RESIDUAL_PX ** 2
    count = inl.sum(1)
    cost = np.where(inl, r2, 0.0).sum(1)
    best = np.lexsort((cost, -count))[0]
    keep = inl[best]
    if keep.sum() <= 2:  # at least one point beyond the two that fixed it
        return None
    ms, md = zs[keep].mean(), zd[keep].mean()
    cs, cd = zs[keep] - ms, zd[keep] - md
    a_ls = complex((cd * cs.conj()).sum() / (np.abs(cs) ** 2).sum())
    return _complex_similarity(a_ls, complex(md - a_ls * ms))


def _fit(src: np.ndarray, dst: np.ndarray, motion: str) -> np.ndarray | None:
    """A similarity (or homography) mapping ``src`` to ``dst``, robust to a few wrong patches."""
    if motion == "similarity":
        return _ransac_similarity(np.asarray(src, float), np.asarray(dst, float))
    from skimage.measure import ransac
    from skimage.transform import ProjectiveTransform

    if len(src) <= 4:  # at least one patch beyond the minimum, to have something to check against
        return None
    fit, inliers = ransac((src, dst), ProjectiveTransform, min_samples=4, residual_threshold=RESIDUAL_PX,
                          max_trials=200, rng=0)
    if fit is None or inliers is None or inliers.sum() <= 4:
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
DIRECT_REFINE_PASSES = 1
#: A similarity fit is refined only when it moves some patch by more than :data:`STILL_PX` or its scale and
#: rotation move a patch's corner by more than :data:`SMEAR_PX` against a pure shift. The second pass
#: removes two biases: the smear of the correlation peak within a patch (scale, rotation) and the lost
#: overlap of a shifted patch; below these the first is under the 1/20 px grid (:data:`UPSAMPLE`), the
#: second ~1% of a patch. Slices that hardly move (a microscope's z-stack, cells3d_nuclei: 2.9 -> 2.2 s
#: for 60 slices) skip the pass; skipping it on the smear alone raised bench_align.py's error 0.115 ->
#: 0.143 px (the shift bias).
SMEAR_PX, STILL_PX = 0.05, 0.5


def _needs_refining(m: np.ndarray, shape: tuple[int, int]) -> bool:
    """Whether a similarity ``m`` on an image of ``shape`` moves its patches enough to measure them again."""
    h, w = shape
    side = _patch_side(h, w)
    smear = float(np.linalg.norm(m[:2, :2] - np.eye(2), 2) * side / np.sqrt(2))
    corners = np.array([[side / 2, side / 2, 1], [w - side / 2, side / 2, 1], [side / 2, h - side / 2, 1],
                        [w - side / 2, h - side / 2, 1]]).T
    moved = float(np.linalg.norm((m @ corners - corners)[:2], axis=0).max())
    return smear > SMEAR_PX or moved > STILL_PX


def _register_many(pairs: Sequence[tuple[np.ndarray, np.ndarray]], motion: str,
                   fit: Any = None, passes: int | None = None) -> list[np.ndarray | None]:
    """For each (a, b): the ``motion`` transform from ``a``'s coordinates to ``b``'s (None: too little
    texture to fit). All pairs are measured together (:func:`_local_shifts_many`); ``fit(src, dst,
    motion)`` fits the patch shifts (default :func:`_fit`, RANSAC); ``passes`` refinement passes
    (default :data:`REFINE_PASSES`)."""
    fit = fit or _fit
    if not pairs:
        return []
    if motion == "translation":
        return [_shift_matrix(v) for v in _shifts_same_size([a for a, _ in pairs], [b for _, b in pairs])]
    fits = [fit(src, dst, motion) for src, dst in _local_shifts_many(pairs)]
    todo = [k for k, m in enumerate(fits) if m is not None
            and (motion != "similarity" or _needs_refining(m, pairs[k][0].shape))]
    for _ in range(REFINE_PASSES if passes is None else passes):
        if not todo:
            break
        on_a = [(pairs[k][0], warp_slice(pairs[k][1], fits[k], fast=True)) for k in todo]  # b on a's grid
        still = []
        for k, (src, dst) in zip(todo, _local_shifts_many(on_a)):
            residual = fit(src, dst, motion)
            if residual is not None:
                fits[k] = fits[k] @ residual
                still.append(k)
        todo = still
    return fits


def _register(a: np.ndarray, b: np.ndarray, motion: str) -> np.ndarray | None:
    """The ``motion`` transform from ``a``'s coordinates to ``b``'s (None: too little texture to fit)."""
    return _register_many([(a, b)], motion)[0]


def estimate(images: Sequence[np.ndarray] | Iterable[np.ndarray], motion: str = "similarity",
             reference: int | None = None) -> Alignment:
    """Transforms of each slice of ``images`` ((N, H, W), or any iterable of (H, W) slices, e.g. read one
    at a time from disk) against the reference slice (middle by default). Each slice is downscaled as
    soon as it is read, so memory is one full slice plus the small copies."""
    if motion not in MOTIONS:
        raise StackMFFError(f"align must be one of {', '.join(MOTIONS)} (or True for similarity), got {motion!r}.")
    small_list, to_full = _small_bands(images, ESTIMATE_SIDE)
    small = np.stack(small_list)
    f = 1.0 / to_full[0, 0]
    n = len(small)
    ref = n // 2 if reference is None else int(reference)
    sh, sw = small.shape[1:]
    # pair[i]: slice i-1 coordinates -> slice i coordinates (small scale)
    pair: list[np.ndarray] = [np.eye(3), *_register_many([(small[i - 1], small[i]) for i in range(1, n)], motion)]
    notes: list[str] = []
    flat = [i for i in range(1, n) if pair[i] is None]
    for i, m in zip(flat, _register_many([(small[i - 1], small[i]) for i in flat], "translation")):
        # too little texture for a local fit: fall back to the global shift
        notes.append(f"slices {i - 1}-{i}: too little texture for a {motion} fit; translation only")
        pair[i] = m
    chain = _chain(pair, ref, 0, n - 1)
    # Check: every two-step chain (i-2 -> i-1 -> i) against a direct registration of i-2 to i. Periodic
    # textures (bricks, gratings) let phase correlation lock one period off; the two routes then
    # disagree, and unless the chain matches the images better, the stack is better fused unaligned
    # than wrongly aligned. Slices two apart still share most of their focus, so real sweeps with strong
    # blur changes pass (direct registration to a far reference slice did not: 6 of 9 real stacks were
    # distrusted).
    yy, xx = np.mgrid[sh * 0.2:sh * 0.8:5j, sw * 0.2:sw * 0.8:5j]
    grid = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
    gaps: dict[int, float] = {}  # i -> disagreement of the triple (i-2, i-1, i), px of the estimation copy
    measured = [(i - 1, i, pair[i]) for i in range(1, n)]
    directs = _register_direct_many([(small[i - 2], small[i], pair[i] @ pair[i - 1]) for i in range(2, n)], motion)
    for i, direct in zip(range(2, n), directs):
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
        gaps[i] = gap
    bad = sorted(i for i, g in gaps.items() if g > CONSISTENCY_PX)
    distrust, left_out = None, {}
    if bad:
        lo, hi = consistent_run(n, bad)
        worst = max(gaps[i] for i in bad) / f
        where = ", ".join(f"{i - 2}-{i}: {gaps[i] / f:.1f} px" for i in bad)
        rep = repetition(small[ref])
        if rep >= REPETITIVE:
            distrust = (f"two-step and direct registrations disagree by up to {worst:.1f} px (across slices {where}) "
                        f"on a repetitive texture (its autocorrelation repeats at {rep:.2f} of its peak), where "
                        "a registration can lock one period off")
        elif hi - lo + 1 >= max(MIN_RUN, (n + 1) // 2) and min(gaps[i] for i in bad) / f >= MOVED_PX:
            # Register the slices that agree (a hand refocus or a moving specimen breaks the rest): the
            # others are left out of the fusion, never fused off-grid.
            why = (f"does not register consistently with slices {lo}-{hi} (two-step and direct registrations "
                   f"disagree across slices {where}: the scene moved between them)")
            left_out = {z: why for z in range(n) if not lo <= z <= hi}
            ref = (lo + hi) // 2 if reference is None else min(max(int(reference), lo), hi)
            measured = [(i - lo, j - lo, m) for i, j, m in measured if lo <= i and j <= hi]
            run = _chain(pair, ref, lo, hi)[lo:hi + 1]
            if motion != "homography":
                run = _solve_similarities(measured, hi - lo + 1, ref - lo)
            chain = [run[z - lo] if lo <= z <= hi else np.eye(3) for z in range(n)]
        else:
            distrust = (f"two-step and direct registrations disagree by up to {worst:.1f} px (across slices "
                        f"{where})" + (f", and no run of at least {max(MIN_RUN, (n + 1) // 2)} consecutive slices "
                                       "agrees: the scene moves between slices"
                                       if hi - lo + 1 < max(MIN_RUN, (n + 1) // 2) else
                                       ": too little to tell motion from defocus"))
    if motion != "homography" and distrust is None and not left_out:
        # Every slice from all measured pairs at once, not from one chain: chained errors add up along the
        # chain (0.4 px at the ends of 8-slice stacks), the least-squares solution averages them.
        chain = _solve_similarities(measured, n, ref)
    down = np.linalg.inv(to_full)
    full = np.stack([to_full @ m @ down for m in chain])
    return Alignment(motion, ref, full, notes, distrust, left_out)


def _chain(pair: list[np.ndarray], ref: int, lo: int, hi: int) -> list[np.ndarray]:
    """Reference -> slice transforms for slices lo..hi (identity elsewhere), chained from ``pair[i]``
    (slice i-1 -> slice i) outward from ``ref``."""
    chain = [np.eye(3) for _ in range(len(pair))]
    for i in range(ref + 1, hi + 1):
        chain[i] = pair[i] @ chain[i - 1]
    for i in range(ref - 1, lo - 1, -1):
        chain[i] = np.linalg.inv(pair[i + 1]) @ chain[i + 1]
    return chain


#: Fewest consecutive slices that register together for a partial alignment (with at least half the stack).
MIN_RUN = 3
#: Slices are left out only when every failed check disagrees by at least this many full-size pixels: the
#: scene moved (pseudoscorpion: 7.1-17.0 px). A static synthetic 64-px crop disagreed by 1.3-1.4 px (blur,
#: not motion): leaving 3 of its 10 slices out would lose focus planes, so it is fused unaligned as before.
MOVED_PX = 4.0
#: A texture repeats when its band-passed autocorrelation, outside the central lobe (> 0.2), reaches this
#: share of its peak: a 6-px grating 0.80, synthetic text 0.67; every real stack of ../shared/data
#: 0.18-0.29, synthetic cells, fibres, tissue 0.16-0.20. There a consistent run may be locked one period
#: off (a grating's did), so the stack is fused unaligned rather than partly aligned.
REPETITIVE = 0.5
#: The central lobe of the autocorrelation ends where it falls below this share of the peak.
LOBE_LEVEL = 0.2


def repetition(band: np.ndarray) -> float:
    """Highest autocorrelation of the band-passed ``band`` outside its central lobe, as a share of the peak,
    over shifts up to a quarter of the image (1: a pattern that repeats exactly)."""
    from scipy import ndimage

    b = band - band.mean()
    ac = np.fft.irfft2(np.abs(np.fft.rfft2(b)) ** 2, s=b.shape)
    if ac[0, 0] <= 0:
        return 0.0
    ac = np.fft.fftshift(ac / ac[0, 0])
    cy, cx = ac.shape[0] // 2, ac.shape[1] // 2
    labels, _ = ndimage.label(ac > LOBE_LEVEL)
    yy, xx = np.ogrid[:ac.shape[0], :ac.shape[1]]
    rest = (labels != labels[cy, cx]) & (np.abs(yy - cy) < ac.shape[0] // 4) & (np.abs(xx - cx) < ac.shape[1] // 4)
    return float(ac[rest].max()) if rest.any() else 0.0


def consistent_run(n: int, bad: Sequence[int]) -> tuple[int, int]:
    """The longest run of slices [lo, hi] holding no failed triple (i-2, i-1, i) for i in ``bad``
    (the earliest of equally long runs)."""
    bad_set, lo, best = set(bad), 0, (0, 0)
    for hi in range(n):
        if hi in bad_set and hi - 2 >= lo:
            lo = hi - 1
        if hi - lo > best[1] - best[0]:
            best = (lo, hi)
    return best


def _match(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    """Normalised correlation of band-passed ``a`` with ``b`` brought onto ``a``'s grid by ``m`` (inner 80%)."""
    on_a = warp_slice(b, m, fast=True)
    h, w = a.shape
    inner = (slice(h // 10, h - h // 10), slice(w // 10, w - w // 10))
    x, y = a[inner] - a[inner].mean(), on_a[inner] - on_a[inner].mean()
    return float((x * y).sum() / max(np.sqrt((x * x).sum() * (y * y).sum()), 1e-12))


def _register_direct_many(triples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
                          motion: str) -> list[np.ndarray | None]:
    """For each (a, b, chained): ``a`` -> ``b`` registered independently of the chain's shift, for checking it.

    Slices two apart can differ by 3-4% in scale (pcb_depthmap breathes 14% over 10 slices), which
    smears each patch's correlation peak until the fit fails. So ``b`` is first brought to ``a``'s
    scale and rotation with the chain's linear part, about the image centre and with no shift: a
    chain locked one period off a repetitive texture (a wrong shift) is still measured afresh.
    """
    if motion == "translation":
        return _register_many([(a, b) for a, b, _ in triples], motion)
    lins, pairs = [], []
    for a, b, chained in triples:
        h, w = a.shape
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        lin = np.eye(3)
        lin[:2, :2] = chained[:2, :2]
        lin[:2, 2] = c - chained[:2, :2] @ c
        lins.append(lin)
        pairs.append((a, warp_slice(b, lin, fast=True)))
    rests = _register_many(pairs, motion, passes=DIRECT_REFINE_PASSES)
    return [None if rest is None else lin @ rest for lin, rest in zip(lins, rests)]


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
        out.append(_complex_similarity(ak, bk))
    return out


def _shift_matrix(shift: np.ndarray) -> np.ndarray:
    m = np.eye(3)
    m[0, 2], m[1, 2] = shift[1], shift[0]
    return m


#: Margin (px) read around a window's source region before resampling: the cubic kernel reaches 2 px
#: (and 1 more for the floor of the source coordinate).
WARP_MARGIN = 3


def _as_image(src: np.ndarray) -> Any:
    """``src`` (h, w[, C...]) as the (1, C, h, w) float32 tensor :func:`_sample` reads."""
    import torch

    rh, rw = src.shape[:2]
    return torch.from_numpy(np.ascontiguousarray(src.reshape(rh, rw, -1), np.float32)).permute(2, 0, 1)[None]


def _sample(src: np.ndarray, sx: np.ndarray, sy: np.ndarray, img: Any = None) -> np.ndarray:
    """``src`` (h, w[, C...]) sampled at (sx, sy) (its own pixel coordinates, arrays of one shape), float32.

    Cubic convolution (Keys, a = -0.75: :func:`torch.nn.functional.grid_sample`'s bicubic), edges
    repeated: all channels in one call, 5-9x less CPU than scipy's cubic spline per channel
    (``map_coordinates``, order 3), with the same fused quality (benchmarks/bench_align.py: 27.46 against
    27.47 dB with the true transforms). The kernel is local (no prefilter), so a window read with
    :data:`WARP_MARGIN` around its source gives the pixels the whole slice would give. ``img``: ``src``
    as :func:`_as_image` gives it, when the caller samples it more than once.
    """
    import torch
    import torch.nn.functional as F

    rh, rw = src.shape[:2]
    img = _as_image(src) if img is None else img
    # align_corners=False: pixel i spans [i, i + 1) of [0, n): its centre is at (2i + 1) / n - 1.
    grid = np.empty(sx.shape + (2,), np.float32)
    grid[..., 0] = (2 * sx + 1) / rw - 1
    grid[..., 1] = (2 * sy + 1) / rh - 1
    out = F.grid_sample(img, torch.from_numpy(grid)[None], mode="bicubic", padding_mode="border",
                        align_corners=False)[0]
    return out.permute(1, 2, 0).numpy().reshape(sx.shape + src.shape[2:])


#: Output rows per band of a warp: the bands run on torch's threads (its bicubic ``grid_sample`` uses one
#: core however many it has: 0.34 s per 5-Mpx RGB slice with 1 or 2 threads, 0.19 s in bands on two), and
#: each band's coordinates are computed where they are used, not as two image-sized float64 arrays.
WARP_BAND_ROWS = 256


def _source_coords(m: np.ndarray, oy: np.ndarray, ox: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) of the output pixels on rows ``oy`` and columns ``ox`` (reference-grid coordinates)."""
    gx, gy = ox[None, :], oy[:, None]
    sx = m[0, 0] * gx + m[0, 1] * gy + m[0, 2]
    sy = m[1, 0] * gx + m[1, 1] * gy + m[1, 2]
    if not np.allclose(m[2], [0.0, 0.0, 1.0]):  # a homography
        q = m[2, 0] * gx + m[2, 1] * gy + m[2, 2]
        sx, sy = sx / q, sy / q
    return sx, sy


#: Dtypes OpenCV's warps take (and at most 4 channels); anything else is resampled by :func:`_sample`.
CV2_DTYPES = ("uint8", "uint16", "int16", "float32", "float64")


def _cv2() -> Any:
    """OpenCV when installed (the ``fast`` and ``napari`` extras), else None."""
    try:
        import cv2
    except Exception:  # absent, or a broken build: the torch resampler does the same work, slower
        return None
    return cv2


def _warp_cv2(cv2: Any, src: np.ndarray, m: np.ndarray, oy0: float, ox0: float, rows: int, cols: int,
              x0: int, y0: int) -> np.ndarray:
    """OpenCV's cubic convolution (Keys, a = -0.75, as :func:`_sample`), edges repeated: output pixel (c, r) of
    the window samples ``src`` (read from (y0, x0)) at ``m`` applied to (ox0 + c, oy0 + r)."""
    import torch

    to_src = np.array([[1.0, 0.0, -x0], [0.0, 1.0, -y0], [0.0, 0.0, 1.0]]) @ m @ \
        np.array([[1.0, 0.0, ox0], [0.0, 1.0, oy0], [0.0, 0.0, 1.0]])
    cv2.setNumThreads(torch.get_num_threads())  # 1 in Dask workers, as every other resampler here
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    img = np.ascontiguousarray(src)
    if np.allclose(m[2], [0.0, 0.0, 1.0]):
        out = cv2.warpAffine(img, to_src[:2], (cols, rows), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    else:
        out = cv2.warpPerspective(img, to_src, (cols, rows), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape((rows, cols) + src.shape[2:])


def warp_window(read: Any, matrix: np.ndarray, shape: tuple[int, int], ys: slice, xs: slice,
                offset: tuple[int, int] = (0, 0), *, fast: bool = False) -> np.ndarray:
    """Pixels of one slice resampled onto the reference grid, for the output window (ys, xs) only.

    ``read(y_slice, x_slice)`` returns the slice's original pixels (H, W[, C]) in a window, so a lazy
    slice is read only around the source of this window. Cubic convolution (:func:`_sample`), edges
    repeated beyond the slice; ``offset`` (y, x) is where output (0, 0) lies on the reference grid
    (the crop's corner). Large windows are resampled in bands of rows on torch's threads.

    ``fast``: the same cubic convolution by OpenCV when it is installed (the slices a fusion reads): 3.5-5x
    less time (a 1080 x 1920 RGB slice: 0.10-0.15 s -> 0.03 s), within one grey level of the torch path,
    its sub-pixel positions on a 1/32-px grid. Registration's own warps (refinement, pre-warp, match) use it
    too: the grid did not show in the estimates (bench_align.py's similarity error stayed 0.115 px, the real
    stacks' transforms moved by at most 0.026 px at full size; benchmarks/RESULTS.md, 2026-12-07).
    """
    import torch

    h, w = shape
    oy = np.arange(*ys.indices(10**9)[:2], ys.step or 1, dtype=np.float64) + offset[0]
    ox = np.arange(*xs.indices(10**9)[:2], xs.step or 1, dtype=np.float64) + offset[1]
    if np.allclose(matrix, np.eye(3)):
        return np.asarray(read(slice(int(oy[0]), int(oy[-1]) + 1, ys.step), slice(int(ox[0]), int(ox[-1]) + 1, xs.step)))
    m = np.asarray(matrix, np.float64)
    # The source region from the window's corners (a similarity or a homography maps the window to a
    # quadrilateral: its extremes are at the corners).
    cx, cy = _source_coords(m, oy[[0, -1]], ox[[0, -1]])
    y0 = int(np.clip(np.floor(cy.min()) - WARP_MARGIN, 0, h - 1))
    y1 = int(np.clip(np.ceil(cy.max()) + WARP_MARGIN + 1, y0 + 1, h))
    x0 = int(np.clip(np.floor(cx.min()) - WARP_MARGIN, 0, w - 1))
    x1 = int(np.clip(np.ceil(cx.max()) + WARP_MARGIN + 1, x0 + 1, w))
    src = np.asarray(read(slice(y0, y1), slice(x0, x1)))
    cv2 = _cv2() if fast and (ys.step or 1) == 1 and (xs.step or 1) == 1 else None
    if cv2 is not None and src.dtype.name in CV2_DTYPES and src.ndim <= 3 and (src.ndim == 2 or src.shape[2] <= 4):
        return _warp_cv2(cv2, src, m, oy[0], ox[0], len(oy), len(ox), x0, y0)
    out = np.empty((len(oy), len(ox)) + src.shape[2:], src.dtype)
    img = _as_image(src)

    def band(r0: int) -> None:
        sx, sy = _source_coords(m, oy[r0:r0 + WARP_BAND_ROWS], ox)
        out[r0:r0 + WARP_BAND_ROWS] = cast_to(_sample(src, sx - x0, sy - y0, img), src.dtype)

    starts = list(range(0, len(oy), WARP_BAND_ROWS))
    workers = min(torch.get_num_threads(), len(starts))  # 1 in Dask workers: no pool
    if workers > 1:
        list(band_pool().map(lambda group: [band(r0) for r0 in group], [starts[i::workers] for i in range(workers)]))
    else:
        for r0 in starts:
            band(r0)
    return out


def warp_slice(img: np.ndarray, matrix: np.ndarray, *, fast: bool = False) -> np.ndarray:
    """Slice ``img`` (H, W[, C]) resampled onto the reference grid (edges repeated), in its own dtype.
    ``fast``: as :func:`warp_window`'s (registration's own warps use it)."""
    h, w = img.shape[:2]
    return warp_window(lambda ys, xs: img[ys, xs], matrix, (h, w), slice(0, h), slice(0, w), fast=fast)


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
        return warp_window(read, np.eye(3) if m is None else m[z], self._src_yx, ys, xs, (self.box[0], self.box[2]),
                           fast=True)

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
        planes = None  # filled in place: a whole in-memory stack is not copied twice by np.stack
        for i, t in enumerate(ts):
            for j, z in enumerate(zs):
                plane = self._plane(t, z, ys, xs, rest)
                if planes is None:
                    planes = np.empty((len(ts), len(zs)) + plane.shape, plane.dtype)
                planes[i, j] = plane
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


#: align="auto": what the CLI and the widget do by default. A cheap probe measures how far the slices
#: move; a stack that moves is aligned with :data:`AUTO_MOTION`, one that does not is fused as it is.
AUTO, AUTO_MOTION = "auto", "similarity"
#: The probe: this many slices spread over the stack (the first, the last and evenly between), each
#: downscaled to this longer side (px). Neighbours in that subset are registered and chained to the middle
#: one: slices a quarter of the stack apart still share most of their edges, where the first and the last
#: (focused at opposite ends) may share almost none.
PROBE_SLICES, PROBE_SIDE = 5, 256
#: A stack moves when the probe finds a slice corner displaced by more than this (px at full resolution)
#: against the middle slice. Measured (benchmarks/bench_align_auto.py, RESULTS.md): real stacks that move
#: read 4.7 px (leaves) to 136 px (pcb_depthmap); stacks that do not move read 0.0 px (two real ones and
#: 59 synthetic ones, 128-2048 px: none of their measured motions passes :data:`PROBE_MIN_EXPLAINED`);
#: synthetic stacks drifting and breathing smoothly read 0-0.7 px for a true 1 px, 1.0-2.0 px for 2 px,
#: within 15% from 4 px up. About where ghosts start to show.
AUTO_MOVE_PX = 1.0
#: A probe pair's motion counts only when registering by it removes at least this share of what does not
#: match between the two slices left where they are (1 - normalised correlation of the band-passed images,
#: :func:`_match`). Defocus changes the shape of things (a near object's blurred rim spreads over what is
#: behind), which the fit reads as motion: on 59 synthetic stacks that do not move, heavily blurred
#: (up to 8% of the width), pairs read up to 6 px at the corners, but that motion explained at most 6%
#: of the mismatch (often less than none). Real camera motion explained 7-97% (leaves, beetle, ring,
#: keyboard, pcb, rpi, pseudoscorpion), except between nearly still pairs (leaves: 2%, 0.4 px). Slices of
#: different scenes (the confocal z-stack cells3d_nuclei: other nuclei in every slice) explain nothing.
PROBE_MIN_EXPLAINED = 0.1


def _downscale(im: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """(``im`` with its longer side at most ``side``, antialiased, float32; the 3x3 matrix from its pixel
    coordinates (x, y) to the original's)."""
    import torch
    import torch.nn.functional as F

    h, w = im.shape
    f = min(1.0, side / max(h, w))
    if f == 1.0:
        return np.asarray(im, np.float32), np.eye(3)
    hs, ws = max(1, round(h * f)), max(1, round(w * f))
    small = F.interpolate(torch.from_numpy(np.ascontiguousarray(im, np.float32))[None, None], size=(hs, ws),
                          mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
    # Pixel centres: small i sits at (i + 0.5) * (n / n_small) - 0.5 of the original.
    sx, sy = w / ws, h / hs
    return small, np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])


def _small_bands(images: Iterable[np.ndarray], side: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(band-passed copies of ``images`` downscaled to ``side``, in order; the matrix from their pixel
    coordinates to the originals'). Slices are read one at a time in this thread (a lazy stack reads from
    disk in order) and downscaled and filtered on torch's threads, a few at once: scipy's Gaussians use one
    core each (the beetle's 28 slices: 0.11 of its 0.54 s of estimation, profiled)."""
    import torch

    def one(im: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        small, to_full = _downscale(im, side)
        return _band(small), to_full

    workers = torch.get_num_threads()  # 1 in Dask workers: no pool
    if workers <= 1:
        done = [one(im) for im in images]
    else:
        pool, pending, done = band_pool(), [], []
        for im in images:
            pending.append(pool.submit(one, im))
            if len(pending) >= workers:  # at most this many slices held at once
                done.append(pending.pop(0).result())
        done.extend(f.result() for f in pending)
    return [d[0] for d in done], (done[-1][1] if done else np.eye(3))


def _fit_similarity_lsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """A similarity mapping ``src`` to ``dst`` by least squares, refitted twice without the points off
    by more than 1 px and 3x the median residual (the probe's fit: no RANSAC, no scikit-image)."""
    if len(src) < 3:
        return None
    zs, zd = src[:, 0] + 1j * src[:, 1], dst[:, 0] + 1j * dst[:, 1]
    keep = np.ones(len(zs), bool)
    for _ in range(3):
        if keep.sum() < 3:
            return None
        a, b = np.linalg.lstsq(np.stack([zs[keep], np.ones(keep.sum())], 1), zd[keep], rcond=None)[0]
        r = np.abs(a * zs + b - zd)
        keep = r <= max(1.0, 3 * float(np.median(r)))
    return _complex_similarity(a, b)


def probe(images: Sequence[np.ndarray], shape: tuple[int, int] | None = None) -> dict:
    """How far the slices move: ``images`` are a few (H, W) focus images in stack order (the first, the
    last and some between; :func:`probe_stack` picks them), compared at :data:`PROBE_SIDE` px.

    Neighbours are registered (similarity from a grid of patch shifts, one refinement pass) and chained
    to the middle image; a pair whose motion explains less than :data:`PROBE_MIN_EXPLAINED` of its
    mismatch counts as still (``unmeasured``). Returns the largest displacement of an image corner against
    the middle image (``max_px``, at full resolution), the scale, shift and rotation behind it, and
    ``moves`` (``max_px`` > :data:`AUTO_MOVE_PX`).
    """
    t0 = time.perf_counter()
    small, to_full = _small_bands(images, PROBE_SIDE)
    h, w = shape or images[0].shape
    n = len(small)
    pair = [np.eye(3), *_register_many([(small[i - 1], small[i]) for i in range(1, n)], "similarity",
                                       fit=lambda src, dst, motion: _fit_similarity_lsq(src, dst))]
    for i in range(1, n):
        if pair[i] is None:  # too little texture for a local fit: the global shift
            pair[i] = _register_many([(small[i - 1], small[i])], "translation")[0]
    # A motion that hardly improves how the neighbours match is defocus changing shapes, or slices of
    # different scenes (PROBE_MIN_EXPLAINED): it counts as none.
    match = [1.0, *(_match(small[i - 1], small[i], pair[i]) for i in range(1, n))]
    still = [1.0, *(_match(small[i - 1], small[i], np.eye(3)) for i in range(1, n))]
    explained = [1.0, *((match[i] - still[i]) / max(1.0 - still[i], 1e-3) for i in range(1, n))]
    unmeasured = [i for i in range(1, n) if explained[i] < PROBE_MIN_EXPLAINED]
    for i in unmeasured:
        pair[i] = np.eye(3)
    ref = n // 2
    chain = [np.eye(3) for _ in range(n)]
    for i in range(ref + 1, n):
        chain[i] = pair[i] @ chain[i - 1]
    for i in range(ref - 1, -1, -1):
        chain[i] = np.linalg.inv(pair[i + 1]) @ chain[i + 1]
    back = np.linalg.inv(to_full)
    corners = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], float)
    worst, at = 0.0, ref
    for i, m in enumerate(chain):
        q = to_full @ m @ back @ corners
        move = float(np.max(np.hypot(q[0] / q[2] - corners[0], q[1] / q[2] - corners[1])))
        if move > worst:
            worst, at = move, i
    m = to_full @ chain[at] @ back
    c = m @ np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    return {"max_px": round(worst, 2), "slice": at, "scale": round(float(np.sqrt(abs(np.linalg.det(m[:2, :2])))), 5),
            "rotation_deg": round(float(np.degrees(np.arctan2(m[1, 0], m[0, 0]))), 3),
            "shift_px": round(float(np.hypot(c[0] - (w - 1) / 2, c[1] - (h - 1) / 2)), 2),
            "match": [round(float(v), 3) for v in match[1:]], "explained": [round(float(v), 3) for v in explained[1:]],
            "unmeasured": [[i - 1, i] for i in unmeasured],
            "threshold_px": AUTO_MOVE_PX, "moves": worst > AUTO_MOVE_PX,
            "seconds": round(time.perf_counter() - t0, 3)}


def probe_slices(n: int) -> list[int]:
    """The slices :func:`probe_stack` looks at: :data:`PROBE_SLICES` spread evenly, the first and last included."""
    return sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, PROBE_SLICES))})


def probe_stack(stack, t: int = 0) -> dict:
    """:func:`probe` on :func:`probe_slices` of a :class:`FocalStack` at time point ``t``; the record says
    which slices (``slices``; ``slice``: the one that moves most, as a stack index)."""
    t0 = time.perf_counter()
    zs = probe_slices(stack.n_slices)
    rec = probe([stack.focus_image(z, t) for z in zs], stack.yx_shape)
    rec["slice"] = zs[rec["slice"]]
    rec["unmeasured"] = [[zs[a], zs[b]] for a, b in rec["unmeasured"]]
    rec["slices"] = zs
    rec["seconds"] = round(time.perf_counter() - t0, 3)  # with the reading of the slices
    return rec


def resolve_motion(align: bool | str | None) -> str | None:
    """``align=`` -> a motion model, :data:`AUTO` or None: True means similarity; "off"/"none" None."""
    if align is None or align is False:
        return None
    if align is True:
        return "similarity"
    if isinstance(align, str) and align.lower() in (*MOTIONS, AUTO):
        return align.lower()
    if isinstance(align, str) and align.lower() in ("off", "none"):
        return None
    raise StackMFFError(f"align must be one of {AUTO}, {', '.join(MOTIONS)}, True or None, got {align!r}.")


def _covered(matrices: np.ndarray, shape: tuple[int, int], step: int) -> np.ndarray:
    """(rows, cols) mask of reference-grid points (every ``step`` px) that every slice covers."""
    h, w = shape
    ys, xs = np.arange(0, h, step, dtype=np.float64), np.arange(0, w, step, dtype=np.float64)
    affine = [m for m in matrices if np.allclose(m[2], [0.0, 0.0, 1.0])]
    # Affine slices cover, on each row, one interval of x (two slabs: 0 <= x' <= w-1, 0 <= y' <= h-1):
    # intersected per row, not tested point by point (0.4 s for 28 slices of 750x500 before).
    lo, hi = np.full(len(ys), -np.inf), np.full(len(ys), np.inf)
    for m in affine:
        for a, b, c, top in ((m[0, 0], m[0, 1], m[0, 2], w - 1), (m[1, 0], m[1, 1], m[1, 2], h - 1)):
            k = b * ys + c  # this coordinate is a x + k on each row
            if a > 0:
                lo, hi = np.maximum(lo, -k / a), np.minimum(hi, (top - k) / a)
            elif a < 0:
                lo, hi = np.maximum(lo, (top - k) / a), np.minimum(hi, -k / a)
            else:
                lo = np.where((k >= 0) & (k <= top), lo, np.inf)
    ok = (xs[None, :] >= lo[:, None]) & (xs[None, :] <= hi[:, None])
    others = [m for m in matrices if not np.allclose(m[2], [0.0, 0.0, 1.0])]  # homographies: point by point
    if others:
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        pts = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        for m in others:
            q = m @ pts
            x, y = q[0] / q[2], q[1] / q[2]
            ok &= ((x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)).reshape(ok.shape)
    return ok


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
    start = time.perf_counter()
    probes: list[dict | None] = [None] * stack.n_times
    if motion == AUTO:
        # Probe every time point; align them all when one moves (they share one crop).
        probes = [probe_stack(stack, t) for t in range(stack.n_times)]
        if not any(pr["moves"] for pr in probes):
            return stack, [{"motion": None, "aligned": False, "auto": pr} for pr in probes]
        motion = AUTO_MOTION
    matrices: list[np.ndarray | None] = []
    records: list[dict] = []
    for t in range(stack.n_times):
        t0 = time.perf_counter()
        al = estimate((stack.focus_image(z, t) for z in range(stack.n_slices)), motion)
        auto = {"auto": probes[t]} if probes[t] is not None else {}
        why = al.distrust or _believable(al, (h, w))
        if why is not None:
            warnings.warn(f"{source}: could not register the slices ({why}); fused unaligned.", stacklevel=2)
            matrices.append(None)
            records.append({"motion": motion, "aligned": False, "why": why, **auto})
            continue
        matrices.append(al.matrices)
        records.append({**al.to_json(), "aligned": True, "estimate_s": round(time.perf_counter() - t0, 3), **auto})
    used = [m for m in matrices if m is not None]
    if not used:
        return stack, records
    box = crop_box(used, (h, w))
    share = (box[1] - box[0]) * (box[3] - box[2]) / float(h * w)
    if share < MIN_VALID_SHARE:
        what = (f"after {motion} alignment the slices share only {share:.0%} of the image (at least "
                f"{MIN_VALID_SHARE:.0%} needed)")
        if probes[0] is None:  # asked for: refuse
            raise StackMFFError(f"{source}: {what}: they move too far, or are not of one scene.")
        warnings.warn(f"{source}: {what}; fused unaligned.", stacklevel=2)  # align="auto": not asked for
        return stack, [{"motion": motion, "aligned": False, "why": what, "auto": pr} for pr in probes]
    for r in records:
        r["crop"] = {"y": [box[0], box[1]], "x": [box[2], box[3]], "share": round(share, 4)}
    yx_axis = stack.axes.index("Y")
    view = AlignedArray(stack.data, stack.has_time, matrices, box, yx_axis)
    data = view if not _in_memory(stack.data) else np.asarray(view)
    events = None
    if stack.events is not None:  # event frames follow their slices
        ev = AlignedArray(stack.events, stack.has_time, matrices, box, yx_axis)
        events = ev if not _in_memory(stack.events) else np.asarray(ev).astype(np.asarray(stack.events[:1]).dtype)
    for r in records:  # estimation, and warping an in-memory stack (a lazy one is warped as it is fused)
        r["align_s"] = round(time.perf_counter() - start, 3)
    return dataclasses.replace(stack, data=data, events=events), records


def summary(records: list[dict] | None) -> str:
    """One line per time point saying what alignment did (for the CLI and the widget)."""
    lines = []
    for t, rec in enumerate(records or []):
        when = f"t={t}: " if len(records or []) > 1 else ""
        pr = rec.get("auto")
        if pr is not None:  # align="auto": what the probe found, then what was done
            found = (f"auto: {when}slices move up to {pr['max_px']:.1f} px (scale {pr['scale']:.4f}, "
                     f"probe {pr['seconds']:.2f} s)")
            if rec["motion"] is None:
                lines.append(f"{found} -> not aligned")
            elif not rec["aligned"]:
                lines.append(f"{found} -> not registered ({rec['why']}); fused unaligned")
            else:
                shift = max(float(np.hypot(*xy)) for xy in rec["shift_px"])
                lines.append(f"{found} -> aligned ({rec['motion']} onto slice {rec['reference']}, largest shift "
                             f"{shift:.1f} px, kept {rec['crop']['share']:.0%} of the image, {rec['align_s']:.1f} s)"
                             + _left_out_note(rec))
            continue
        if not rec["aligned"]:
            lines.append(f"{when}not registered ({rec['why']}); fused unaligned")
            continue
        scale, crop = rec["scale"], rec["crop"]
        shift = max(float(np.hypot(*xy)) for xy in rec["shift_px"])
        lines.append(f"{when}{rec['motion']} onto slice {rec['reference']}: scale {min(scale):.4f}-{max(scale):.4f}, "
                     f"largest shift {shift:.1f} px, kept {crop['share']:.0%} of the image "
                     f"(y {crop['y'][0]}:{crop['y'][1]}, x {crop['x'][0]}:{crop['x'][1]})" + _left_out_note(rec))
    return "\n".join(lines)


def _left_out_note(rec: dict) -> str:
    """'; slices 0, 8-13 left out (...)' for a partial alignment, else ''."""
    out = sorted(int(z) for z in rec.get("left_out") or {})
    if not out:
        return ""
    runs, start = [], out[0]
    for a, b in zip(out, out[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return f"; slices {', '.join(runs)} left out: {next(iter(rec['left_out'].values()))}"


def crop_offset(records: list[dict] | None) -> tuple[int, int]:
    """(y, x) pixel where a result cropped by alignment starts on the input's grid ((0, 0): not cropped)."""
    for rec in records or []:
        if "crop" in rec:
            return int(rec["crop"]["y"][0]), int(rec["crop"]["x"][0])
    return 0, 0
