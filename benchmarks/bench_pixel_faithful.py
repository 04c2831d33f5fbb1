"""Can a pixel-faithful fusion reach GFF's |grad|^4-weighted Q^AB/F (issue 26's bar)?

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_pixel_faithful.py [--max-side 768] [--align auto] [STACK ...]

Issue 26 asks the default (pixel-faithful: every output pixel is one slice's pixel) to be at least level
with the peers on Q4 on every real stack; GFF (a blend of base and detail layers, not pixel-faithful) leads
on several. Rows, on bench_real.py's stacks at the same size:
  wavelet        our default (decision "auto");
  gff            the peer (benchmarks/baselines.py);
  gff projected  GFF's image made pixel-faithful: per pixel, the slice whose pixel is nearest to GFF's
                 (the pixel-faithful image closest to GFF);
  gff detail argmax / base+detail argmax / saliency argmax: GFF's own decisions taken hard (its
                 guided-filtered detail weights, both weights summed, the Laplacian saliency mask);
  dtcwt, enfuse  the other blending peers, each with its projection (when installed).
``--align auto``: each stack aligned first, as ``stackmff fuse`` does by default (bench_real.py --align).
Q4 (higher is better) and excess (halos, noise; lower is better) from bench_real.score.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import baselines as bl  # noqa: E402
import bench_real as br  # noqa: E402
from napari_stackmff.core import fuse, load_stack  # noqa: E402


def take(sources: np.ndarray, index: np.ndarray) -> np.ndarray:
    idx = index[None, ..., None] if sources.ndim == 4 else index[None]
    return np.take_along_axis(sources, idx, 0)[0]


def project(sources: np.ndarray, image: np.ndarray) -> np.ndarray:
    """The pixel-faithful image closest to ``image``: per pixel, the slice whose pixel is nearest to it."""
    dist = np.abs(sources.astype(np.float32) - image.astype(np.float32)[None])
    return take(sources, (dist.sum(-1) if dist.ndim == 4 else dist).argmin(0))


#: The blending peers besides GFF, each scored with its projection.
BLENDS = {"dtcwt": lambda: importlib.util.find_spec("dtcwt") is not None, "enfuse": bl.have_enfuse}


def rows(stack, sources: np.ndarray) -> dict[str, np.ndarray]:
    g = bl.gff(sources)
    win, wb, wd = bl.gff_weights(sources)
    out = {"wavelet": fuse(stack, device="cpu", method="wavelet").all_in_focus,
           "gff": g,
           "gff projected": project(sources, g),
           "gff detail argmax": take(sources, wd.argmax(0)),
           "base+detail argmax": take(sources, (wb + wd).argmax(0)),
           "saliency argmax": take(sources, win)}
    for name, have in BLENDS.items():
        if have():
            img = bl.dtcwt_fusion(sources) if name == "dtcwt" else bl.enfuse(sources)
            out[name], out[f"{name} projected"] = img, project(sources, img)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stacks", nargs="*", help="bench_real.py set names (default: all but lytro_pairs)")
    ap.add_argument("--max-side", type=int, default=br.DEFAULT_MAX_SIDE)
    ap.add_argument("--align", choices=("off", "auto"), default="off")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    sets = [s for s in br.real_sets() if (s.name in args.stacks if args.stacks else s.name != "lytro_pairs")]
    table: dict[str, dict[str, dict]] = {}
    for rs in sets:
        item = rs.items[0]
        full = load_stack(item, lazy=False) if isinstance(item, Path) else load_stack(item)
        stack, _ = br.downscale(full, 0 if rs.events is not None else args.max_side)
        if args.align != "off" and rs.events is None:
            from napari_stackmff.core.fusion.align import align_stack

            stack, _ = align_stack(stack, args.align, source=rs.name)
        sources = np.asarray(stack.data)
        table[rs.name] = {k: br.score(v, sources) for k, v in rows(stack, sources).items()}
        print(f"[{rs.name}] " + "  ".join(f"{k} {v['Q4']:.4f}" for k, v in table[rs.name].items()),
              file=sys.stderr, flush=True)
    names = list(next(iter(table.values())))
    print(f"\nQ4 / excess, max side {args.max_side}\n")
    print("| stack | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for stack, r in table.items():
        best = max(v["Q4"] for v in r.values())
        cells = [(f"**{v['Q4']:.4f}**" if v["Q4"] == best else f"{v['Q4']:.4f}") + f" / {v['excess']:.4f}"
                 for v in r.values()]
        print(f"| {stack} | " + " | ".join(cells) + " |")
    peers = [n for n in ("gff", *BLENDS) if n in names]
    faithful = [n for n in names if n not in peers]
    for peer in peers:
        level = sum(max(r[n]["Q4"] for n in faithful) >= r[peer]["Q4"] for r in table.values())
        print(f"\n{peer}: stacks where some pixel-faithful row is at least level with it on Q4: {level} of {len(table)}; "
              f"where its own projection is: {sum(r[peer + ' projected']['Q4'] >= r[peer]['Q4'] for r in table.values())}"
              f" of {len(table)}")


if __name__ == "__main__":
    main()
