"""Every method on REAL focal stacks, judged by no-reference scores (real optics have no ground truth).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_real.py [--max-side 768] [--align auto] [--weights NAME=PATH ...]
                                                        [--quick] [--only NAME ...] [--out DIR]

Stacks (from ../shared/data; skipped when absent): pcb_stack (the 7 pcb_00*.jpg, not expected.jpg),
pcb_depthmap_stack, keyboard_sweep, smoke/leaves (the 6 slices, not stacked.png/depth.png),
cells3d_nuclei, real_stacks/* (pseudoscorpion: frames 1-11, a leg moves later), lytro_pairs (20
pairs, evaluation only; the row is their mean) and event_focal_stack_zeromotion (evaluation only; its
event frames add an EventStackMFF column, which is empty for the other stacks; not downscaled).
Slices are fused as they are: no registration, so
focus breathing is part of the test and hits every method alike. ``--align auto`` aligns each stack first,
as ``stackmff fuse`` and the widget do by default, and every method and the best slice get those slices: what
a user sees (a stack that breathes, e.g. pcb_depthmap, scales by 9%, fused unaligned shows every glyph as
concentric copies).

Methods: the classical measures (variance, laplacian, tenengrad, wavelet), StackMFF-V2 with our shipped
weights ("ours"), the official checkpoint through our inference ("official", when present; with
``--official-compat`` also through the published inference, its best path, whole image at once: ~400
bytes per voxel, ~5 GB for keyboard_sweep at 768 px) and any ``--weights NAME=PATH`` (repeatable), e.g. a
fine-tuned model next to the shipped one.

Scale: stacks whose longer side exceeds ``--max-side`` are downscaled once, before any method sees them,
with an antialiased resize (scikit-image: Gaussian prefilter sigma = (factor - 1) / 2, then bilinear),
so every method and every score gets the same pixels. Defocus blur shrinks by the same factor, so depth
edges are narrower than at full size. StackMFF-V2 runs ~0.5 MVox/s on one CPU thread; at 768 px the
whole set is ~70 MVox per model.

Scores (napari_stackmff.core.metrics; the sources are the downscaled slices):
  Q1      Q^AB/F over N sources, published weights (L = 1); for N = 2 the literature's pair score
  Q4      the same with edge weights |grad|^4, so the sharpest slice at each pixel dominates (at L = 1
          the sharpest single slice often outscores the true all-in-focus image of a deep stack)
  sharp   gradient energy against the sharpest slice per pixel, capped: 1 = as sharp as the sharpest
          slice everywhere; halos and noise earn nothing
  excess  gradient energy no slice has at that place (seams, halos, noise); lower is better, but a
          single slice scores 0, so read it next to sharp
  time s  wall-clock seconds of fuse() on the CPU, summed over a row's stacks (loading, resizing and
          scoring excluded)
Each score compares methods on one stack; values of different stacks are not comparable.

Outputs: one markdown table on stdout (also ``table.md``), raw numbers in ``results.json``, and per stack
``<stack>/<method>_fused.png`` and ``<method>_focus.png`` (focus map with colour bar) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))  # baselines.py

from napari_stackmff.core import FocalStack, fuse, load_stack  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402
from napari_stackmff.core.fusion.metrics import DEEP_STACK_WEIGHT_POWER, qabf, sharpness_scores  # noqa: E402
from napari_stackmff.core.io.preview import focus_map_picture, stack_display_range, to_uint8_preview  # noqa: E402

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
OFFICIAL = SHARED / "reference" / "stackmff_v2_official" / "model.pth"
CLASSICAL = ("variance", "laplacian", "tenengrad", "wavelet")
#: score name -> True when higher is better
SCORES = {"Q1": True, "Q4": True, "sharp": True, "excess": False}
#: Longer side the big stacks are reduced to: all stacks then total ~70 MVox per model, ~2-3 min of
#: StackMFF-V2 per model on one thread, so the full run (6 methods + scoring) fits in ~15 min on 2 cores.
DEFAULT_MAX_SIDE = 768
#: Lytro pairs whose fused images and focus maps are written (all 20 are scored).
LYTRO_PNGS = 3
QUICK = ("leaves", "diamond_ring")


@dataclass
class RealSet:
    """One row of the table: a name and the stacks (file lists) whose scores are averaged into it."""

    name: str
    items: list[list[Path] | Path]
    note: str = ""
    events: Path | None = None  # a folder of event frames, one per slice: adds the EventStackMFF column


def _files(folder: Path, pattern: str, key: Callable[[Path], object] = lambda p: p.name) -> list[Path]:
    return sorted(folder.glob(pattern), key=key)


def real_sets() -> list[RealSet]:
    """The benchmark's stacks, with exactly the slices the data README names."""
    rs = DATA / "real_stacks"
    spec: list[tuple[str, Callable[[], list]]] = [
        ("pcb_stack", lambda: [_files(DATA / "pcb_stack", "pcb_00[0-9].jpg")]),
        ("pcb_depthmap", lambda: [_files(DATA / "pcb_depthmap_stack", "pcb_*.JPG")]),
        ("keyboard_sweep", lambda: [_files(DATA / "keyboard_sweep", "slice_*.jpg")]),
        ("leaves", lambda: [_files(DATA / "smoke" / "leaves", "0[0-9]sm.png")]),
        ("cells3d_nuclei", lambda: [DATA / "cells3d_nuclei" / "nuclei.tif"]),
        ("beetle", lambda: [_files(rs / "beetle_mandibles_nikon", "DSC_*.jpg")]),
        ("diamond_ring", lambda: [_files(rs / "diamond_ring_macro", "step*.jpg")]),
        ("pseudoscorpion", lambda: [[rs / "pseudoscorpion_rpi_microscope" / f"scorpion_lapse_{i}.png"
                                     for i in range(1, 12)]]),
        ("rpi_disc", lambda: [_files(rs / "rpi_cam_sweep_johnnewto", "image*.jpg")]),
        ("lytro_pairs", lambda: [[DATA / "lytro_pairs" / f"c_{k:02d}_1.tif", DATA / "lytro_pairs" / f"c_{k:02d}_2.tif"]
                                 for k in range(1, 21)]),
    ]
    out = []
    for name, make in spec:
        items = make()
        ok = [it for it in items if (all(p.exists() for p in it) and len(it) >= 2 if isinstance(it, list)
                                     else it.exists())]
        if ok:
            out.append(RealSet(name, ok, "mean of 20 pairs" if name == "lytro_pairs" else ""))
    zm = DATA / "event_focal_stack_zeromotion"
    if (zm / "images").is_dir() and (zm / "events").is_dir():
        out.append(RealSet("event_zeromotion", [_files(zm / "images", "*.png")], "with its event frames",
                           events=zm / "events"))
    return out


