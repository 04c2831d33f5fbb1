"""Halos at depth edges: hard selection against the soft, edge-aware blend (issue 12, second part).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_halo.py [--stacks 8] [--size 256] [--sweep] [--real]
                                                        [--max-side 768] [--out DIR]

Synthetic (known truth): stacks rendered with occluding objects (``depth="objects"``: a near object's
defocused rim spills over the background, as in real optics), noisy, half 8-bit gray and half 16-bit RGB,
N = 10, fixed seeds; and the same number of mildly noisy ones (2000 photons, the tests' renderer).
Methods: wavelet and StackMFF-V2 (shipped weights), each with ``blend="hard"``, ``"soft"`` at the
guided-filter radii of ``--radii`` (the default radius is core/blend.py's SOFT_RADIUS) and ``"two-scale"``. Scores, on the inner region (16 px from the border):
  PSNR       of the fused image against the all-in-focus truth (dB)
  band PSNR  the same inside the depth-edge band: pixels within 6 px of a step of >= 1 slice in the true
             focus index (where halos live)
  halo %     mean overshoot in that band: how far the fused value lies outside the range [min, max] of
             the truth in its 5x5 neighbourhood (glow above, dark ring below), in % of the truth's range
``--sweep`` also runs the soft blend's radius x eps grid (wavelet) that chose core/blend.py's constants.

Real stacks (``--real``, ../shared/data, no truth; slices downscaled to --max-side as in bench_real.py):
Q4 (Q^AB/F with |grad|^4 weights), and in the band within 6 px of strong edges of the focus map (a step
of >= 1 slice after a 5x5 median): sharp (gradient energy against the sharpest slice, capped; 1 = as
sharp) and excess (gradient energy no slice has there: glow, rings, seams; 0 is best), plus seconds.
PNGs of every fused image go to --out for looking at.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_stackmff.core.fusion import dispatch as fusion  # noqa: E402
from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402
from napari_stackmff.core.tiles.blend import SOFT_RADIUS  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402
from napari_stackmff.core.fusion.metrics import DEEP_STACK_WEIGHT_POWER, gradient_energy, psnr, qabf  # noqa: E402
from napari_stackmff.core.io.preview import stack_display_range, to_uint8_preview  # noqa: E402

BORDER, BAND = 16, 6
METHODS = ("wavelet", "stackmff-v2")


def luma(img: np.ndarray) -> np.ndarray:
    f = img.astype(np.float64)
    return f @ np.array([0.299, 0.587, 0.114]) if f.ndim == 3 else f


def edge_band(index: np.ndarray, step: float = 1.0, median: int = 1) -> np.ndarray:
    """Pixels within BAND px of a step of at least ``step`` slices in a focus-index map."""
    m = ndi.median_filter(index, median) if median > 1 else index
    jump = np.maximum(ndi.maximum_filter(m, 3) - ndi.minimum_filter(m, 3), 0) >= step
    return ndi.binary_dilation(jump, iterations=BAND)


def inner(a: np.ndarray) -> np.ndarray:
    return a[BORDER:-BORDER, BORDER:-BORDER]


def halo_percent(fused: np.ndarray, truth: np.ndarray, band: np.ndarray) -> float:
    f, t = luma(fused), luma(truth)
    hi, lo = ndi.maximum_filter(t, 5), ndi.minimum_filter(t, 5)
    over = np.maximum(f - hi, 0) + np.maximum(lo - f, 0)
    rng = float(t.max() - t.min()) or 1.0
    return 100.0 * float(inner(over)[inner(band)].mean()) / rng


def band_psnr(fused: np.ndarray, truth: np.ndarray, band: np.ndarray) -> float:
    top = float(np.iinfo(truth.dtype).max) if truth.dtype.kind == "u" else 1.0
    d = (fused.astype(np.float64) - truth.astype(np.float64))
    d = inner(d)[inner(band)]
    mse = float((d * d).mean())
    return 10 * np.log10(top * top / max(mse, 1e-12))


def synthetic_stacks(count: int, size: int, mild: bool) -> list:
    """Occlusion stacks: random noise levels (30-2000 photons), or mild noise only (2000 photons)."""
    out = []
    for i in range(count):
        rng = np.random.default_rng(9100 + i + (500 if mild else 0))
        rgb = i % 2 == 1
        if mild:
            shape = (size, size)
            aif = synth.random_scene(rng, shape, ("natural", "cells", "text", "fibres")[i % 4], rgb=rgb)
            s = synth.render_stack(aif, synth.random_depth(rng, shape, "objects"), np.linspace(0, 1, 10),
                                   max_radius=10.0, layers=20, dtype="uint16" if rgb else "uint8",
                                   peak_photons=2000.0, read_noise=0.003, rng=rng)
        else:
            s = synth.random_stack(rng, size=size, n=10, rgb=rgb, depth="objects", noise=True,
                                   dtype="uint16" if rgb else "uint8", max_radius=(6.0, 10.0))
        out.append(s)
    return out


def blends(radii: list[int]) -> list[tuple[str, dict]]:
    """(label, fuse keywords) for hard, each soft radius and the two-scale blend (issue 26)."""
    return ([("hard", {"blend": "hard"})] + [(f"soft r={r}", {"blend": "soft", "radius": r}) for r in radii]
            + [("two-scale", {"blend": "two-scale"})])


def fuse_with(stack, method: str, blend: dict):
    """fuse() with a soft-blend radius other than the default (the radius is not a public setting)."""
    kw = dict(blend)
    radius = kw.pop("radius", None)
    original = fusion.soft_blend_for
    if radius is not None:
        fusion.soft_blend_for = functools.partial(original, radius=radius)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fuse(stack, method=method, device="cpu", **kw)
    finally:
        fusion.soft_blend_for = original


def run_synthetic(stacks: list, methods: tuple[str, ...], radii: list[int], out: Path, title: str) -> None:
    rows: dict[str, list[tuple[float, float, float, float]]] = {}
    for k, s in enumerate(stacks):
        band = edge_band(s.focus_index)
        for m in methods:
            for blend, kw in blends(radii):
                t0 = time.perf_counter()
                r = fuse_with(s.slices, m, kw)
                dt = time.perf_counter() - t0
                p = psnr(inner(r.all_in_focus), inner(s.aif))
                rows.setdefault(f"{m} {blend}", []).append(
                    (p, band_psnr(r.all_in_focus, s.aif, band), halo_percent(r.all_in_focus, s.aif, band), dt))
                if k < 4:
                    write_png(out / f"{title[:5]}{k}_{m}_{blend.replace(' ', '')}.png", to_uint8_preview(r.all_in_focus))
        if k < 4:
            write_png(out / f"{title[:5]}{k}_truth.png", to_uint8_preview(s.aif))
    print(f"\n{title} ({len(stacks)}, N = 10, {stacks[0].slices.shape[1]} px; mean):\n")
    print("| method | blend | PSNR dB | band PSNR dB | halo % | s/stack |")
    print("|---|---|---|---|---|---|")
    for name, vals in rows.items():
        a = np.asarray(vals).mean(0)
        m, b = name.split(" ", 1)
        print(f"| {m} | {b} | {a[0]:.2f} | {a[1]:.2f} | {a[2]:.3f} | {a[3]:.2f} |", flush=True)


def sweep(stacks: list) -> None:
    print("\nSoft-blend sweep (wavelet; mean PSNR / band PSNR / halo %):\n")
    print("| radius | eps | PSNR dB | band PSNR dB | halo % |")
    print("|---|---|---|---|---|")
    original = fusion.soft_blend_for
    try:
        for radius in (2, 4, 8, 16):
            for eps in (1e-4, 1e-3, 1e-2, 1e-1):
                fusion.soft_blend_for = functools.partial(original, radius=radius, eps=eps)
                vals = []
                for s in stacks:
                    band = edge_band(s.focus_index)
                    r = fuse(s.slices, method="wavelet", blend="soft", device="cpu")
                    vals.append((psnr(inner(r.all_in_focus), inner(s.aif)), band_psnr(r.all_in_focus, s.aif, band),
                                 halo_percent(r.all_in_focus, s.aif, band)))
                a = np.asarray(vals).mean(0)
                print(f"| {radius} | {eps:g} | {a[0]:.2f} | {a[1]:.2f} | {a[2]:.3f} |")
    finally:
        fusion.soft_blend_for = original


def run_real(methods: tuple[str, ...], radii: list[int], max_side: int, out: Path,
             only: list[str] | None = None) -> None:
    from bench_real import downscale, real_sets

    from napari_stackmff.core import load_stack

    print(f"\nReal stacks (max side {max_side}; band: 6 px around focus-map steps of >= 1 slice):\n")
    print("| stack | method | blend | Q4 | band sharp | band excess | s |")
    print("|---|---|---|---|---|---|---|")
    for rset in real_sets():
        if only and rset.name not in only:
            continue
        if rset.name == "lytro_pairs":
            continue  # pairs: no depth edges worth the name at N = 2 in most of them
        stack, _ = downscale(load_stack(rset.items[0]), max_side)
        sources = np.asarray(stack.data)
        span = stack_display_range(stack)
        for m in methods:
            for blend, kw in blends(radii):
                t0 = time.perf_counter()
                r = fuse_with(stack, m, kw)
                dt = time.perf_counter() - t0
                band = edge_band(r.focus_map, median=5)
                ef = gradient_energy(luma(r.all_in_focus))
                emax = np.max([gradient_energy(luma(s)) for s in sources], axis=0)
                tot = float(emax[band].sum()) or 1.0
                sharp = float(np.minimum(ef, emax)[band].sum()) / tot
                excess = float(np.maximum(ef - emax, 0)[band].sum()) / tot
                q4 = qabf(r.all_in_focus, sources, DEEP_STACK_WEIGHT_POWER)
                print(f"| {rset.name} | {m} | {blend} | {q4:.3f} | {sharp:.3f} | {excess:.4f} | {dt:.1f} |", flush=True)
                write_png(out / f"{rset.name}_{m}_{blend.replace(' ', '')}.png", to_uint8_preview(r.all_in_focus, span))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, default=8)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--max-side", type=int, default=768)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--radii", nargs="+", type=int, default=[SOFT_RADIUS])
    ap.add_argument("--only", nargs="+", default=None, help="real stacks to run (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "halo")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    stacks = synthetic_stacks(args.stacks, args.size, mild=False)
    if args.stacks:
        run_synthetic(stacks, tuple(args.methods), args.radii, args.out, "Synthetic occlusion stacks, noisy")
        run_synthetic(synthetic_stacks(args.stacks, args.size, mild=True), tuple(args.methods), args.radii, args.out,
                      "Synthetic occlusion stacks, mild noise")
    if args.sweep:
        sweep(stacks)
    if args.real:
        run_real(tuple(args.methods), args.radii, args.max_side, args.out, args.only)


if __name__ == "__main__":
    main()
