"""Memory of classical fusion from a path (issue 29 item 4), side by side with a baseline checkout.

Run:  python benchmarks/bench_memory.py [--baseline PATH_TO_OTHER_CHECKOUT] [--rounds 2] [--big]

Each case is a uint16 TIFF written page by page to a temporary folder, read lazily (memory-mapped) and
fused with the default settings (wavelet, auto decision, auto tile budget) in a fresh subprocess through
bench_scale.py's child (``kind: lazy``): seconds (reading included) and the peak anonymous memory beyond
what the process held before the call (sampled every 20 ms), i.e. the working memory without the file
pages. ``--baseline`` runs the same child from another checkout (e.g. ``git worktree add /tmp/base
HEAD~3``), interleaved with this one, round by round, so both see the same machine.
Cases: random texture 64 x 2048² (the legacy decision), a dark textured disc on a bright field 64 x
2048² (the halo decision: its vote is the widest step), with ``--big`` 8 x 9000² (the tile budget), and with
``--real`` three real stacks from ``../shared/data`` (folders of PNG/JPEG at full size, read and aligned as
``stackmff fuse`` does).
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
SHARED = ROOT.parent / "shared" / "data"
#: --real: the real stacks with the most pixels (a bright field, a dark ground, the deepest stack).
REAL = ("real_stacks/pseudoscorpion_rpi_microscope", "pcb_depthmap_stack", "keyboard_sweep")


def write_case(path: Path, n: int, side: int, kind: str) -> None:
    """A uint16 stack written page by page (never whole in memory)."""
    import tifffile

    rng = np.random.default_rng(1)
    yy, xx = np.ogrid[:side, :side]
    disc = (yy - side / 2) ** 2 + (xx - side / 2) ** 2 < (0.3 * side) ** 2

    def pages():
        for z in range(n):
            if kind == "random":
                yield rng.integers(0, 65535, (side, side), dtype=np.uint16)
            else:  # bright field: a dark textured specimen, flat bright background with sensor noise
                page = rng.normal(60000, 300, (side, side))
                page[disc] = rng.normal(12000, 4000 * (1 - abs(z - n / 2) / n), int(disc.sum()))
                yield np.clip(page, 0, 65535).astype(np.uint16)

    tifffile.imwrite(path, pages(), shape=(n, side, side), dtype=np.uint16, photometric="minisblack",
                     metadata={"axes": "ZYX"}, bigtiff=n * side * side * 2 > 2**31)


def run(root: Path, spec: dict) -> dict:
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_scale.py"), "--child", json.dumps(spec)],
                         capture_output=True, text=True, timeout=3600)
    if res.returncode:
        return {"error": (res.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", type=Path, default=None, help="another checkout to run side by side")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--big", action="store_true", help="also 8 x 9000² (1.3 GB)")
    p.add_argument("--only-big", action="store_true", help="only 8 x 9000²")
    p.add_argument("--real", action="store_true", help="also real stacks of ../shared/data (folders, full size)")
    args = p.parse_args()
    cases = [("random texture 64 x 2048²", 64, 2048, "random"), ("bright field 64 x 2048² (halo)", 64, 2048, "bright")]
    if args.big or args.only_big:
        cases.append(("random texture 8 x 9000²", 8, 9000, "random"))
    if args.only_big:
        cases = cases[-1:]
    if args.real:
        cases += [(f"real: {path.name}", 0, 0, str(path)) for path in (SHARED / name for name in REAL) if path.is_dir()]
    roots = [("this", ROOT)] + ([("baseline", args.baseline.resolve())] if args.baseline else [])
    print("| case | checkout | tiles | seconds (each round) | peak anon MB (each round) |\n|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="bench_memory_") as tmp:
        for label, n, side, kind in cases:
            real = not n
            path = Path(kind) if real else Path(tmp) / f"{kind}_{n}x{side}.tif"
            if not real:
                write_case(path, n, side, kind)
            got: dict[str, list[dict]] = {name: [] for name, _ in roots}
            for _ in range(args.rounds):
                for name, root in roots:
                    got[name].append(run(root, {"kind": "lazy", "path": str(path), "method": "wavelet"}))
            for name, _ in roots:
                rs = got[name]
                if any("error" in r for r in rs):
                    print(f"| {label} | {name} | failed: {next(r['error'] for r in rs if 'error' in r)} | | |")
                    continue
                secs = " / ".join(f"{r['seconds']:.1f}" for r in rs)
                anon = " / ".join(f"{r['anon_mb']:.0f}" for r in rs)
                print(f"| {label} | {name} | {rs[0]['tiles']} | {secs} | {anon} |", flush=True)
            if not real:
                path.unlink()


if __name__ == "__main__":
    main()
