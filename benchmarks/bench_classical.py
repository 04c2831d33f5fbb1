"""Classical focus measures: quality on synthetic stacks with known truth, speed and memory on a real stack.

Run:  python benchmarks/bench_classical.py [--stacks 24] [--repeat 3] [--real ../shared/data/keyboard_sweep]

Quality: >= 20 stacks rendered with a fixed seed (N 5-30, 8-bit RGB and 16-bit gray, sensor noise);
PSNR/SSIM of the all-in-focus image against the noise-free truth and focus error on textured pixels.
Speed: megavoxels/s (Z*Y*X per second, input already in memory) and peak memory beyond the input, each
method in its own process, side by side with a plain numpy/scipy local-variance argmax (the
clEsperanto-style algorithm) written here as the baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core import fuse, load_stack  # noqa: E402
from napari_stackmff.core.fusion.metrics import focus_error, psnr, ssim  # noqa: E402
from napari_stackmff.core.training.synth import random_stack, texture_mask  # noqa: E402

METHODS = ("variance", "laplacian", "tenengrad", "wavelet")
SHARED = ROOT.parent / "shared" / "data"


def baseline_variance_argmax(stack: np.ndarray, window: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy/scipy: per slice local variance (uniform filter), running argmax, gather."""
    from scipy.ndimage import uniform_filter

    best = idx = None
    for z, sl in enumerate(stack):
        g = sl.astype(np.float32)
        if g.ndim == 3:
            g = g @ np.array([0.299, 0.587, 0.114], np.float32)
        m = uniform_filter(g, window)
        v = uniform_filter(g * g, window) - m * m
        if best is None:
            best, idx = v, np.zeros(v.shape, np.intp)
        else:
            better = v > best
            best = np.where(better, v, best)
            idx[better] = z
    sel = idx[None, ..., None] if stack.ndim == 4 else idx[None]
    return np.take_along_axis(stack, sel, 0)[0], idx


def quality(n_stacks: int, seed: int = 1234, decisions: tuple[str, ...] = ("legacy",),
            methods: tuple[str, ...] = METHODS, blends: tuple[str, ...] = ("hard",)) -> None:
    """``decisions``: "legacy" (the default: best/mean confidence, one fill scale) and/or "halo"
    (core/tiles/decision.py), each method under each, side by side on the same stacks (issue 26).
    ``blends``: any of fuse()'s blends, each a row per method and decision (the default: hard only)."""
    rng = np.random.default_rng(seed)
    def name(m: str, d: str, b: str) -> str:
        return (m if decisions == ("legacy",) else f"{m}/{d}") + ("" if b == "hard" else f" {b}")

    names = [name(m, d, b) for m in methods for d in decisions for b in blends]
    rows: dict[str, list] = {m: [] for m in ("baseline", *names)}
    for i in range(n_stacks):
        rgb = i % 2 == 0
        s = random_stack(rng, size=160, n=int(rng.integers(5, 31)), dtype="uint8" if rgb else "uint16", rgb=rgb,
                         noise=True, max_radius=(8.0, 24.0))
        mask = texture_mask(s.aif, quantile=0.5)
        aif, idx = baseline_variance_argmax(s.slices)
        rows["baseline"].append((psnr(aif, s.aif), ssim(aif, s.aif), *focus_error(idx, s.focus_index, mask).values()))
        for m in methods:
            for d in decisions:
                for b in blends:
                    r = fuse(s.slices, method=m, device="cpu", decision=d, blend=b)
                    rows[name(m, d, b)].append((psnr(r.all_in_focus, s.aif), ssim(r.all_in_focus, s.aif),
                                                *focus_error(r.focus_map, s.focus_index, mask).values()))
    print(f"\n## Quality on {n_stacks} synthetic stacks (seed {seed}; N 5-30; 8-bit RGB / 16-bit gray; noisy)")
    print(f"{'method':18s} {'PSNR dB':>8s} {'SSIM':>7s} {'focus MAE':>10s} {'within±1':>9s} {'within±0.5':>10s} {'ΔPSNR vs base':>14s}")
    base = np.mean([r[0] for r in rows["baseline"]])
    for m, vals in rows.items():
        a = np.mean(vals, axis=0)
        print(f"{m:18s} {a[0]:8.2f} {a[1]:7.4f} {a[2]:10.3f} {100 * a[3]:8.1f}% {100 * a[4]:9.1f}% {a[0] - base:+14.2f}")


def _one(method: str, path: str, repeat: int) -> dict:
    """Child process: load, then time one method; report time and peak RSS beyond the input."""
    import torch

    stack = load_stack(path)
    data = np.ascontiguousarray(stack.data)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        if method == "baseline":
            baseline_variance_argmax(data)
        else:
            fuse(data, method=method, device="cpu")
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"method": method, "seconds": min(times), "voxels": int(np.prod(stack.shape[:3])),
            "peak_mb": (peak - rss0) / 1024, "input_mb": data.nbytes / 2**20, "shape": list(data.shape),
            "threads": torch.get_num_threads()}


def speed(path: Path, repeat: int) -> None:
    results = []
    for m in ("baseline", *METHODS):
        out = subprocess.run([sys.executable, __file__, "--child", m, "--real", str(path), "--repeat", str(repeat)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    b = results[0]
    print(f"\n## CPU speed on {path.name} {tuple(b['shape'])}, input {b['input_mb']:.0f} MB in memory, "
          f"{os.cpu_count()} cores, torch threads {b['threads']} (best of {repeat})")
    print(f"{'method':12s} {'seconds':>8s} {'MVox/s':>8s} {'× baseline':>11s} {'peak MB beyond input':>21s}")
    for r in results:
        mv = r["voxels"] / r["seconds"] / 1e6
        print(f"{r['method']:12s} {r['seconds']:8.2f} {mv:8.1f} {mv / (b['voxels'] / b['seconds'] / 1e6):10.2f}× "
              f"{r['peak_mb']:20.0f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--stacks", type=int, default=24)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--real", type=Path, default=SHARED / "keyboard_sweep")
    p.add_argument("--child", default=None)
    p.add_argument("--decisions", default="legacy", help="comma list of legacy,halo (issue 26: side by side)")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--blends", default="hard", help="comma list of hard,exact,soft,two-scale")
    p.add_argument("--no-speed", action="store_true")
    args = p.parse_args()
    if args.child:
        print(json.dumps(_one(args.child, str(args.real), args.repeat)))
        return
    quality(args.stacks, decisions=tuple(args.decisions.split(",")), methods=tuple(args.methods.split(",")),
            blends=tuple(args.blends.split(",")))
    if args.no_speed:
        return
    if args.real.exists():
        speed(args.real, args.repeat)
    else:
        print(f"\n(speed skipped: {args.real} not found)")


if __name__ == "__main__":
    main()
