"""StackMFF-V3 on big images: untiled vs tiled before vs tiled after (issue 24, item 4), side by side.

Run:  python benchmarks/bench_v3_tiles.py [--out out/bench_v3_tiles] [--before b020ae6] [--quick]

* untiled: this tree, one tile for the whole stack (the reference);
* before: the code at ``--before`` (git archive of src/ and weights/ into a temporary folder): tiles cut hard,
  each tile pooled over itself;
* after: this tree's default (the image's pooled means gathered by an encoder pass, the per-slice
  probabilities cross-faded over the 32-px margin, full-resolution features in bands of rows).

Stacks: a synthetic one (512 px, N = 8), the beetle (all 28 slices, 500 x 750; 448-px tiles as the
issue's run had, border at column 384), a crop of the rpi pseudoscorpion (frames 1-11, 640 x 896,
256- and 512-px tiles). Every run is its own process with 1 thread: wall and CPU seconds, peak working
memory (peak RSS minus the RSS before fuse, with the stack and the weights already loaded).

Seam = mean |focus step| between the two pixels on either side of a tile border, divided by the mean
step between other neighbouring pixels; the untiled map's ratio at the same pixel pairs is its
reference. "border step / untiled" is the tiled map's border step over the untiled map's at the same
pairs. PNGs of the focus maps and |tiled - untiled| go to --out (git-ignored by default).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


# ------------------------------------------------------------------------------------ worker
def worker(spec: dict) -> None:
    """One fuse in this process (1 thread); prints a JSON line, writes the maps to spec["save"]."""
    import time

    import psutil
    import torch

    torch.set_num_threads(1)
    import napari_stackmff
    from napari_stackmff.core import fuse

    assert Path(napari_stackmff.__file__).is_relative_to(spec["code"]), (napari_stackmff.__file__, spec["code"])

    data = np.load(spec["data"])
    fuse(np.ascontiguousarray(data[:2, :64, :64]), "stackmff-v3", "cpu")  # weights loaded, kernels warm
    # Peak RSS from here on: Linux resets the high-water mark on "5" to clear_refs (ru_maxrss would keep the
    # start-up's transient peak, ~0.5 GB above the RSS here, and hide the fusion's own).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    rss0 = psutil.Process().memory_info().rss
    kw = {"tile": spec["tile"]} if spec["tile"] else {"tile": max(data.shape[1:3])}
    t0, c0 = time.perf_counter(), time.process_time()
    r = fuse(data, "stackmff-v3", "cpu", **kw)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmHWM"))
    np.savez(spec["save"], focus=r.focus_map, index=r.index)
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": (peak - rss0) / 2**20,
                      "tiles": r.timings.get("tiles", 1)}))


def run(code: Path, data: Path, tile: int | None, save: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(code))
    spec = json.dumps({"data": str(data), "tile": tile, "save": str(save), "code": str(code)})
    out = subprocess.run([sys.executable, __file__, "--worker", spec], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    with np.load(save) as z:
        res["focus"], res["index"] = z["focus"], z["index"]
    return res


# ------------------------------------------------------------------------------------ measures
def borders(h: int, w: int, tile: int, overlap: int = 32) -> tuple[list[int], list[int]]:
    sys.path.insert(0, str(ROOT / "src"))
    from napari_stackmff.core.tiles.tiling import iter_tiles

    tiles = list(iter_tiles(h, w, tile, overlap))
    return (sorted({t.write[0].start for t in tiles if t.write[0].start > 0}),
            sorted({t.write[1].start for t in tiles if t.write[1].start > 0}))


def steps(focus: np.ndarray, rows: list[int], cols: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """|focus step| at the pixel pairs straddling each border, and at all other neighbouring pairs."""
    at, other = [], []
    for axis, bounds in ((1, cols), (0, rows)):
        d = np.abs(np.diff(focus, axis=axis))
        d = d if axis == 1 else d.T  # d[:, j] = |f[j+1] - f[j]|
        mask = np.ones(d.shape[1], bool)
        mask[[b - 1 for b in bounds]] = False
        at.append(d[:, [b - 1 for b in bounds]].ravel())
        other.append(d[:, mask].ravel())
    return np.concatenate(at), np.concatenate(other)


# ------------------------------------------------------------------------------------ stacks
def numbered(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=lambda p: int(re.findall(r"\d+", p.stem)[-1]))


def stacks(tmp: Path, quick: bool) -> list[tuple[str, Path, list[int]]]:
    """(name, .npy of the stack, tile sides to run) for each stack found."""
    sys.path.insert(0, str(ROOT / "src"))
    from napari_stackmff.core.io.read import load_stack
    from napari_stackmff.core.training.synth import random_stack

    out = []
    s = random_stack(np.random.default_rng(5), size=256 if quick else 512, n=8)
    np.save(tmp / "synth.npy", np.ascontiguousarray(s.slices))
    out.append(("synthetic 512 px, N 8" if not quick else "synthetic 256 px, N 8", tmp / "synth.npy",
                [128] if quick else [256]))
    beetle = sorted((DATA / "real_stacks" / "beetle_mandibles_nikon").glob("*.jpg"))
    if beetle:
        data = load_stack(beetle[::2] if quick else beetle).data
        np.save(tmp / "beetle.npy", np.ascontiguousarray(data))
        out.append((f"beetle {data.shape[0]} x {data.shape[1]} x {data.shape[2]}", tmp / "beetle.npy", [448]))
    rpi = numbered(list((DATA / "real_stacks" / "pseudoscorpion_rpi_microscope").glob("*.png")))[:11]
    if rpi:
        data = load_stack(rpi).data[:, 600:1240, 1000:1896]
        data = data[:, :320, :448] if quick else data
        np.save(tmp / "rpi.npy", np.ascontiguousarray(data))
        out.append((f"rpi crop 11 x {data.shape[1]} x {data.shape[2]}", tmp / "rpi.npy",
                    [128] if quick else [256, 512]))
    return out


def export(commit: str, dest: Path) -> Path:
    """The source (and weights) at ``commit``, without touching the working tree."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src", "weights"], capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "out" / "bench_v3_tiles", help="folder for the PNGs")
    p.add_argument("--before", default="b020ae6", help="commit of the 'before' code (issue 24's starting point)")
    p.add_argument("--quick", action="store_true", help="small stacks (a smoke run, minutes)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return
    sys.path.insert(0, str(ROOT / "src"))
    from napari_stackmff.core.io.write import write_png
    from napari_stackmff.core.io.preview import colorize
    from napari_stackmff.core.training.synth import texture_mask

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        (tmp / "before").mkdir()
        before_src, after_src = export(args.before, tmp / "before"), ROOT / "src"
        for name, data, tiles in stacks(tmp, args.quick):
            n = np.load(data, mmap_mode="r").shape[0]
            key = name.split()[0]
            ref = run(after_src, data, None, tmp / "untiled.npz")
            stack = np.load(data)
            idx = ref["index"][None, ..., None] if stack.ndim == 4 else ref["index"][None]
            # Where focus is decidable: the textured half of the untiled all-in-focus image (flat background
            # has no right slice, and any tiny change flips its argmax).
            textured = texture_mask(np.take_along_axis(stack, idx, 0)[0], quantile=0.5)
            write_png(args.out / f"{key}_focus_untiled.png", colorize(ref["focus"], 0, n - 1))
            rows.append((name, "untiled", "-", ref, None))
            print(f"{name} untiled: {ref['wall']:.0f} s", flush=True)
            for tile in tiles:
                h, w = ref["focus"].shape
                by, bx = borders(h, w, tile)
                for label, src in (("before", before_src), ("after", after_src)):
                    r = run(src, data, tile, tmp / f"{label}.npz")
                    at, other = steps(r["focus"], by, bx)
                    ref_at, ref_other = steps(ref["focus"], by, bx)
                    d = np.abs(r["focus"] - ref["focus"])
                    r["m"] = {"seam": at.mean() / other.mean(), "ref_seam": ref_at.mean() / ref_other.mean(),
                              "vs_untiled": at.mean() / max(ref_at.mean(), 1e-9), "same": (r["index"] == ref["index"]).mean(),
                              "same_tex": (r["index"] == ref["index"])[textured].mean(),
                              "dmean": d.mean(), "dmax": d.max()}
                    rows.append((name, label, str(tile), r, r["m"]))
                    write_png(args.out / f"{key}_focus_{label}_tile{tile}.png", colorize(r["focus"], 0, n - 1))
                    write_png(args.out / f"{key}_diff_{label}_tile{tile}.png", colorize(d, 0, 2))
                    print(f"{name} {label} tile {tile}: {r['wall']:.0f} s", flush=True)
    print("\n| stack | run | tile | tiles | wall s | CPU s | peak MB | seam (untiled, same pairs) | border step / untiled "
          "| same index (textured half) | mean / max abs(tiled - untiled) |\n|---|---|---|---|---|---|---|---|---|---|---|")
    for name, label, tile, r, m in rows:
        cells = [name, label, tile, f"{r['tiles']:.0f}", f"{r['wall']:.0f}", f"{r['cpu']:.0f}", f"{r['peak_mb']:.0f}"]
        if m is None:
            cells += ["-", "-", "-", "-"]
        else:
            cells += [f"{m['seam']:.2f} ({m['ref_seam']:.2f})", f"{m['vs_untiled']:.2f}", f"{100 * m['same']:.1f}% ({100 * m['same_tex']:.1f}%)",
                      f"{m['dmean']:.3f} / {m['dmax']:.1f}"]
        print("| " + " | ".join(cells) + " |")
    print(f"\nPNGs in {args.out}")


if __name__ == "__main__":
    main()
