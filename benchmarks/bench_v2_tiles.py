"""StackMFF-V2 on big images: tile seams, agreement with an untiled run, image borders, run-time estimate.

Run:  python benchmarks/bench_v2_tiles.py [--out /tmp/v2tiles] [--no-untiled] [--skip-pcb]

"before" is the hard centre-crop stitching (``feather=False``), "after" the default (neighbouring
tiles' maps cross-faded over the tile margin). Both use the shipped weights and the same tiles.

1. Synthetic stacks with known focus (3 x 512 px, N = 8, 256-px tiles): the mean |focus step| across
   tile boundaries vs elsewhere, |tiled - untiled|, focus error against the truth.
2. pcb_stack (the 7 pcb_00*.jpg, 2048 x 1536 RGB), tiles as ``fuse`` plans them from memory: the same
   seam figures, agreement with an untiled run (one 2048-px tile, ~9 GB at 400 B/voxel), wall time, the run-time
   estimate (first tile scaled to all) against the actual time. Focus maps, |tiled - untiled| and
   crops around the tile corner are saved as PNGs in --out.
3. cells3d_nuclei (60 x 256 x 256): the leftmost 20 px; the share of textured pixels (wavelet's local
   contrast above its median) where the fused image keeps >= 80% of wavelet's local contrast, for the
   mirror margin ``border_pad`` 0 (default), 16 and 32, against the same share inside the image.
Needs ../shared/data (skips what is missing). Timings come from a shared, busy CPU: read them as rough.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.ndimage import uniform_filter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.tiles.pipeline import EstimateMessage, plan_tile  # noqa: E402
from napari_stackmff.core.fusion.dispatch import prepare  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402
from napari_stackmff.core.models.inference import TILE_OVERLAP  # noqa: E402
from napari_stackmff.core.io.preview import colorize, to_uint8_preview  # noqa: E402
from napari_stackmff.core.training.synth import random_stack  # noqa: E402
from napari_stackmff.core.tiles.tiling import iter_tiles  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
VARIANTS = {"before": {"feather": False}, "after": {}}


# ------------------------------------------------------------------------------- measures
def boundaries(h: int, w: int, side: int, overlap: int) -> tuple[list[int], list[int]]:
    """Rows and columns where one tile's output meets the next one's."""
    tiles = list(iter_tiles(h, w, side, overlap))
    return (sorted({t.write[0].start for t in tiles if t.write[0].start > 0}),
            sorted({t.write[1].start for t in tiles if t.write[1].start > 0}))


def seam(focus: np.ndarray, rows: list[int], cols: list[int], band: int = TILE_OVERLAP) -> dict[str, float]:
    """|focus step| between neighbouring pixels: across tile boundaries, inside the cross-fade band
    after them, and elsewhere (more than a band away from any boundary)."""
    out: dict[str, list[np.ndarray]] = {"at": [], "band": [], "else": []}
    for axis, bounds in ((1, cols), (0, rows)):
        d = np.abs(np.diff(focus, axis=axis))
        d = d if axis == 1 else d.T  # d[:, j] = |f[j+1] - f[j]| along the axis
        near = np.zeros(d.shape[1], bool)
        for b in bounds:
            out["at"].append(d[:, b - 1])
            out["band"].append(d[:, b:b + band].ravel())
            near[max(0, b - 1 - band):b + band] = True
        out["else"].append(d[:, ~near].ravel())
    cat = {k: np.concatenate(v) if v else np.zeros(1) for k, v in out.items()}
    return {"seam mean": float(cat["at"].mean()), "seam max": float(cat["at"].max()),
            "band mean": float(cat["band"].mean()), "else mean": float(cat["else"].mean()),
            "else max": float(cat["else"].max())}


def local_contrast(img: np.ndarray, k: int = 7) -> np.ndarray:
    g = img.astype(np.float64)
    g = g.mean(-1) if g.ndim == 3 else g
    m, m2 = uniform_filter(g, k), uniform_filter(g * g, k)
    return np.sqrt(np.maximum(m2 - m * m, 0))


def kept_share(fused: np.ndarray, ref: np.ndarray, cols: slice) -> float:
    """Share of textured reference pixels in ``cols`` where ``fused`` keeps >= 80% of its contrast."""
    a, b = local_contrast(fused), local_contrast(ref)
    tex = b > np.median(b)
    ok = (a[:, cols] >= 0.8 * b[:, cols]) & tex[:, cols]
    return float(ok.sum() / max(tex[:, cols].sum(), 1))


def timed_fuse(data, **kw):
    estimates: list[str] = []

    def progress(done: int, total: int, message: str) -> None:
        if isinstance(message, EstimateMessage):
            estimates.append(str(message))

    t0 = time.perf_counter()
    res = fuse(data, "stackmff-v2", "cpu", progress=progress, **kw)
    return res, time.perf_counter() - t0, estimates


def table(title: str, rows: dict[str, dict[str, str]]) -> None:
    cols = list(next(iter(rows.values())))
    print(f"\n{title}\n| measure | {' | '.join(cols)} |\n|---|{'---|' * len(cols)}")
    for name, vals in rows.items():
        print(f"| {name} | {' | '.join(vals[c] for c in cols)} |")


# ------------------------------------------------------------------------------- sections
def synthetic() -> None:
    side, rows = 256, {}
    acc: dict[str, list] = {v: [] for v in VARIANTS}
    for seed in (1, 2, 3):
        s = random_stack(np.random.default_rng(seed), size=512, n=8)
        data = np.ascontiguousarray(s.slices)
        whole = fuse(data, "stackmff-v2", "cpu")
        by, bx = boundaries(512, 512, side, TILE_OVERLAP)
        for v, kw in VARIANTS.items():
            r = fuse(data, "stackmff-v2", "cpu", tile=side, **kw)
            sm = seam(r.focus_map, by, bx)
            acc[v].append([sm["seam mean"], sm["band mean"], sm["else mean"],
                           np.abs(r.focus_map - whole.focus_map).mean(), np.abs(r.focus_map - s.focus_index).mean(),
                           np.abs(whole.focus_map - s.focus_index).mean()])
    names = ["step at tile boundary (mean)", "step in the 32-px band after it", "step elsewhere",
             "|tiled - untiled| mean", "focus MAE vs truth (tiled)", "focus MAE vs truth (untiled)"]
    for i, n in enumerate(names):
        rows[n] = {v: f"{np.mean(acc[v], 0)[i]:.3f}" for v in VARIANTS}
    table("Synthetic, 3 stacks 512 px, N = 8, tile 256 (slices)", rows)


def pcb(out: Path, untiled: bool) -> None:
    paths = sorted((DATA / "pcb_stack").glob("pcb_00*.jpg"))
    if not paths:
        print("pcb_stack not found: skipped")
        return
    plan = prepare(paths, "stackmff-v2", "cpu")
    h, w = plan.stack.yx_shape
    side, overlap = plan_tile(plan.stack, plan.make_engine(0), plan.device)
    by, bx = boundaries(h, w, side, overlap)
    print(f"\npcb_stack: {len(paths)} x {h} x {w}, tile {side} (overlap {overlap}), boundaries rows {by} cols {bx}",
          flush=True)
    res = {}
    for v, kw in VARIANTS.items():
        r, wall, est = timed_fuse(paths, tile=side, **kw)
        res[v] = (r, wall, est)
        print(f"  {v}: {wall:.0f} s, estimate {est}, load {os.getloadavg()[0]:.1f}", flush=True)
    ref = None
    if untiled:
        ref, wall, _ = timed_fuse(paths, tile=max(h, w))
        print(f"  untiled: {wall:.0f} s", flush=True)
    rows: dict[str, dict[str, str]] = {}
    for v, (r, wall, est) in res.items():
        sm = seam(r.focus_map, by, bx, overlap)
        for k, val in sm.items():
            rows.setdefault(f"focus step: {k}", {})[v] = f"{val:.3f}"
        if ref is not None:
            d = np.abs(r.focus_map - ref.focus_map)
            rows.setdefault("|tiled - untiled| mean / max", {})[v] = f"{d.mean():.3f} / {d.max():.2f}"
            rows.setdefault("same slice as untiled", {})[v] = f"{100 * (r.index == ref.index).mean():.1f}%"
        rows.setdefault("wall s", {})[v] = f"{wall:.0f}"
        e = r.timings.get("estimate_s")
        rows.setdefault("estimate s (after tile 1)", {})[v] = "—" if e is None else f"{e:.0f} ({100 * e / wall:.0f}% of wall)"
        write_png(out / f"pcb_focus_{v}.png", colorize(r.focus_map, 0, r.n_slices - 1))
        cy, cx = (by[0] if by else h // 2), (bx[0] if bx else w // 2)
        win = (slice(max(0, cy - 256), cy + 256), slice(max(0, cx - 256), cx + 256))
        write_png(out / f"pcb_corner_focus_{v}.png", colorize(r.focus_map[win], 0, r.n_slices - 1))
        write_png(out / f"pcb_corner_fused_{v}.png", to_uint8_preview(r.all_in_focus[win]))
        if ref is not None:
            write_png(out / f"pcb_diff_untiled_{v}.png", colorize(np.abs(r.focus_map - ref.focus_map), 0, 2))
    if ref is not None:
        write_png(out / "pcb_focus_untiled.png", colorize(ref.focus_map, 0, ref.n_slices - 1))
    table(f"pcb_stack, tile {side}: before = hard centre crop, after = cross-faded tiles (focus in slices)", rows)


def nuclei(out: Path) -> None:
    path = DATA / "cells3d_nuclei" / "nuclei.tif"
    if not path.exists():
        print("cells3d_nuclei not found: skipped")
        return
    import tifffile

    data = tifffile.imread(path)
    ref = fuse(data, "wavelet", "cpu").all_in_focus
    rows: dict[str, dict[str, str]] = {}
    for pad in (0, 16, 32):
        r = fuse(data, "stackmff-v2", "cpu", border_pad=pad)
        col = f"border_pad {pad}" + (" (default)" if pad == 0 else "")
        rows.setdefault("left 20 px: contrast kept", {})[col] = f"{kept_share(r.all_in_focus, ref, slice(0, 20)):.3f}"
        rows.setdefault("inside (40 px in): contrast kept", {})[col] = f"{kept_share(r.all_in_focus, ref, slice(40, -40)):.3f}"
        rows.setdefault("left 20 px: mean focus (slice)", {})[col] = f"{r.focus_map[:, :20].mean():.1f}"
        rows.setdefault("inside: mean focus (slice)", {})[col] = f"{r.focus_map[:, 40:-40].mean():.1f}"
        write_png(out / f"nuclei_fused_pad{pad}.png", to_uint8_preview(r.all_in_focus))
    write_png(out / "nuclei_fused_wavelet.png", to_uint8_preview(ref))
    table("cells3d_nuclei (60 x 256 x 256), one tile: the image border", rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/v2tiles"), help="folder for the PNGs")
    p.add_argument("--no-untiled", action="store_true", help="skip the untiled pcb run (~9 GB of memory)")
    p.add_argument("--skip-pcb", action="store_true", help="skip pcb_stack (minutes per run on a CPU)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    synthetic()
    nuclei(args.out)
    if not args.skip_pcb:
        pcb(args.out, untiled=not args.no_untiled)
    print(f"\nPNGs in {args.out}")


if __name__ == "__main__":
    main()
