"""Memory of `fuse(path)` on a big TIFF: the old default (lazy=False, load it whole) vs the new one (lazy=None).

Run:  python benchmarks/bench_lazy_default.py [--n 64] [--side 2048] [--method wavelet] [--threads 2]

Writes a (n, side, side) uint16 stack twice to a temporary folder, uncompressed (memory-mappable) and
zlib-compressed, then fuses each path in a fresh subprocess per setting, interleaved, and prints:
  s          wall time of fuse(path), reading included;
  peak RSS   kernel high-water mark beyond the process before the call (after importing torch);
             includes the file pages a memory-mapped input touched (reclaimable page cache);
  peak anon  sampled peak anonymous memory beyond the same point: working memory plus any in-memory
             copy of the input, without the page cache.
Every setting must give the same focus map (checked, printed as 'same').
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))


def child(spec: dict) -> dict:
    import hashlib

    import numpy as np
    import torch

    from bench_scale import Meter
    from napari_stackmff import fuse

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    lazy = {"False": False, "None": None}[spec["lazy"]]
    kwargs = {} if lazy is None else {"lazy": lazy}  # the new default is what a user gets by saying nothing
    with Meter() as m:
        res = fuse(spec["path"], method=spec["method"], device="cpu", **kwargs)
    digest = hashlib.sha1(np.ascontiguousarray(res.focus_map).tobytes()).hexdigest()[:12]
    return {"s": m.seconds, "peak_mb": m.peak_mb, "anon_mb": m.anon_mb, "digest": digest}


def run(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if out.returncode:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_stacks(folder: Path, n: int, side: int) -> dict[str, Path]:
    import numpy as np
    import tifffile

    def pages():
        rng = np.random.default_rng(1)
        base = rng.integers(0, 4096, (side, side), dtype=np.uint16)
        for z in range(n):  # texture whose contrast peaks mid-stack, like a focus sweep
            yield (base * (0.3 + 0.7 * np.exp(-((z - n / 2) / (n / 4)) ** 2))).astype(np.uint16)

    paths = {"uncompressed": folder / "raw.tif", "zlib": folder / "zlib.tif"}
    big = n * side * side * 2 > 2**31
    tifffile.imwrite(paths["uncompressed"], pages(), shape=(n, side, side), dtype=np.uint16,
                     photometric="minisblack", bigtiff=big)
    tifffile.imwrite(paths["zlib"], pages(), shape=(n, side, side), dtype=np.uint16, photometric="minisblack",
                     compression="zlib", rowsperstrip=64, bigtiff=big)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--side", type=int, default=2048)
    p.add_argument("--method", default="wavelet")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_stacks(Path(tmp), args.n, args.side)
        print(f"fuse(path, method={args.method!r}) on a {args.n}x{args.side}x{args.side} uint16 TIFF, "
              f"one run each, interleaved")
        print(f"| file | size MB | setting | s | peak RSS MB | peak anon MB | focus map |")
        print("|---|---|---|---|---|---|---|")
        for kind, path in paths.items():
            rows = {}
            for lazy in ("False", "None"):
                rows[lazy] = run({"path": str(path), "lazy": lazy, "method": args.method, "threads": args.threads})
            ref = rows["False"].get("digest")
            for lazy, r in rows.items():
                label = "lazy=False (old default)" if lazy == "False" else "default lazy=None (new)"
                if "error" in r:
                    print(f"| {kind} | | {label} | error: {r['error']} | | | |")
                    continue
                same = "same" if r["digest"] == ref else "DIFFERENT"
                print(f"| {kind} | {path.stat().st_size / 2**20:.0f} | {label} | {r['s']:.1f} | {r['peak_mb']:.0f} | "
                      f"{r['anon_mb']:.0f} | {same} |")


if __name__ == "__main__":
    main()
