"""Slice alignment on the real stacks of ../shared/data: what it estimates and what it changes.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_align_real.py [--max-side 768] [--repeat 3] [--decision D] [--only NAME]

For every stack of bench_real.py (lytro pairs excepted: registered already), downscaled as there: the
similarity alignment's breathing (scale of the first and last slice against the middle one), largest
shift, whether it was trusted, seconds; the seconds of ``align="auto"`` (the command line's default: a probe,
then the alignment only when the slices move); and wavelet fusion without and with it, scored with the
no-reference scores of bench_real.py, on the crop every aligned slice covers (also for the unaligned
fusion), and aligned + soft blend. Fused images are written side by side (unaligned | aligned | aligned
soft) to ``--out`` for a person to look at: ghosts and doubled edges are what alignment should remove.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_real import downscale, first_stacks, score  # noqa: E402

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.fusion.align import align_stack  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402
from napari_stackmff.core.io.preview import stack_display_range, to_uint8_preview  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-side", type=int, default=768)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "align_real")
    p.add_argument("--repeat", type=int, default=3,
                   help="times per stack: fusion and alignments interleaved, best of each (a shared VM's timings "
                        "vary by 20-50%% from run to run)")
    p.add_argument("--decision", default=None, help="the classical decision of the fusion timed and scored "
                                                     "(default: auto, as stackmff fuse; legacy: the fastest)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="only this stack (repeatable)")
    args = p.parse_args()
    kw = {"decision": args.decision} if args.decision else {}
    print(f"similarity alignment, wavelet fusion; max side {args.max_side}; scores on the aligned crop for both\n")
    print("| stack | scale first / last | max shift px | trusted | kept | fuse s (unaligned) | align s | align / fuse | "
          "auto s | auto / fuse | Q4 before / after / +soft | sharp before / after |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    fuse(np.random.default_rng(0).random((3, 64, 64), np.float32), method="wavelet")  # imports, thread pools
    for rs, full in first_stacks(args.only):
        stack, _ = downscale(full, args.max_side)
        sources = np.asarray(stack.data)
        t_fuse = dt = dt_auto = float("inf")
        for _ in range(max(1, args.repeat)):
            t0 = time.perf_counter()
            plain = fuse(stack, method="wavelet", **kw)
            t_fuse = min(t_fuse, time.perf_counter() - t0)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                moved, records = align_stack(stack, "similarity")
            dt = min(dt, time.perf_counter() - t0)
            t0 = time.perf_counter()
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                _, auto = align_stack(stack, "auto")  # the default of `stackmff fuse`: a probe, then align if it moves
            dt_auto = min(dt_auto, time.perf_counter() - t0)
        aligned = fuse(moved, method="wavelet", **kw)
        soft = fuse(moved, method="wavelet", blend="soft", **kw)
        rec = records[0]
        crop = rec.get("crop")
        box = (slice(*crop["y"]), slice(*crop["x"])) if crop else (slice(None), slice(None))
        # Each fused image is scored against the slices it was made from (aligned ones for the aligned),
        # on the same region: the crop that every aligned slice covers.
        a = score(plain.all_in_focus[box], sources[(slice(None), *box)])
        b = score(aligned.all_in_focus, np.asarray(moved.data))
        c = score(soft.all_in_focus, np.asarray(moved.data))
        if rec["aligned"]:
            scales = f"{rec['scale'][0]:.4f} / {rec['scale'][-1]:.4f}"
            shift = f"{max(np.hypot(*xy) for xy in rec['shift_px']):.1f}"
        else:
            scales, shift = "—", "—"
        kept = f"{crop['share']:.0%}" if crop else "—"
        print(f"| {rs.name} ({stack.n_slices}) | {scales} | {shift} | {'yes' if rec['aligned'] else 'no'} | {kept} | "
              f"{t_fuse:.2f} | {dt:.2f} | {dt / t_fuse:.2f}x | {dt_auto:.2f} ({'aligned' if auto[0]['aligned'] else 'probe only'}) | "
              f"{dt_auto / t_fuse:.2f}x | {a['Q4']:.4f} / {b['Q4']:.4f} / {c['Q4']:.4f} | {a['sharp']:.4f} / {b['sharp']:.4f} |",
              flush=True)
        drange = stack_display_range(stack)
        left = to_uint8_preview(plain.all_in_focus[box], drange)
        pair = np.concatenate([left, to_uint8_preview(aligned.all_in_focus, drange),
                               to_uint8_preview(soft.all_in_focus, drange)], axis=1)
        write_png(args.out / f"{rs.name}_unaligned_aligned_soft.png", pair)


if __name__ == "__main__":
    main()
