"""align="auto" (issue 24, item 2): the motion probe, and what alignment costs against the fusion.

Run:  python benchmarks/bench_align_auto.py [--before REV] [--only beetle,diamond_ring] [--out DIR]
                                            [--skip-registration] [--skip-synthetic] [--skip-real]

Part 0, registration before and after on bench_align.py's synthetic stacks (known transforms): the error,
the seconds, and the PSNR of the aligned fusion (the figures of bench_align.py, old and new in one run).

Part 1, the probe's calibration (core/align.py: AUTO_MOVE_PX, PROBE_MIN_MATCH). What it reads on synthetic
stacks that do not move (4 scenes, 8 slices, noisy 8-bit, rendered at 256 and 512 px, and the 512-px ones
enlarged x2 and x4: one grid for every slice, so nothing moves), on the same stacks drifting and breathing
smoothly (every slice shifted and zoomed a little more than the one before; amplitudes around the
threshold), and on bench_align.py's stacks moved by random similarities; against the true largest
corner displacement.

Part 2, the real stacks of ../shared/data (bench_real.real_sets, at full resolution, as `stackmff fuse`
reads them; lytro's first pair stands for registered input). Per stack: the probe's seconds, reading
(largest corner displacement against the middle slice) and decision; wavelet fusion without alignment (s);
similarity alignment (estimation and warping, s) with core/align.py as it was at ``--before`` (loaded from
git, default the commit before issue 24's alignment work) and as it is now; and the fused quality: Q4 of
bench_real.py on the region every aligned slice covers (each fused image against the slices it was
fused from). Fused images (unaligned | before | after, on their common region) go to ``--out`` to be
looked at for ghosts and doubled edges. Times are wall-clock on whatever else the machine runs: compare
the columns of one row, not rows of different runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_align import moved_stack  # noqa: E402
from bench_real import real_sets, score  # noqa: E402

from napari_stackmff.core import fuse, load_stack  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402
from napari_stackmff.core.fusion import align as after  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402
from napari_stackmff.core.io.preview import stack_display_range, to_uint8_preview  # noqa: E402
from napari_stackmff.core.io.stack import FocalStack  # noqa: E402

#: The commit before this work (issue 24, item 2): align.py as it was.
BEFORE = "b020ae6"


def old_align(rev: str):
    """core/align.py at ``rev``, imported as a module of the package (its relative imports resolve)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:src/napari_stackmff/core/align.py"],
                         check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("napari_stackmff.core._align_before", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "napari_stackmff.core"
    sys.modules[spec.name] = mod  # dataclasses look their module up
    exec(compile(src, f"align.py@{rev}", "exec"), mod.__dict__)
    return mod


def corner_move(mats: list[np.ndarray], shape: tuple[int, int], ref: int) -> float:
    """Largest displacement (px) of an image corner of any slice against slice ``ref``."""
    h, w = shape
    c = np.array([[0, w - 1, 0, w - 1], [0, 0, h - 1, h - 1], [1, 1, 1, 1]], float)
    back = np.linalg.inv(mats[ref])
    out = 0.0
    for m in mats:
        q = m @ back @ c
        out = max(out, float(np.max(np.hypot(q[0] / q[2] - c[0], q[1] / q[2] - c[1]))))
    return out


def drifting(slices: np.ndarray, amplitude: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """``slices`` (N, H, W) moved smoothly: slice z shifted by (z - mid) * (0.6, 0.4) * a px and zoomed by
    (z - mid) * 0.1 * a % about the centre, a chosen so the outermost corner moves ``amplitude`` px."""
    n, h, w = slices.shape
    mid, c = n // 2, ((w - 1) / 2, (h - 1) / 2)

    def mats(a: float) -> list[np.ndarray]:
        return [after.similarity_matrix(1 + 0.001 * a * (z - mid), 0.0, np.array([0.4, 0.6]) * a * (z - mid), c)
                for z in range(n)]

    a = amplitude / max(corner_move(mats(1.0), (h, w), mid), 1e-9)
    true = mats(a)
    # warp_slice samples its input at matrix @ p: a slice whose content sits at T(p) is the original at T^-1.
    return np.stack([after.warp_slice(s, np.linalg.inv(m)) for s, m in zip(slices, true)]), true


def part0(before_rev: str, stacks: int) -> None:
    """Registration before and after on bench_align.py's synthetic stacks (known transforms): error over a
    grid of points, seconds of estimation, and PSNR of the aligned wavelet fusion against the truth."""
    from bench_align import in_reference_frame

    from napari_stackmff.core.fusion.metrics import psnr

    before = old_align(before_rev)
    print(f"## Similarity registration, before (core/align.py at {before_rev}) and after, synthetic\n")
    print("| stacks | error px before / after | estimate s before / after | align s before / after | "
          "PSNR dB before / after |\n|---|---|---|---|---|")
    for size, n in ((256, stacks), (768, 2)):
        yy, xx = np.mgrid[24:size - 24:16, 24:size - 24:16]
        g = np.stack([xx.ravel(), yy.ravel(), np.ones(xx.size)])
        inner = (slice(24, -24), slice(24, -24))
        rows = {k: {"err": [], "est": [], "align": [], "psnr": []} for k in ("before", "after")}
        for k in range(n):
            s, moved, mats = moved_stack(100 + k, size, ("cells", "natural", "text", "fibres")[k % 4])
            for name, mod in (("before", before), ("after", after)):
                t0 = time.perf_counter()
                al = mod.estimate(moved.astype(np.float32) / 255, "similarity")
                rows[name]["est"].append(time.perf_counter() - t0)
                rows[name]["err"].append(float(np.mean([np.linalg.norm((e @ g - m @ g)[:2], axis=0).mean()
                                                        for e, m in zip(al.matrices, mats)])))
                t0 = time.perf_counter()
                st, recs = mod.align_stack(FocalStack(moved), "similarity")
                rows[name]["align"].append(time.perf_counter() - t0)
                r = fuse(st, method="wavelet")
                r.alignment = recs
                rows[name]["psnr"].append(psnr(in_reference_frame(r, s.aif.shape)[inner], s.aif[inner]))
        b, a = rows["before"], rows["after"]
        print(f"| {n} x {size}² | {np.mean(b['err']):.3f} / {np.mean(a['err']):.3f} | {np.mean(b['est']):.2f} / "
              f"{np.mean(a['est']):.2f} | {np.mean(b['align']):.2f} / {np.mean(a['align']):.2f} | "
              f"{np.mean(b['psnr']):.2f} / {np.mean(a['psnr']):.2f} |", flush=True)
    print()


def part1() -> None:
    from scipy import ndimage as ndi

    print("## Probe on synthetic stacks (8 slices, 8-bit, noisy)\n")
    print("| stack | size | true largest corner move px | probe reads px | moves | probe s |\n"
          "|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for scene in ("cells", "natural", "text", "fibres"):
        for size in (256, 512):
            s = synth.random_stack(rng, size=size, n=8, rgb=False, scene=scene, noise=True, dtype="uint8")
            sets = [(size, s.slices)]
            if size == 512:
                sets += [(size * k, np.stack([ndi.zoom(sl, k, order=1) for sl in s.slices])) for k in (2, 4)]
            for side, sl in sets:
                r = after.probe_stack(FocalStack(sl))
                print(f"| {scene}, static | {side} | 0 | {r['max_px']:.2f} | {r['moves']} | {r['seconds']:.2f} |",
                      flush=True)
            if size == 256:
                for amp in (0.5, 1.0, 2.0, 4.0):
                    moved, mats = drifting(s.slices, amp)
                    r = after.probe_stack(FocalStack(moved))
                    print(f"| {scene}, drift+zoom | {size} | {amp:.1f} | {r['max_px']:.2f} | {r['moves']} | "
                          f"{r['seconds']:.2f} |", flush=True)
    for k in range(4):
        _, moved, mats = moved_stack(100 + k, 256, ("cells", "natural", "text", "fibres")[k])
        r = after.probe_stack(FocalStack(moved))
        print(f"| bench_align #{k} (random similarity) | 256 | {corner_move(mats, moved.shape[1:], 4):.1f} | "
              f"{r['max_px']:.2f} | {r['moves']} | {r['seconds']:.2f} |", flush=True)
    print()


def common(recs: list[dict | None], shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """The region (y0, y1, x0, x1) inside every given alignment's crop."""
    y0, y1, x0, x1 = 0, shape[0], 0, shape[1]
    for r in recs:
        if r and "crop" in r:
            y0, y1 = max(y0, r["crop"]["y"][0]), min(y1, r["crop"]["y"][1])
            x0, x1 = max(x0, r["crop"]["x"][0]), min(x1, r["crop"]["x"][1])
    return y0, y1, x0, x1


def sub(img: np.ndarray, rec: dict | None, box: tuple[int, int, int, int]) -> np.ndarray:
    """``img`` (on its alignment's crop, or the full grid) cut to ``box`` of the full grid."""
    oy, ox = (rec["crop"]["y"][0], rec["crop"]["x"][0]) if rec and "crop" in rec else (0, 0)
    return img[box[0] - oy:box[1] - oy, box[2] - ox:box[3] - ox]


def part2(before_rev: str, only: set[str] | None, out: Path) -> None:
    before = old_align(before_rev)
    print(f"## Real stacks, full resolution, wavelet; alignment before = core/align.py at {before_rev}\n")
    print("| stack | slices, size | probe s | probe reads px (scale) | decision | fuse s (unaligned) | "
          "align s before | align s after | after / fuse | Q4 unaligned / before / after |\n"
          "|---|---|---|---|---|---|---|---|---|---|")
    items = [(rs.name, rs.items[0]) for rs in real_sets() if rs.name != "lytro_pairs"]
    items += [("lytro_pair_01", rs.items[0]) for rs in real_sets() if rs.name == "lytro_pairs"]
    for name, item in items:
        if only and name not in only:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            stack = load_stack(item, lazy=False)
            stack = FocalStack(np.asarray(stack.data), axes=stack.axes, z_positions=stack.z_positions,
                               unit=stack.unit, rgb=stack.rgb, source=stack.source)
            pr = after.probe_stack(stack)
            t0 = time.perf_counter()
            plain = fuse(stack, method="wavelet")
            t_fuse = time.perf_counter() - t0
            t0 = time.perf_counter()
            moved_b, recs_b = before.align_stack(stack, "similarity")
            t_b = time.perf_counter() - t0
            t0 = time.perf_counter()
            moved_a, recs_a = after.align_stack(stack, "similarity")
            t_a = time.perf_counter() - t0
            rb, ra = recs_b[0], recs_a[0]
            fb = fuse(moved_b, method="wavelet") if rb["aligned"] else None
            fa = fuse(moved_a, method="wavelet") if ra["aligned"] else None
        box = common([rb if rb["aligned"] else None, ra if ra["aligned"] else None], stack.yx_shape)
        src = np.asarray(stack.data)
        q = [score(sub(plain.all_in_focus, None, box), src[:, box[0]:box[1], box[2]:box[3]])]
        shown = [sub(plain.all_in_focus, None, box)]
        for f, moved, rec in ((fb, moved_b, rb), (fa, moved_a, ra)):
            if f is None:
                q.append(None)
                shown.append(shown[0])
                continue
            cut = sub(f.all_in_focus, rec, box)
            aligned_src = np.asarray(moved.data)
            q.append(score(cut, np.stack([sub(a, rec, box) for a in aligned_src])))
            shown.append(cut)
        qs = " / ".join("not aligned" if v is None else f"{v['Q4']:.4f}" for v in q)
        decision = "align" if pr["moves"] else "leave"
        if pr["unmeasured"]:
            decision += f" ({len(pr['unmeasured'])} of {len(pr['slices']) - 1} pairs unlike)"
        h, w = stack.yx_shape
        trusted = "" if ra["aligned"] else " (after: distrusted)"
        trusted += "" if rb["aligned"] else " (before: distrusted)"
        print(f"| {name} | {stack.n_slices} x {w}x{h} | {pr['seconds']:.2f} | {pr['max_px']:.1f} ({pr['scale']:.4f}) | "
              f"{decision} | {t_fuse:.2f} | {t_b:.1f} | {t_a:.2f} | {t_a / t_fuse:.2f}x | {qs}{trusted} |", flush=True)
        drange = stack_display_range(stack)
        write_png(out / f"{name}_unaligned_before_after.png",
                  np.concatenate([to_uint8_preview(s, drange) for s in shown], axis=1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=BEFORE, help="git revision whose core/align.py is 'before'")
    p.add_argument("--only", default=None, help="comma-separated real stacks (bench_real names)")
    p.add_argument("--skip-registration", action="store_true")
    p.add_argument("--registration-stacks", type=int, default=8)
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--skip-real", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "align_auto")
    args = p.parse_args()
    if not args.skip_registration:
        part0(args.before, args.registration_stacks)
    if not args.skip_synthetic:
        part1()
    if not args.skip_real:
        part2(args.before, set(args.only.split(",")) if args.only else None, args.out)


if __name__ == "__main__":
    main()
