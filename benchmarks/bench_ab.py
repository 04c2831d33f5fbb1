"""One network, this checkout against another one, interleaved: the bare forward and ``fuse()`` end to end.

Run:  git worktree add /tmp/base <commit>
      python benchmarks/bench_ab.py --baseline /tmp/base [--model stackmff-v2] [--slices 12] [--side 384]
                                    [--repeat 5] [--threads 2]

Each checkout runs in its own long-lived process (its own ``src`` first on the path), made once: the
model loaded as the product loads it on this CPU (channels_last where the CPU default says so), one
seeded random stack. The processes then take turns, ``--repeat`` rounds after a warm-up round, so both
sides see the same machine; each side's best round is printed, with how far the two outputs differ
(focus logits for the forward, the focus map for ``fuse()``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT.parent / "shared" / "reference" / "stackmff_v2_official" / "model.pth"

CHILD = r"""
import json, sys, time
sys.path.insert(0, SRC)
import numpy as np
import torch
torch.set_num_threads(THREADS)
from napari_stackmff.core import fuse
from napari_stackmff.core.models.inference import ModelRunner
runner = ModelRunner(MODEL, torch.device("cpu"), weights=WEIGHTS)
x = torch.rand((1, N, SIDE, SIDE), generator=torch.Generator().manual_seed(0))
stack = (x[0].numpy() * 60000).astype(np.uint16)
for line in sys.stdin:
    mode, out = line.split()
    t0 = time.perf_counter()
    if mode == "forward":
        with torch.inference_mode():
            y = (runner.model(x) if "event" not in MODEL else runner.model(x, torch.zeros_like(x))).numpy()
    else:
        extra = {"events": np.zeros(stack.shape, np.float32)} if "event" in MODEL else {}  # no events: images only
        y = np.asarray(fuse(stack, method=MODEL, device="cpu", weights=WEIGHTS, **extra).focus_map)
    dt = time.perf_counter() - t0
    np.save(out, y)
    print(json.dumps(dt), flush=True)
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, required=True, help="the other checkout (a git worktree)")
    p.add_argument("--model", default="stackmff-v2")
    p.add_argument("--slices", type=int, default=12)
    p.add_argument("--side", type=int, default=384)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    weights = str(OFFICIAL) if args.model == "stackmff-v2" and OFFICIAL.exists() else None
    sides = {"this": ROOT / "src", "baseline": args.baseline.resolve() / "src"}
    procs = {}
    for name, src in sides.items():
        code = (CHILD.replace("SRC", repr(str(src))).replace("THREADS", str(args.threads))
                .replace("MODEL", repr(args.model)).replace("WEIGHTS", repr(weights))
                .replace("N, SIDE, SIDE", f"{args.slices}, {args.side}, {args.side}"))
        procs[name] = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                       text=True, env={"OMP_NUM_THREADS": str(args.threads), "PATH": "/usr/bin:/bin"})
    print(f"{args.model}, {args.slices} x {args.side}², {args.threads} threads, weights "
          f"{'official' if weights else 'random init'}, best of {args.repeat} interleaved rounds\n")
    print("| what | baseline s | this s | baseline / this | max abs difference | same argmax |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_ab_") as tmp:
        for mode in ("forward", "fuse"):
            times: dict[str, list[float]] = {name: [] for name in procs}
            for r in range(args.repeat + 1):
                for name, proc in procs.items():
                    assert proc.stdin and proc.stdout
                    proc.stdin.write(f"{mode} {tmp}/{name}.npy\n")
                    proc.stdin.flush()
                    line = proc.stdout.readline()
                    if not line:
                        sys.exit(f"{name}: the child process failed")
                    if r:  # round 0 warms up
                        times[name].append(json.loads(line))
            a, b = np.load(f"{tmp}/baseline.npy"), np.load(f"{tmp}/this.npy")
            same = f"{100 * np.mean(a.argmax(1) == b.argmax(1)):.4f}%" if mode == "forward" else "—"
            tb, tt = min(times["baseline"]), min(times["this"])
            print(f"| {mode} | {tb:.3f} | {tt:.3f} | {tb / tt:.3f}x | {np.abs(a - b).max():.2e} | {same} |")
    for proc in procs.values():
        assert proc.stdin
        proc.stdin.close()
        proc.wait()


if __name__ == "__main__":
    main()