def first_stacks(only: list[str] = ()) -> Iterator[tuple[RealSet, FocalStack]]:
    """(set, its first stack read into memory) for each set but the lytro pairs (registered already), only
    those named in ``only`` when given: the stacks the alignment and decision benchmarks run on."""
    for rs in real_sets():
        if rs.name == "lytro_pairs" or (only and rs.name not in only):
            continue
        item = rs.items[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # folder-pattern notes; the file lists here are explicit
            yield rs, load_stack(item, lazy=False) if isinstance(item, Path) else load_stack(item)


def downscale(stack: FocalStack, max_side: int) -> tuple[FocalStack, float]:
    """The stack with its longer side at most ``max_side``: antialiased (Gaussian prefilter, bilinear),
    slice by slice, rounded back to the input dtype. Returns (stack, scale factor)."""
    from skimage.transform import resize

    h, w = stack.yx_shape
    scale = max_side / max(h, w) if max_side and max(h, w) > max_side else 1.0
    if scale == 1.0:
        return FocalStack(np.asarray(stack.data), axes=stack.axes, z_positions=stack.z_positions, unit=stack.unit,
                          rgb=stack.rgb, source=stack.source), 1.0
    shape = (max(1, round(h * scale)), max(1, round(w * scale)))
    dtype = np.dtype(stack.dtype)
    out = np.empty((stack.n_slices, *shape, *stack.data.shape[3:]), dtype)
    for i in range(stack.n_slices):
        sl = np.asarray(stack.data[i])
        r = resize(sl.astype(np.float32), shape + sl.shape[2:], order=1, anti_aliasing=True, preserve_range=True)
        if dtype.kind in "ui":
            info = np.iinfo(dtype)
            r = np.clip(np.rint(r), info.min, info.max)
        out[i] = r.astype(dtype)
    return FocalStack(out, axes=stack.axes, z_positions=stack.z_positions, unit=stack.unit, rgb=stack.rgb,
                      source=stack.source), scale


def contenders(extra: list[str], compat: bool = False, baselines: bool = True) -> dict[str, dict]:
    """Method label -> fuse() keywords (``"baseline"``: a peer fusion from baselines.py instead;
    ``"decision": "halo"``: the halo decision of issue 26)."""
    c: dict[str, dict] = {m: {"method": m} for m in CLASSICAL}
    c["wavelet-halo"] = {"method": "wavelet", "decision": "halo"}
    c["wavelet-legacy"] = {"method": "wavelet", "decision": "legacy"}  # the default off a bright field until issue 26's glow decision
    c["wavelet-soft"] = {"method": "wavelet", "blend": "soft"}
    c["wavelet-two-scale"] = {"method": "wavelet", "blend": "two-scale"}
    if baselines:
        import baselines as bl

        c["best-slice"] = {"baseline": "best_slice"}
        c["gff"] = {"baseline": "gff"}
        try:
            import dtcwt  # noqa: F401

            c["dtcwt"] = {"baseline": "dtcwt_fusion"}
        except ImportError:
            print("dtcwt not installed (pip install dtcwt): no DTCWT column", file=sys.stderr)
        if bl.have_enfuse():
            c["enfuse"] = {"baseline": "enfuse"}
        else:
            print("enfuse or imagecodecs not installed (apt-get install enfuse; pip install imagecodecs): "
                  "no enfuse column", file=sys.stderr)
        if bl.have_clesperanto():
            c["clesperanto"] = {"baseline": "clesperanto"}
        else:
            print("pyclesperanto or an OpenCL driver missing (pip install pyclesperanto; apt-get install "
                  "pocl-opencl-icd): no clEsperanto column", file=sys.stderr)
    c["ours"] = {"method": "stackmff-v2"}  # the shipped weights, loaded by default
    if OFFICIAL.exists():
        c["official"] = {"method": "stackmff-v2", "weights": str(OFFICIAL)}
        if compat:
            c["official-compat"] = {"method": "stackmff-v2", "weights": str(OFFICIAL), "compat": True}
    for item in extra:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"--weights wants NAME=PATH to an existing checkpoint, got {item!r}")
        c[name] = {"method": "stackmff-v2", "weights": path}
    return c


