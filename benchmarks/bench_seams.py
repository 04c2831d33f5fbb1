"""Seams and halos of the halo decision on bright fields: the near vote and the flat cross-fade, side by side.

Run:  OMP_NUM_THREADS=2 python benchmarks/bench_seams.py [--full] [--variants NAME ...] [--out DIR]

Issue 26. The halo decision gives a flat pixel (no detail of its own) the slice that the detail around it
votes for. Two things are measured here, each on and off in one run:

- **the near vote** (``decision.NEAR_SIGMA``): beside detail, the slice of the nearest detail (a vote blurred
  over NEAR_SIGMA px) instead of the strongest within the wide vote (VOTE_SIGMA 64 px);
- **the flat cross-fade** (``blend.SEAM_SIGMA``): a change of slice among flat pixels is cross-faded over
  SEAM_SIGMA px instead of switching hard (the output is then not pixel-faithful there).

Stacks: the two bright-field stacks of bench_real.py (the pseudoscorpion, frames 1-11, and the diamond ring)
at 768 px (bench_real's downscale) and, with ``--full``, the pseudoscorpion at full size through
``align="auto"`` (what ``stackmff fuse`` does); plus three synthetic two-specimen stacks (a strongly textured
dark disc in focus at slice 2, a faint one at slice 7, 48 px of bright field between them) with their truth.

Scores: Q4 and excess (bench_real.py); **steps**: changes of slice between 4-neighbours in the bright field
(luma above the stack's median), and how many of them step by more than 8 grey levels (luma, 8-bit scale) in
the output: a seam is a visible step where the slice changes; **faded**: share of pixels not copied from
their slice; synthetic: PSNR against the truth over the field between the discs, the mean step at the
changes of slice there; time s: fuse() wall-clock.

Crops (``--out``): the lower legs (rows 1250:1750, cols 450:1250 of the aligned full-size output) per
variant, for a look.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_stackmff.core import fuse, load_stack  # noqa: E402
from napari_stackmff.core.tiles import blend, decision  # noqa: E402

#: name -> (NEAR_SIGMA, SEAM_SIGMA); "before": both off (the wide vote alone, on its blocks).
VARIANTS = {
    "before": (0.0, 0.0),
    "fade 6": (0.0, 6.0),
    "near 16": (16.0, 0.0),
    "near 16 + fade 6": (16.0, 6.0),
    "near 8 + fade 6": (8.0, 6.0),
    "near 32 + fade 6": (32.0, 6.0),
    "near 16 + fade 12": (16.0, 12.0),
}
LEGS = (slice(1250, 1750), slice(450, 1250))


def _luma(img: np.ndarray) -> np.ndarray:
    x = img.astype(np.float32)
    x = x.mean(-1) if x.ndim == 3 else x
    return x * (255.0 / np.iinfo(img.dtype).max) if img.dtype.kind in "ui" else x


def steps(img: np.ndarray, index: np.ndarray, field: np.ndarray) -> tuple[int, int, float]:
    """(changes of slice between 4-neighbours inside ``field``, how many step by > 8 grey levels, mean step)."""
    y = _luma(img)
    n = big = 0
    total = 0.0
    for ax in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[ax], b[ax] = slice(0, -1), slice(1, None)
        m = (index[tuple(a)] != index[tuple(b)]) & field[tuple(a)] & field[tuple(b)]
        d = np.abs(y[tuple(a)] - y[tuple(b)])[m]
        n += int(m.sum())
        big += int((d > 8).sum())
        total += float(d.sum())
    return n, big, total / max(n, 1)


def faded_share(img: np.ndarray, sources: np.ndarray, index: np.ndarray) -> float:
    hard = np.take_along_axis(sources, index.reshape(1, *index.shape, *([1] * (sources.ndim - 3))), 0)[0]
    diff = img != hard
    return float((diff.any(-1) if diff.ndim == 3 else diff).mean())


def two_specimens(seed: int, size=(200, 320), n: int = 10, gap: int = 48, r: int = 26):
    """A strongly textured dark disc in focus at slice 2 and a faint one at slice 7 on a bright field; returns the
    stack and the field between the discs (tests/test_decision.py fuses it too)."""
    from scipy import ndimage as ndi

    from napari_stackmff.core.training.synth import render_stack

    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w]
    ca, cb = w / 2 - gap / 2 - r, w / 2 + gap / 2 + r
    a = (yy - h / 2) ** 2 + (xx - ca) ** 2 < r * r
    b = (yy - h / 2) ** 2 + (xx - cb) ** 2 < r * r
    tex = ndi.gaussian_filter(rng.standard_normal((h, w)), 1.0)
    tex /= tex.std()
    aif = np.where(a, 0.18 + 0.12 * tex, np.where(b, 0.25 + 0.03 * tex, 0.9)).astype(np.float32)
    f = np.linspace(0, 1, n)
    depth = np.where(xx < w / 2 + gap / 4, f[2], f[7]).astype(np.float32)
    s = render_stack(aif, depth, f, max_radius=30, rng=rng, read_noise=0.005)
    between = ~ndi.binary_dilation(a | b, iterations=3) & (np.abs(yy - h / 2) < r) & (xx > ca) & (xx < cb)
    return s, between


def set_variant(near: float, fade: float) -> None:
    decision.NEAR_SIGMA = near
    blend.SEAM_SIGMA = fade


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="also the full-size pseudoscorpion, aligned (slow)")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help="a subset of: " + ", ".join(VARIANTS))
    ap.add_argument("--out", type=Path, default=None, help="folder for the crops")
    args = ap.parse_args()

    import bench_real as br
    from napari_stackmff.core.io.write import write_png

    rows: list[tuple[str, str, dict]] = []
    sets = {s.name: s for s in br.real_sets()}
    cases = []
    for name in ("pseudoscorpion", "diamond_ring"):
        if name in sets:
            stack, _ = br.downscale(load_stack(sets[name].items[0]), 768)
            cases.append((f"{name} 768 px", stack, {}))
    if args.full and "pseudoscorpion" in sets:
        cases.append(("pseudoscorpion full, aligned", load_stack(sets["pseudoscorpion"].items[0]), {"align": "auto"}))
    for label, stack, kw in cases:
        for v in args.variants:
            set_variant(*VARIANTS[v])
            t0 = time.perf_counter()
            r = fuse(stack, method="wavelet", device="cpu", **kw)
            dt = time.perf_counter() - t0
            img, index = r.all_in_focus, r.index
            if kw.get("align"):  # scores need the aligned sources: re-fuse nothing, warp nothing; steps only
                sources = None
            else:
                sources = np.asarray(stack.data)
            y = _luma(img)
            field = y > np.median(y)
            n, big, mean = steps(img, index, field)
            res = {"steps": n, "steps > 8": big, "mean step": mean, "time s": dt}
            if sources is not None:
                res.update({k: v for k, v in br.score(img, sources).items() if k in ("Q4", "excess")})
                res["faded"] = faded_share(img, sources, index)
            rows.append((label, v, res))
            if args.out is not None and kw.get("align"):
                args.out.mkdir(parents=True, exist_ok=True)
                write_png(args.out / f"legs_{v.replace(' ', '_').replace('+', 'and')}.png", img[LEGS])
            print(label, v, {k: round(x, 4) for k, x in res.items()}, file=sys.stderr, flush=True)
    for v in args.variants:
        set_variant(*VARIANTS[v])
        psnrs, means = [], []
        for seed in (0, 1, 2):
            s, between = two_specimens(seed)
            r = fuse(s.slices, method="wavelet", device="cpu")
            err = (r.all_in_focus.astype(np.float64) - s.aif.astype(np.float64))[between]
            psnrs.append(10 * np.log10(255.0 ** 2 / max(float(np.mean(err ** 2)), 1e-12)))
            means.append(steps(r.all_in_focus, r.index, between)[2])
        rows.append(("two specimens (3 seeds)", v, {"PSNR field dB": float(np.mean(psnrs)), "mean step": float(np.mean(means))}))

    keys = ["Q4", "excess", "steps", "steps > 8", "mean step", "faded", "PSNR field dB", "time s"]
    print("| stack | variant (near sigma, fade sigma) | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for label, v, res in rows:
        cells = []
        for k in keys:
            x = res.get(k)
            cells.append("" if x is None else (f"{x:d}" if isinstance(x, int) else f"{x:.4f}" if k in ("Q4", "excess", "faded")
                                              else f"{x:.2f}"))
        print(f"| {label} | {v} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
