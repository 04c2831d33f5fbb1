"""The networks end to end on torch and on ONNX Runtime (issue 29, item 1): time and agreement, side by side.

Run:  pip install 'napari-stackmff[onnx]' && python benchmarks/bench_runtime.py [--size 384] [--slices 12] [--repeat 3]

For each shipped network (V2, V3, the event model with simulated events), ``fuse(..., device="cpu")`` on a
rendered stack with known focus, once per runtime, interleaved, best of ``--repeat`` after a warm-up (which
also makes the ONNX export: its one-off time is printed on its own). Agreement: the share of pixels where both
runtimes pick the same slice; within ±1: against the known focus. Threads: torch's (OMP_NUM_THREADS), the same
for ONNX Runtime's intra-op pool.
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

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.events.frames import simulate_events  # noqa: E402
from napari_stackmff.core.fusion.metrics import focus_error  # noqa: E402
from napari_stackmff.core.models import onnx_runtime  # noqa: E402
from napari_stackmff.core.models.registry import load_model, model_names, shipped_weights  # noqa: E402
from napari_stackmff.core.training.synth import random_stack  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tile", type=int, default=None, help="tile side (default: the runner's own)")
    a = p.parse_args()
    warnings.simplefilter("ignore")
    import onnxruntime as ort

    s = random_stack(np.random.default_rng(2029), size=a.size, n=a.slices, scene="natural", depth="objects",
                     noise=True, dtype="uint8", rgb=False, max_radius=(8.0, 8.0))
    frames = simulate_events(s.slices)
    print(f"{a.slices} x {a.size}² rendered stack, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}\n")
    print("| network | torch s | onnxruntime s | **torch / ort** | export s (once) | same slice | within ±1: torch / ort |")
    print("|---|---|---|---|---|---|---|")
    for name in model_names():
        if shipped_weights(name) is None:
            continue
        kw = {"events": frames} if name == "eventstackmff" else {}
        if a.tile:
            kw["tile"] = a.tile
        t0 = time.perf_counter()
        onnx_runtime.ort_forward(load_model(name, None, "cpu"))
        export = time.perf_counter() - t0
        best = {"torch": float("inf"), "onnxruntime": float("inf")}
        res = {}
        for k in range(a.repeat + 1):  # the first round warms up both
            for rt in best:
                t0 = time.perf_counter()
                res[rt] = fuse(s.slices, method=name, device="cpu", runtime=rt, **kw)
                if k:
                    best[rt] = min(best[rt], time.perf_counter() - t0)
        same = float(np.mean(np.round(res["torch"].focus_map) == np.round(res["onnxruntime"].focus_map)))
        w = [focus_error(res[rt].focus_map, s.focus_index)["within1"] for rt in best]
        print(f"| {name} | {best['torch']:.2f} | {best['onnxruntime']:.2f} | **{best['torch'] / best['onnxruntime']:.2f}x** "
              f"| {export:.1f} | {same:.4%} | {w[0]:.3f} / {w[1]:.3f} |")


if __name__ == "__main__":
    main()
