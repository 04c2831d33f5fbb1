"""StackMFF-V2: our weights vs the official checkpoint vs the best classical method, side by side.

Run:  python benchmarks/bench_v2.py [--weights [LABEL=]PATH ...] [--stacks 30] [--out benchmarks/results/v2]

1. Held-out synthetic stacks, never used in training (N 4-24, 8/16-bit, RGB and gray): 30 noisy ones
   (seed 777) and 10 noise-free ones (seed 779), reported apart. PSNR/SSIM of the fused image vs truth
   and focus error on textured pixels, for
     ours            each of our checkpoints, our inference (reflect pad, no min-max stretch, the
                     readout its checkpoint names: soft-argmax for depth regression, argmax for hybrid)
     official        the published checkpoint through our inference
     official-compat the published checkpoint through the published inference (resize, batch min-max)
     wavelet         the best classical method
     oracle          every pixel from the slice truly nearest its focus: the ceiling of selection
2. Real stacks from ../shared/data: the no-reference gradient score Q^AB/F generalised to stacks, and focus
   maps saved side by side as PNGs for a person to look at.
3. CPU seconds, megavoxels/s and peak memory on pcb_stack and keyboard_sweep: ours vs official-compatible.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core import fuse, load_stack  # noqa: E402
from napari_stackmff.core.tiles.pipeline import gather  # noqa: E402
from napari_stackmff.core.io.write import write_png  # noqa: E402
from napari_stackmff.core.io.preview import colorize, to_uint8_preview  # noqa: E402
from napari_stackmff.core.fusion.metrics import focus_error, psnr, qabf, ssim  # noqa: E402
from napari_stackmff.core.training.synth import random_stack, texture_mask  # noqa: E402

SHARED = ROOT.parent / "shared"
OFFICIAL = SHARED / "reference" / "stackmff_v2_official" / "model.pth"


def contenders(weights: list[tuple[str, Path]]) -> dict[str, dict]:
    c: dict[str, dict] = {}
    for label, path in weights:
        if path.exists():
            c[label] = {"method": "stackmff-v2", "weights": str(path)}  # readout: the one the checkpoint names
    if OFFICIAL.exists():
        c["official"] = {"method": "stackmff-v2", "weights": str(OFFICIAL)}
        c["official-compat"] = {"method": "stackmff-v2", "weights": str(OFFICIAL), "compat": True}
    c["wavelet"] = {"method": "wavelet"}
    return c


def _select(s, focus: np.ndarray) -> np.ndarray:
    """The fused image that takes each pixel from the slice nearest ``focus`` (slice units)."""
    idx = np.clip(np.rint(focus), 0, s.slices.shape[0] - 1).astype(np.intp)
    return gather(s.to_stack(), idx)


def synthetic(cands: dict[str, dict], n_stacks: int, seed: int = 777, n_clean: int = 10) -> None:
    """Held-out stacks: ``n_stacks`` noisy ones (seed) and ``n_clean`` noise-free ones (seed + 2)."""
    subsets = {"noisy": (seed, n_stacks, True), "noise-free": (seed + 2, n_clean, False)}
    ref_name = next(iter(cands))
    for subset, (sd, count, noisy) in subsets.items():
        if not count:
            continue
        rng = np.random.default_rng(sd)
        rows: dict[str, list] = {k: [] for k in (*cands, "oracle")}
        for i in range(count):
            s = random_stack(rng, size=192, n_range=(4, 24), dtype="uint16" if i % 3 else "uint8",
                             rgb=bool(i % 4 == 0), noise=noisy, max_radius=(6.0, 24.0))
            mask = texture_mask(s.aif, quantile=0.5)
            for name, kw in cands.items():
                r = fuse(s.slices, device="cpu", **kw)
                fe = focus_error(r.focus_map, s.focus_index, mask)
                rows[name].append((psnr(r.all_in_focus, s.aif), ssim(r.all_in_focus, s.aif), fe["mae"], fe["within1"]))
            o = _select(s, s.focus_index)  # the ceiling of any per-pixel selection
            rows["oracle"].append((psnr(o, s.aif), ssim(o, s.aif), 0.0, 1.0))
        print(f"\n## Held-out synthetic set, {subset}: {count} stacks (seed {sd}, 192², N 4-24, 8/16-bit, RGB+gray)")
        print(f"{'method':16s} {'PSNR dB':>8s} {'SSIM':>7s} {'focus MAE':>10s} {'within±1':>9s} "
              f"{'ΔPSNR vs ' + ref_name:>16s}")
        ref = np.mean([r[0] for r in rows[ref_name]])
        for name, vals in rows.items():
            a = np.mean(vals, axis=0)
            label = "oracle (ceiling)" if name == "oracle" else name
            print(f"{label:16s} {a[0]:8.2f} {a[1]:7.4f} {a[2]:10.3f} {100 * a[3]:8.1f}% {a[0] - ref:+16.2f}")
    print("oracle: every pixel from the slice nearest its true focus — no per-pixel selection does better on average")


def ablation(weights: Path, n_stacks: int, seed: int = 778) -> None:
    """Each inference change on its own, with the same weights: what it buys in PSNR and focus error.

    published : bilinear resize to a multiple of 32, batch min-max of the soft-argmax depth, round
    +pad      : reflect-pad instead of resizing (min-max kept)
    +no-minmax: soft-argmax depth used as is (slice units), no stretch
    +argmax   : winning slice, refined by its neighbours' probabilities (instead of soft-argmax)
    """
    import torch
    import torch.nn.functional as F

    from napari_stackmff.core.models.inference import pad_to_multiple, readout
    from napari_stackmff.core.models.registry import load_model
    from napari_stackmff.core.training.data import _to_unit

    model = load_model("stackmff-v2", weights, "cpu")
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("published", "+pad", "+no-minmax", "+argmax")}
    for i in range(n_stacks):
        h, w = int(rng.integers(150, 230)), int(rng.integers(150, 230))  # sizes that are not multiples of 32
        s = random_stack(rng, size=(h, w), n_range=(4, 24), dtype="uint16" if i % 2 else "uint8", noise=True,
                         max_radius=(6.0, 24.0))
        n = s.slices.shape[0]
        mask = texture_mask(s.aif, quantile=0.5)
        x = torch.from_numpy(_to_unit(s.slices))[None]
        with torch.no_grad():
            h32, w32 = max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
            lr = model(F.interpolate(x, size=(h32, w32), mode="bilinear", align_corners=False))
            lr = F.interpolate(lr, size=(h, w), mode="bilinear", align_corners=False)[0]
            xp, _, _ = pad_to_multiple(x)
            lp = model(xp)[0, :, :h, :w]

        def minmax(logits: torch.Tensor) -> np.ndarray:
            d, _ = readout(logits, "softargmax")
            d = (d - d.min()) / max(float(d.max() - d.min()), 1e-12)
            return (d * (n - 1)).numpy()

        variants = {"published": minmax(lr), "+pad": minmax(lp),
                    "+no-minmax": readout(lp, "softargmax")[0].numpy(), "+argmax": readout(lp, "argmax")[0].numpy()}
        for name, focus in variants.items():
            fused = _select(s, focus)
            fe = focus_error(focus, s.focus_index, mask)
            rows[name].append((psnr(fused, s.aif), fe["mae"], fe["within1"]))
    print(f"\n## Inference changes, one at a time ({weights.name}; {n_stacks} stacks, seed {seed}, sizes 150-230 px)")
    print(f"{'variant':12s} {'PSNR dB':>8s} {'focus MAE':>10s} {'within±1':>9s}")
    for name, vals in rows.items():
        a = np.mean(vals, axis=0)
        print(f"{name:12s} {a[0]:8.2f} {a[1]:10.3f} {100 * a[2]:8.1f}%")


def real(cands: dict[str, dict], out: Path) -> None:
    data = SHARED / "data"
    sets: list[tuple[str, list]] = []
    lytro = data / "lytro_pairs"
    if lytro.exists():
        pairs = sorted({p.name[:4] for p in lytro.glob("c_*_1.tif")})[:20]
        sets.append(("lytro_pairs (20 pairs, N=2)", [[lytro / f"{k}_1.tif", lytro / f"{k}_2.tif"] for k in pairs]))
    for name in ("pcb_stack", "keyboard_sweep"):
        if (data / name).exists():
            sets.append((name, [data / name]))
    if not sets:
        print("\n(real stacks skipped: ../shared/data not found)")
        return
    out.mkdir(parents=True, exist_ok=True)
    print("\n## Real stacks: Q^AB/F generalised to stacks (higher is better; no ground truth)")
    print(f"{'stack':28s} " + " ".join(f"{k:>16s}" for k in cands))
    for label, items in sets:
        scores: dict[str, list[float]] = {k: [] for k in cands}
        for j, item in enumerate(items):
            stack = load_stack(item)
            maps = []
            for name, kw in cands.items():
                if kw.get("compat") and np.prod(stack.shape[:3]) * 400 > 8e9:
                    scores[name].append(float("nan"))
                    maps.append(np.zeros(stack.yx_shape + (3,), np.uint8))
                    continue
                r = fuse(stack, device="cpu", **kw)
                scores[name].append(qabf(r.all_in_focus, np.asarray(stack.data)))
                maps.append(colorize(r.focus_map, 0, stack.n_slices - 1))
                if j == 0:
                    write_png(out / f"{label.split()[0]}_{name}_fused.png", to_uint8_preview(r.all_in_focus))
            if j == 0:
                write_png(out / f"{label.split()[0]}_focus_maps.png", np.concatenate(maps, axis=1))
        print(f"{label:28s} " + " ".join(f"{np.nanmean(v):16.4f}" for v in scores.values()))
    print(f"focus maps side by side ({', '.join(cands)}) in {out}")


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _child(path: str, kw: dict) -> dict:
    """One timed fuse in a fresh process. Peak memory: the kernel's high-water mark of resident memory,
    reset after the stack is loaded (clear_refs 5), so reading the input's files does not hide the
    fusion's own peak; where that reset is not allowed, ru_maxrss beyond the RSS after loading."""
    import torch

    stack = load_stack(path)
    stack.data = np.ascontiguousarray(stack.data)
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base, hwm = _rss_kb("VmRSS"), lambda: _rss_kb("VmHWM")
    except OSError:
        base, hwm = _rss_kb("VmRSS"), lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    fuse(stack, device="cpu", **kw)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "voxels": int(np.prod(stack.shape[:3])), "threads": torch.get_num_threads(),
            "peak_mb": (hwm() - base) / 1024}


