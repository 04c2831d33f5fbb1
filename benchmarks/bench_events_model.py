"""EventStackMFF against StackMFF-V2 on the images alone and classical fusion (issue 14).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_events_model.py [--stacks 16] [--size 128] [--weights PATH]

Held-out synthetic image + event stacks (seeds 88000+, never used in training or validation), rendered as
for training (core/train.py:render_event_item): N 6-12, blur up to 24 px, noise, and the events of the sweep
(ESIM-style, 4 sub-steps between slices). Two groups: all stacks, and the weakly textured ones (scene
contrast 5-30 %, about a third) where image focus cues fade. Scores against the all-in-focus truth on the
stack's own [0, 1] scale: PSNR, SSIM, focus MAE (slices) and the share within one slice, on textured pixels.
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

from napari_stackmff.core import fuse, synth  # noqa: E402
from napari_stackmff.core.metrics import focus_error, psnr, ssim  # noqa: E402
from napari_stackmff.core.train import render_event_item  # noqa: E402

CLASSICAL = ("variance", "laplacian", "tenengrad", "wavelet")


def held_out(count: int, size: int) -> list[tuple]:
    out = []
    for i in range(count):
        n = int(np.random.default_rng(88000 + i).integers(6, 13))
        img, ev, depth, f, aif = render_event_item([88000, i], size, n, noise=True)
        truth = np.interp(depth, f, np.arange(n, dtype=np.float32)).astype(np.float32)
        weak = float(np.percentile(aif, 99) - np.percentile(aif, 1)) < 0.35
        out.append((img, ev, truth, aif, weak))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--weights", default=None, help="EventStackMFF checkpoint (default: the shipped one)")
    args = ap.parse_args()
    methods = {"eventstackmff": {"method": "eventstackmff", **({"weights": args.weights} if args.weights else {})},
               "stackmff-v2 (images only)": {"method": "stackmff-v2"}, **{m: {"method": m} for m in CLASSICAL}}
    stacks = held_out(args.stacks, args.size)
    rows: dict[str, list[tuple]] = {}
    for img, ev, truth, aif, weak in stacks:
        mask = synth.texture_mask(aif, quantile=0.4)
        for label, kw in methods.items():
            extra = {"events": ev} if label == "eventstackmff" else {}
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                r = fuse(img, device="cpu", **kw, **extra)
            dt = time.perf_counter() - t0
            fe = focus_error(r.focus_map, truth, mask)
            rows.setdefault(label, []).append((psnr(r.all_in_focus, aif), ssim(r.all_in_focus, aif), fe["mae"],
                                               fe["within1"], dt, weak))
    n_weak = sum(s[4] for s in stacks)
    print(f"\nHeld-out image + event stacks: {len(stacks)} ({n_weak} weakly textured), {args.size} px, N 6-12\n")
    print("| group | method | PSNR dB | SSIM | focus MAE | within ±1 | s/stack |\n|---|---|---|---|---|---|---|")
    for group, pick in (("all", lambda r: True), ("weak texture", lambda r: r[5])):
        classical = {m: np.mean([r[0] for r in rows[m] if pick(r)]) for m in CLASSICAL}
        best = max(classical, key=classical.get)
        for label, vals in rows.items():
            if label in CLASSICAL and label != best:
                continue
            sel = [r for r in vals if pick(r)]
            if not sel:
                continue
            a = np.asarray([r[:5] for r in sel], float).mean(0)
            name = f"{label} (best classical)" if label == best else label
            print(f"| {group} | {name} | {a[0]:.2f} | {a[1]:.4f} | {a[2]:.3f} | {a[3]:.3f} | {a[4]:.2f} |")


if __name__ == "__main__":
    main()
