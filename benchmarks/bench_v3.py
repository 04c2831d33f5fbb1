"""StackMFF-V3 against V2 and classical fusion on tidy and untidy stacks (issue 13).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_v3.py [--stacks 12] [--size 128] [--v3-weights [NAME=]PATH ...]
                                                      [--real] [--max-side 1024]

Held-out synthetic stacks (seeds 77000+, never used in training; the training pool and validation use
other seeds), N = 6-12, 8/16-bit, gray, noisy, all depth kinds, rendered by core/synth.py. Four conditions:
  ordered          as rendered
  shuffled         the slices in a random order (the truth follows)
  shuffled+invalid shuffled, with 1-3 invalid slices inserted (blank, saturated, duplicated, another
                   scene, heavy noise, shifted; core/synth.py:disorder)
  pairs            N = 2 (the first and last slice of a 2-slice render)
Rows: V3 (our weights, then each --v3-weights, side by side), V2 (shipped weights), every classical measure, and the oracle
(per pixel, the slice closest to the truth: the bound of any selection method). Scores: PSNR and SSIM of
the fused image against the all-in-focus truth; focus accuracy = share of textured pixels whose chosen
slice is the true in-focus one (for pairs and shuffled stacks: exactly; ordered: within one slice).

``--real``: seconds per stack and peak resident memory (a fresh process per run, scoring excluded from
the seconds, included in the memory) of V3, V2 and wavelet on ../shared/data/pcb_stack and keyboard_sweep,
downscaled to --max-side, with the no-reference Q4 and sharpness of bench_real.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402
from napari_stackmff.core.fusion.metrics import psnr, ssim  # noqa: E402

CLASSICAL = ("variance", "laplacian", "tenengrad", "wavelet")
CONDITIONS = ("ordered", "shuffled", "shuffled+invalid", "pairs")


def held_out(count: int, size: int) -> list:
    out = []
    for i in range(count):
        rng = np.random.default_rng(77000 + i)
        out.append(synth.random_stack(rng, size=size, n=int(rng.integers(6, 13)), rgb=False, noise=True,
                                      max_radius=(6.0, 16.0)))
    return out


def pair_stacks(count: int, size: int) -> list:
    out = []
    for i in range(count):
        rng = np.random.default_rng(78000 + i)
        out.append(synth.random_stack(rng, size=size, n=2, rgb=False, noise=True, depth="objects",
                                      max_radius=(4.0, 10.0)))
    return out


def condition(s, name: str, rng: np.random.Generator):
    """(slices, true index per pixel, exact) for one condition of a rendered stack."""
    label = np.rint(s.focus_index).astype(int).clip(0, len(s.slices) - 1)
    if name in ("ordered", "pairs"):
        return s.slices, s.focus_index, name == "pairs"
    other = synth.random_stack(rng, size=s.slices.shape[1], n=4, rgb=False, noise=True,
                               dtype=str(s.slices.dtype)).slices
    bad = int(rng.integers(1, 4)) if name == "shuffled+invalid" else 0
    slices, lab, _ = synth.disorder(s.slices, label, rng, shuffle=True, n_invalid=bad, other=other)
    return slices, lab.astype(np.float32), True


def oracle(slices: np.ndarray, aif: np.ndarray) -> np.ndarray:
    err = np.abs(slices.astype(np.float64) - aif.astype(np.float64)[None])
    return np.take_along_axis(slices, err.argmin(0)[None], 0)[0]


def score(fused: np.ndarray, focus: np.ndarray | None, s, truth: np.ndarray, exact: bool) -> tuple:
    mask = synth.texture_mask(s.aif)
    if focus is None:
        acc = float("nan")
    elif exact:
        acc = float((np.rint(focus) == np.rint(truth))[mask].mean())
    else:
        acc = float((np.abs(focus - truth) <= 1)[mask].mean())
    return psnr(fused, s.aif), ssim(fused, s.aif), acc


def v3_rows(items: list[str]) -> dict[str, dict]:
    """The V3 rows: the shipped weights, then each ``NAME=PATH`` (or PATH, named by its file)."""
    rows: dict[str, dict] = {"stackmff-v3": {"method": "stackmff-v3"}}
    for item in items:
        name, sep, path = item.partition("=")
        name, path = (name, path) if sep else (f"v3 {Path(item).name}", item)
        if not Path(path).exists():
            raise SystemExit(f"--v3-weights: no file {path}")
        rows[name] = {"method": "stackmff-v3", "weights": path}
    return rows


def run_synthetic(args) -> dict:
    methods = {**v3_rows(args.v3_weights), "stackmff-v2": {"method": "stackmff-v2"},
               **{m: {"method": m} for m in CLASSICAL}}
    stacks, pairs = held_out(args.stacks, args.size), pair_stacks(args.stacks, args.size)
    results: dict[str, dict[str, list]] = {}
    for cond in CONDITIONS:
        rng = np.random.default_rng(79000 + CONDITIONS.index(cond))
        for s in (pairs if cond == "pairs" else stacks):
            slices, truth, exact = condition(s, cond, rng)
            for label, kw in methods.items():
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = fuse(slices, device="cpu", **kw)
                dt = time.perf_counter() - t0
                results.setdefault(cond, {}).setdefault(label, []).append(
                    (*score(r.all_in_focus, r.focus_map, s, truth, exact), dt))
            results[cond].setdefault("oracle", []).append((*score(oracle(slices, s.aif), None, s, truth, exact), 0.0))
    print(f"\nHeld-out synthetic stacks: {args.stacks} per condition, {args.size} px, N 6-12 (pairs N = 2)\n")
    print("| condition | method | PSNR dB | SSIM | focus acc | s/stack |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for cond, rows in results.items():
        best_classical = max(CLASSICAL, key=lambda m: np.mean([v[0] for v in rows[m]]))
        for label, vals in rows.items():
            if label in CLASSICAL and label != best_classical:
                continue
            a = np.asarray(vals, float).mean(0)
            name = f"{label} (best classical)" if label == best_classical else label
            acc = "—" if np.isnan(a[2]) else f"{a[2]:.3f}"
            print(f"| {cond} | {name} | {a[0]:.2f} | {a[1]:.4f} | {acc} | {a[3]:.2f} |")
            summary.setdefault(cond, {})[label] = a.tolist()
    return summary


PROBE = """
import json, resource, sys, time, warnings
sys.path.insert(0, {src!r}); sys.path.insert(0, {bench!r})
from bench_real import downscale
from napari_stackmff.core import fuse, load_stack
files = {files!r}
stack, _ = downscale(load_stack(files), {side})
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    r = fuse(stack, device="cpu", **{kw!r})
dt = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
from bench_real import score
import numpy as np
sc = score(r.all_in_focus, np.asarray(stack.data))
print(json.dumps({{"s": dt, "rss_gb": rss, "shape": list(stack.shape), "Q4": sc["Q4"], "sharp": sc["sharp"]}}))
"""


def run_real(args) -> None:
    from bench_real import real_sets

    sets = {r.name: r for r in real_sets()}
    kws = {**v3_rows(args.v3_weights), "stackmff-v2": {"method": "stackmff-v2"}, "wavelet": {"method": "wavelet"}}
    print(f"\nCPU seconds and peak memory (fresh process each; max side {args.max_side}):\n")
    print("| stack | shape | method | s | peak RSS GB | Q4 | sharp |")
    print("|---|---|---|---|---|---|---|")
    for name in ("pcb_stack", "keyboard_sweep"):
        if name not in sets:
            continue
        files = [str(p) for p in sets[name].items[0]]
        for label, kw in kws.items():
            code = PROBE.format(src=str(ROOT / "src"), bench=str(ROOT / "benchmarks"), files=files,
                                side=args.max_side, kw=kw)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode != 0:
                print(f"| {name} | — | {label} | failed: {out.stderr.strip().splitlines()[-1][:80]} | — | — | — |")
                continue
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {name} | {'x'.join(map(str, r['shape']))} | {label} | {r['s']:.1f} | {r['rss_gb']:.2f} | "
                  f"{r['Q4']:.4f} | {r['sharp']:.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, default=12)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--v3-weights", nargs="*", default=[], help="more V3 rows: [NAME=]PATH ...")
    ap.add_argument("--real", action="store_true")
    ap.add_argument("--max-side", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None, help="write the synthetic summary here")
    args = ap.parse_args()
    if args.stacks:
        summary = run_synthetic(args)
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
    if args.real:
        run_real(args)


if __name__ == "__main__":
    main()
