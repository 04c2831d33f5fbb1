"""The classical decisions side by side on the real stacks at full size: seconds, and what the vote decided.

Run:  OMP_NUM_THREADS=2 python benchmarks/bench_decisions.py [--repeat 3] [--png DIR]

For every stack of bench_real.py (lytro pairs excepted), at full size, aligned as ``stackmff fuse`` does by
default (``align="auto"``, once, outside the timing), wavelet fusion with each decision of
core/tiles/decision.py: ``legacy`` (the plain argmax clean-up), ``glow`` (the vote where a defocused neighbour's
glow lights the winner; what ``auto`` takes off a bright field), ``halo`` (the vote everywhere) and ``auto``;
best of ``--repeat`` interleaved runs (a shared VM's timings vary by 20-50%), and the slice changes between
4-neighbours per 1000 pixels (rings and speckle raise it; so does real depth detail).
``--png``: pcb_depthmap's glyph crops (the "6" and "SW1" of issue 26) per decision, side by side, for a person
to look at.
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

from bench_real import first_stacks  # noqa: E402

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.fusion.align import align_stack  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402

DECISIONS = ("legacy", "glow", "halo", "auto")
#: pcb_depthmap's glyphs at full size, on the aligned crop (rows, cols): the "6" and "SW1" of issue 26.
GLYPHS = ((slice(20, 320), slice(20, 320)), (slice(40, 340), slice(800, 1100)))


def steps_per_1000(index: np.ndarray) -> float:
    return 1000.0 * float((np.diff(index, axis=0) != 0).sum() + (np.diff(index, axis=1) != 0).sum()) / index.size


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--png", type=Path, default=None, help="write pcb_depthmap's glyph crops per decision here")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="only this stack (repeatable)")
    args = p.parse_args()
    fuse(np.random.default_rng(0).random((3, 64, 64), np.float32), method="wavelet")  # imports, thread pools
    print("| stack | auto takes | " + " | ".join(f"{d} s" for d in DECISIONS)
          + " | glow / legacy time | slice changes per 1000 px: legacy / glow / halo |")
    print("|---|---|" + "---|" * len(DECISIONS) + "---|---|")
    for rs, stack in first_stacks(args.only):
        if rs.events is None:  # event frames are not warped: the event stack is fused as it is
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                stack, _ = align_stack(stack, "auto", source=rs.name)
        best = {d: float("inf") for d in DECISIONS}
        res = {}
        for _ in range(max(1, args.repeat)):
            for d in DECISIONS:
                t0 = time.perf_counter()
                res[d] = fuse(stack, method="wavelet", align=None, decision=d)
                best[d] = min(best[d], time.perf_counter() - t0)
        steps = {d: steps_per_1000(res[d].index) for d in ("legacy", "glow", "halo")}
        print(f"| {rs.name} ({stack.n_slices}x{stack.yx_shape[0]}x{stack.yx_shape[1]}) | {res['auto'].decision} | "
              + " | ".join(f"{best[d]:.2f}" for d in DECISIONS)
              + f" | {best['glow'] / best['legacy']:.2f}x | "
              f"{steps['legacy']:.1f} / {steps['glow']:.1f} / {steps['halo']:.1f} |", flush=True)
        if args.png is not None and rs.name == "pcb_depthmap":
            rows = [np.concatenate([res[d].all_in_focus[g] for d in ("legacy", "glow", "halo")], 1) for g in GLYPHS]
            w = min(r.shape[1] for r in rows)
            write_png(args.png / "pcb_depthmap_glyphs_legacy_glow_halo.png", np.concatenate([r[:, :w] for r in rows], 0))


if __name__ == "__main__":
    main()
