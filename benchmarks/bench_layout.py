"""Networks on this CPU in NCHW and in NHWC (channels_last): which layout should be the default here?

Run:  OMP_NUM_THREADS=2 python benchmarks/bench_layout.py [--side 384] [--repeat 3]

`inference.CPU_CHANNELS_LAST` lists the CPUs (torch's capability names) where networks run NHWC by
default; a CPU joins it once this table says so. Two synthetic 12-slice stacks (cells, natural; with their
simulated events for EventStackMFF), `fuse(..., channels_last=False|True)` end to end on the CPU, the two
layouts interleaved, best of --repeat per stack, summed over the stacks; "same index" compares the focus
index of the two layouts pixel by pixel.
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
from napari_stackmff.core.training import synth  # noqa: E402

MODELS = ("stackmff-v2", "stackmff-v3", "eventstackmff")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", type=int, default=384)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--models", default=",".join(MODELS))
    a = p.parse_args()
    warnings.simplefilter("ignore")
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} threads; 2 stacks of {a.side}² x 12, best of {a.repeat}\n")
    stacks = [synth.make_sample(k, n=12, size=a.side, seed=3, dtype="uint8", events=True) for k in ("cells", "natural")]
    print("| model | NCHW s | NHWC s | NCHW / NHWC | same index |\n|---|---|---|---|---|")
    for model in a.models.split(","):
        total = {False: 0.0, True: 0.0}
        index: dict[bool, list[np.ndarray]] = {False: [], True: []}
        for s in stacks:
            kw = {"events": s.events} if model == "eventstackmff" else {}
            best = {False: float("inf"), True: float("inf")}
            for r in range(a.repeat):
                for cl in (False, True):
                    t0 = time.perf_counter()
                    res = fuse(s.slices, model, "cpu", channels_last=cl, **kw)
                    best[cl] = min(best[cl], time.perf_counter() - t0)
                    if r == 0:
                        index[cl].append(np.asarray(res.index).ravel())
            for cl in best:
                total[cl] += best[cl]
        same = float(np.mean(np.concatenate(index[False]) == np.concatenate(index[True])))
        print(f"| {model} | {total[False]:.3f} | {total[True]:.3f} | {total[False] / total[True]:.2f}x | {same:.4%} |",
              flush=True)


if __name__ == "__main__":
    main()
