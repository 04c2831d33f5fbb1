"""Slice alignment on the real stacks of ../shared/data: what it estimates and what it changes.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_align_real.py [--max-side 768] [--out DIR]

For every stack of bench_real.py (lytro pairs excepted: registered already), downscaled as there: the
similarity alignment's breathing (scale of the first and last slice against the middle one), largest
shift, whether it was trusted, seconds; and wavelet fusion without and with it, scored with the
no-reference scores of bench_real.py. Fused images are written side by side (unaligned | aligned) to
``--out`` for a person to look at: ghosts and doubled edges are what alignment should remove.
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

from bench_real import downscale, real_sets, score  # noqa: E402

from napari_stackmff.core import fuse, load_stack  # noqa: E402
from napari_stackmff.core.align import align_stack  # noqa: E402
from napari_stackmff.core.io import write_png  # noqa: E402
from napari_stackmff.core.preview import stack_display_range, to_uint8_preview  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-side", type=int, default=768)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "align_real")
    args = p.parse_args()
    print(f"similarity alignment, wavelet fusion; max side {args.max_side}\n")
    print("| stack | scale first / last | max shift px | trusted | align s | Q4 before / after | "
          "sharp before / after |\n|---|---|---|---|---|---|---|")
    for rs in real_sets():
        if rs.name == "lytro_pairs":
            continue
        item = rs.items[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = load_stack(item, lazy=False) if isinstance(item, Path) else load_stack(item)
        stack, _ = downscale(full, args.max_side)
        sources = np.asarray(stack.data)
        plain = fuse(stack, method="wavelet")
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            moved, records = align_stack(stack, "similarity")
        dt = time.perf_counter() - t0
        aligned = fuse(moved, method="wavelet")
        rec = records[0]
        # Each fused image is scored against the slices it was made from (aligned ones for the aligned).
        a, b = score(plain.all_in_focus, sources), score(aligned.all_in_focus, np.asarray(moved.data))
        if rec["aligned"]:
            scales = f"{rec['scale'][0]:.4f} / {rec['scale'][-1]:.4f}"
            shift = f"{max(np.hypot(*xy) for xy in rec['shift_px']):.1f}"
        else:
            scales, shift = "—", "—"
        print(f"| {rs.name} ({stack.n_slices}) | {scales} | {shift} | {'yes' if rec['aligned'] else 'no'} | "
              f"{dt:.1f} | {a['Q4']:.4f} / {b['Q4']:.4f} | {a['sharp']:.4f} / {b['sharp']:.4f} |", flush=True)
        drange = stack_display_range(stack)
        pair = np.concatenate([to_uint8_preview(plain.all_in_focus, drange),
                               to_uint8_preview(aligned.all_in_focus, drange)], axis=1)
        write_png(args.out / f"{rs.name}_unaligned_aligned.png", pair)


if __name__ == "__main__":
    main()
