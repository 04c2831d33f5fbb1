"""The classical box filter's column pass: scipy's strided walk against whole-row sums, side by side in one run.

Run:  OMP_NUM_THREADS=2 python benchmarks/bench_box.py [--repeat 5] [--no-fuse]

``classical.box_mean`` filters rows with scipy, then columns: on images of at least
``WINDOW_SUM_MIN_PIXELS`` with :func:`_window_mean_cols` (sums of shifted whole rows), below it with scipy's
``uniform_filter1d(axis=-2)``. The baseline here is the same code with the threshold out of reach (scipy's
column pass everywhere), interleaved with the current setting, best of ``--repeat``:
1. ``box_mean`` alone on map shapes of real fusions (2048- and 1920-wide frames, a 4-slice batch);
2. ``fuse(stack, method="wavelet")`` (the default decision) on the real stacks of ../shared/data at full size,
   unaligned, with the share of pixels on the same slice (the two differ by float32 rounding only).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.tiles import classical  # noqa: E402

SETTINGS = {"scipy columns": 1 << 62, "row sums": classical.WINDOW_SUM_MIN_PIXELS}


def timed(fn, settings: dict[str, int], repeat: int) -> tuple[dict[str, float], dict[str, object]]:
    best = {k: float("inf") for k in settings}
    out: dict[str, object] = {}
    for k in range(repeat + 1):  # the first round warms up
        for name, threshold in settings.items():
            classical.WINDOW_SUM_MIN_PIXELS = threshold
            t0 = time.perf_counter()
            out[name] = fn()
            if k:
                best[name] = min(best[name], time.perf_counter() - t0)
    classical.WINDOW_SUM_MIN_PIXELS = SETTINGS["row sums"]
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--no-fuse", action="store_true", help="only the filter itself")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="only this stack (repeatable)")
    a = p.parse_args()
    print(f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| box_mean on | k | scipy columns ms | row sums ms | speed-up | max rel diff |\n|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for shape in [(1536, 2048), (1080, 1920), (4, 1536, 2048), (2048, 2048)]:
        x = torch.from_numpy(rng.random(shape, dtype=np.float32))
        for k in (9, 33):
            best, out = timed(lambda: classical.box_mean(x, k).numpy(), SETTINGS, max(a.repeat, 5))
            ref, new = out["scipy columns"], out["row sums"]
            d = float(np.abs(new - ref).max() / np.abs(ref).max())
            print(f"| {' x '.join(map(str, shape))} | {k} | {best['scipy columns'] * 1e3:.1f} | {best['row sums'] * 1e3:.1f} "
                  f"| {best['scipy columns'] / best['row sums']:.2f}x | {d:.1e} |")
    if a.no_fuse:
        return
    from bench_real import first_stacks

    print("\n| stack (full size) | scipy columns s | row sums s | speed-up | same slice |\n|---|---|---|---|---|")
    for rs, stack in first_stacks(a.only or ["pcb_stack", "pcb_depthmap", "keyboard_sweep", "pseudoscorpion", "rpi_disc"]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            best, out = timed(lambda: fuse(stack, method="wavelet"), SETTINGS, a.repeat)
        same = float(np.mean(np.round(out["scipy columns"].focus_map) == np.round(out["row sums"].focus_map)))
        h, w = stack.yx_shape
        print(f"| {rs.name} ({stack.n_slices} x {h} x {w}) | {best['scipy columns']:.2f} | {best['row sums']:.2f} | "
              f"{best['scipy columns'] / best['row sums']:.2f}x | {same:.3%} |", flush=True)


if __name__ == "__main__":
    main()