def speed(cands: dict[str, dict]) -> None:
    print("\n## CPU speed (input in memory; peak RSS beyond the input)")
    print(f"{'stack':16s} {'method':16s} {'seconds':>8s} {'MVox/s':>8s} {'peak MB':>8s}")
    for name in ("pcb_stack", "keyboard_sweep"):
        path = SHARED / "data" / name
        if not path.exists():
            continue
        for label in cands:
            kw = cands[label]
            if kw.get("compat") and name == "keyboard_sweep":
                print(f"{name:16s} {label:16s} {'—':>8s} {'—':>8s} {'OOM':>8s}  (whole 41×1080×1920 image at once "
                      "needs ~34 GB > 24 GB)")
                continue
            res = subprocess.run([sys.executable, __file__, "--child", str(path), json.dumps(kw)],
                                 capture_output=True, text=True)
            if res.returncode:
                print(f"{name:16s} {label:16s} failed: {res.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            print(f"{name:16s} {label:16s} {r['seconds']:8.2f} {r['voxels'] / r['seconds'] / 1e6:8.2f} "
                  f"{r['peak_mb']:8.0f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--weights", nargs="+", default=[f"ours={ROOT / 'weights' / 'stackmff_v2.pt'}"],
                   help="LABEL=PATH (or PATH, labelled 'ours') of our checkpoints to compare side by side")
    p.add_argument("--clean-stacks", type=int, default=10, help="noise-free held-out stacks, reported apart")
    p.add_argument("--stacks", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "v2")
    p.add_argument("--skip", nargs="*", default=[], choices=["synthetic", "ablation", "real", "speed"])
    p.add_argument("--child", nargs=2, default=None)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], json.loads(args.child[1]))))
        return
    ours = [(w.split("=", 1)[0], Path(w.split("=", 1)[1])) if "=" in w else ("ours", Path(w)) for w in args.weights]
    cands = contenders(ours)
    print("contenders:", ", ".join(cands))
    if "synthetic" not in args.skip:
        synthetic(cands, args.stacks, n_clean=args.clean_stacks)
    if "ablation" not in args.skip:
        for w in (ours[0][1], OFFICIAL):
            if w.exists():
                ablation(w, max(10, args.stacks // 2))
    if "real" not in args.skip:
        real(cands, args.out)
    if "speed" not in args.skip:
        speed(cands)


if __name__ == "__main__":
    main()