#: Crops saved per stack (in the benchmark's pixels, after the downscale) for a side-by-side look: the
#: pseudoscorpion's leg (issue 26: rows 1100:1700, cols 1300:1900 at full size, x 768/2592).
CROPS: dict[str, dict[str, tuple[slice, slice]]] = {"pseudoscorpion": {"leg": (slice(320, 510), slice(380, 565))}}


def _run(stack: FocalStack, sources: np.ndarray, kw: dict) -> SimpleNamespace:
    """One contender: all_in_focus and focus_map (None for the peer fusions, which have no slice choice)."""
    if "baseline" in kw:
        import baselines as bl

        if kw["baseline"] == "best_slice":
            img, k = bl.best_slice(sources, lambda a, srcs: qabf(a, srcs, DEEP_STACK_WEIGHT_POWER))
            return SimpleNamespace(all_in_focus=img, focus_map=np.full(img.shape[:2], float(k), np.float32))
        return SimpleNamespace(all_in_focus=getattr(bl, kw["baseline"])(sources), focus_map=None)
    return fuse(stack, device="cpu", **kw)


def score(fused: np.ndarray, sources: np.ndarray) -> dict[str, float]:
    s = sharpness_scores(fused, sources)
    return {"Q1": qabf(fused, sources), "Q4": qabf(fused, sources, DEEP_STACK_WEIGHT_POWER),
            "sharp": s["sharpness"], "excess": s["excess"]}


def event_rows(extra: list[str]) -> dict[str, str | None]:
    """Event-model rows: the shipped weights, then each --event-weights NAME=PATH."""
    rows: dict[str, str | None] = {"eventstackmff": None}
    for item in extra:
        name, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"--event-weights wants NAME=PATH to an existing checkpoint, got {item!r}")
        rows[name] = path
    return rows


def run_set(rset: RealSet, cands: dict[str, dict], max_side: int, out: Path,
            events: dict[str, str | None] | None = None, align: str | None = None) -> dict:
    """Fuse every stack of one row with every method; mean scores and summed seconds per method.
    ``align="auto"``: each stack is first aligned as ``stackmff fuse`` does by default (after the downscale),
    and every method, the best slice and the peers get those aligned slices."""
    if rset.events is not None:  # and the event model with the frames; they match the images' size: no resize
        from napari_stackmff.core.events.frames import read_event_frames

        frames = read_event_frames(rset.events)
        cands = {**cands, **{name: {"method": "eventstackmff", "events": frames, **({"weights": w} if w else {})}
                             for name, w in (events or {"eventstackmff": None}).items()}}
        max_side = 0
    rows: dict[str, dict[str, list[float]]] = {m: {k: [] for k in (*SCORES, "time s")} for m in cands}
    shape_note = ""
    for j, item in enumerate(rset.items):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # folder-pattern notes; the file lists here are explicit
            full = load_stack(item, lazy=False) if isinstance(item, Path) else load_stack(item)
        stack, scale = downscale(full, max_side)
        del full
        moved = ""
        if align and rset.events is None:  # event frames are not warped: the event stack is fused as it is
            from napari_stackmff.core.fusion.align import align_stack, summary

            stack, recs = align_stack(stack, align, source=rset.name)
            moved = ", aligned" if recs and recs[0].get("aligned") else ""
            print(f"[{rset.name}] {summary(recs)}", file=sys.stderr, flush=True)
        sources = np.asarray(stack.data)
        if j == 0:
            h, w = stack.yx_shape
            shape_note = f"{stack.n_slices}×{h}×{w}" + (f", ×{scale:.3g}" if scale != 1 else "") + moved
        drange = stack_display_range(stack)
        save = j < (LYTRO_PNGS if len(rset.items) > 1 else 1)
        folder = out / (rset.name if len(rset.items) == 1 else f"{rset.name}/{j + 1:02d}")
        for name, kw in cands.items():
            try:
                t0 = time.perf_counter()
                r = _run(stack, sources, kw)
                dt = time.perf_counter() - t0
            except Exception as exc:  # one failure must not end a 15-minute run: report it, score NaN
                print(f"[{rset.name}] {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                for k in rows[name]:
                    rows[name][k].append(float("nan"))
                continue
            sc = score(r.all_in_focus, sources)
            for k, v in sc.items():
                rows[name][k].append(v)
            rows[name]["time s"].append(dt)
            print(f"[{rset.name}{'' if len(rset.items) == 1 else f' {j + 1}'}] {name:10s} {dt:7.2f} s  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in sc.items()), file=sys.stderr, flush=True)
            if save:
                write_png(folder / f"{name}_fused.png", to_uint8_preview(r.all_in_focus, drange))
                if r.focus_map is not None:
                    write_png(folder / f"{name}_focus.png", focus_map_picture(r.focus_map, stack.n_slices))
                for crop_name, (ys, xs) in CROPS.get(rset.name, {}).items():  # crops to look at, full pixels
                    write_png(folder / f"crop_{crop_name}_{name}.png", to_uint8_preview(r.all_in_focus[ys, xs], drange))
    res = {m: {k: (float(np.sum(v)) if k == "time s" else float(np.mean(v))) for k, v in d.items()}
           for m, d in rows.items()}
    label = f"{rset.name} ({shape_note}{'; ' + rset.note if rset.note else ''})"
    return {"label": label, "scores": res}


def _fmt(v: float, key: str) -> str:
    if not np.isfinite(v):
        return "—"
    return f"{v:.1f}" if key == "time s" else f"{v:.4f}"


def table(results: list[dict], methods: list[str]) -> str:
    """One markdown table: a block of rows per score (rows = stacks, columns = methods), best in bold,
    then per score how often each model beats the best classical method on that stack."""
    classical = [m for m in methods if m in CLASSICAL]
    models = [m for m in methods if m not in CLASSICAL]
    lines = ["| score | stack | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for key in (*SCORES, "time s"):
        higher = SCORES.get(key, False)
        wins = {m: 0 for m in models}
        best_cl = {m: 0 for m in classical}
        n = 0
        for row in results:
            vals = {m: row["scores"].get(m, {}).get(key, float("nan")) for m in methods}
            finite = {m: v for m, v in vals.items() if np.isfinite(v)}
            best = (max if higher else min)(finite.values()) if finite else None
            cells = [f"**{_fmt(v, key)}**" if key != "time s" and v == best else _fmt(v, key) for v in vals.values()]
            lines.append(f"| {key} | {row['label']} | " + " | ".join(cells) + " |")
            cl = {m: vals[m] for m in classical if np.isfinite(vals[m])}
            if key == "time s" or not cl:
                continue
            n += 1
            top = (max if higher else min)(cl, key=cl.get)
            best_cl[top] += 1
            for m in models:
                v = vals[m]
                wins[m] += bool(np.isfinite(v) and (v > cl[top] if higher else v < cl[top]))
        if key == "time s":
            total = [sum(row["scores"].get(m, {}).get(key, 0.0) for row in results) for m in methods]
            lines.append("| time s | **total** | " + " | ".join(_fmt(v, key) for v in total) + " |")
        else:
            cells = [f"best classical {best_cl[m]}/{n}" if m in classical else f"{wins[m]}/{n}" for m in methods]
            lines.append(f"| {key} | wins vs best classical | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="downscale longer sides to this (0: never)")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH",
                   help="another StackMFF-V2 checkpoint to compare (repeatable)")
    p.add_argument("--event-weights", action="append", default=[], metavar="NAME=PATH",
                   help="another EventStackMFF checkpoint for the stacks with events (repeatable)")
    p.add_argument("--official-compat", action="store_true",
                   help="also run the official checkpoint through the published (whole-image) inference")
    p.add_argument("--quick", action="store_true", help=f"smoke run: only {' and '.join(QUICK)}")
    p.add_argument("--no-baselines", action="store_true", help="leave out best slice, GFF, DTCWT, enfuse and clEsperanto")
    p.add_argument("--no-models", action="store_true", help="leave out the networks (classical and peers only)")
    p.add_argument("--only", action="append", default=[], metavar="NAME", help="only this stack (repeatable)")
    p.add_argument("--align", choices=("off", "auto"), default="off",
                   help="auto: align each stack as `stackmff fuse` does by default, before every method and the "
                        "best slice see it (off: fused as they are, focus breathing included)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "real")
    args = p.parse_args()

    sets = real_sets()
    if not sets:
        print(f"no real stacks: {DATA} not found")
        return
    wanted = set(args.only) | (set(QUICK) if args.quick else set())
    if wanted:
        unknown = wanted - {s.name for s in sets}
        if unknown:
            raise SystemExit(f"unknown stack(s) {sorted(unknown)}; have {[s.name for s in sets]}")
        sets = [s for s in sets if s.name in wanted]
    cands = contenders(args.weights, args.official_compat, baselines=not args.no_baselines)
    if args.no_models:
        cands = {k: v for k, v in cands.items() if v.get("method", "") in (*CLASSICAL, "") or "baseline" in v}
    events = event_rows(args.event_weights)
    print(f"methods: {', '.join(cands)}; stacks: {', '.join(s.name for s in sets)}; max side {args.max_side}",
          file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    t0 = time.perf_counter()
    for rset in sets:
        results.append(run_set(rset, cands, args.max_side, args.out, events,
                               align=None if args.align == "off" else args.align))
    md = table(results, list(cands) + (list(events) if any(s.events for s in sets) else []))
    header = (f"Real stacks, no-reference scores (higher is better except excess and time; max side "
              f"{args.max_side} px, antialiased{'; aligned (auto) first' if args.align != 'off' else ''}; CPU; {time.perf_counter() - t0:.0f} s in all)")
    print(f"\n{header}\n\n{md}")
    (args.out / "table.md").write_text(f"{header}\n\n{md}\n")
    (args.out / "results.json").write_text(json.dumps({"max_side": args.max_side, "methods": cands,
                                                       "rows": results}, indent=1))
    print(f"\nimages in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
