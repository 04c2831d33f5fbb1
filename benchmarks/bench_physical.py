"""Held-out physical benchmark (issue 28): every method against the truth of physically rendered stacks.

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_physical.py [--count 6] [--kinds macro,fluorescence,brightfield]
      (also brightfield-ca: axial chromatic aberration, not in the default set)

Stacks: ``core.render`` with held-out seeds (from :data:`SEED0`, never used for training data, whose seeds
start at 0): lens stacks through Mitsuba's thin lens (160 px, 8 slices), widefield fluorescence and
brightfield through the wave-optics microscope PSF (192 px, 12 slices). Rendered in worker processes and
cached in ``benchmarks/results/physical`` (render time per stack printed).

Methods: the classical measures (the default decision), ``wavelet`` soft-blended, the shipped networks
(StackMFF-V2, -V3), and the peers of ``baselines.py`` (GFF, DTCWT, enfuse and clEsperanto when installed),
plus the best single slice (by PSNR against the truth: an upper bound for "one slice"). Scores against the
truth: PSNR (peak = the truth's own range, so 16-bit fluorescence with a few hundred photons is not scored
against 65535), SSIM, and the focus error (slices, mean absolute; within +-1) on the pixels with signal.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.fusion.metrics import focus_error  # noqa: E402

#: Held-out seeds start here (training datasets use seeds from 0).
SEED0 = 900_000
SIZES = {"macro": (160, 8), "fluorescence": (192, 12), "brightfield": (192, 12), "brightfield-ca": (192, 12)}
CLASSICAL = ("variance", "laplacian", "tenengrad", "wavelet")


def _render(args: tuple[str, int, str]) -> None:
    from napari_stackmff.core.render.dataset import render_physical

    kind, seed, path = args
    if Path(path).exists():
        return
    t0 = time.perf_counter()
    size, n = SIZES[kind]
    s = render_physical(kind, seed, size, n)
    took = time.perf_counter() - t0
    tmp = Path(path).with_suffix(".tmp.npz")
    np.savez_compressed(tmp, slices=s.slices, aif=s.aif, focus_index=s.focus_index, valid=s.valid, seconds=took)
    os.replace(tmp, path)


def _range_psnr(a: np.ndarray, truth: np.ndarray) -> float:
    t = truth.astype(np.float64)
    peak = float(t.max() - t.min()) if truth.dtype == np.uint16 else 255.0
    mse = float(np.mean((a.astype(np.float64) - t) ** 2))
    return 10 * np.log10(peak * peak / max(mse, 1e-12))


def _ssim(a: np.ndarray, truth: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    t = truth.astype(np.float64)
    rng = float(t.max() - t.min()) if truth.dtype == np.uint16 else 255.0
    return float(structural_similarity(a.astype(np.float64), t, data_range=rng,
                                       channel_axis=-1 if t.ndim == 3 else None))


def contenders(models: bool, peers: bool, extra: list[str] = (), decisions: bool = False) -> dict[str, dict]:
    c: dict[str, dict] = {m: {"method": m} for m in CLASSICAL}
    c["wavelet-soft"] = {"method": "wavelet", "blend": "soft"}
    if decisions:  # the default decision ("auto") beside each one forced (tiles/decision.py)
        c["wavelet-legacy"] = {"method": "wavelet", "decision": "legacy"}
        c["wavelet-halo"] = {"method": "wavelet", "decision": "halo"}
        c["wavelet-glow"] = {"method": "wavelet", "decision": "glow"}
    if models:
        c["stackmff-v2"] = {"method": "stackmff-v2"}
        c["stackmff-v3"] = {"method": "stackmff-v3"}
    for item in extra:  # NAME=PATH: V2 weights to compare (e.g. a fine-tune on physical stacks)
        name, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            raise SystemExit(f"--weights wants NAME=PATH to an existing checkpoint, got {item!r}")
        c[name] = {"method": "stackmff-v2", "weights": path}
    if peers:
        import baselines as bl

        c["gff"] = {"baseline": "gff"}
        try:
            import dtcwt  # noqa: F401

            c["dtcwt"] = {"baseline": "dtcwt_fusion"}
        except ImportError:
            pass
        if bl.have_enfuse():
            c["enfuse"] = {"baseline": "enfuse"}
        if bl.have_clesperanto():
            c["clesperanto"] = {"baseline": "clesperanto"}
    return c


def run(kind: str, paths: list[str], cands: dict[str, dict]) -> dict[str, dict[str, list[float]]]:
    import baselines as bl

    out: dict[str, dict[str, list[float]]] = {m: {"psnr": [], "ssim": [], "mae": [], "w1": [], "s": []}
                                               for m in [*cands, "best-slice"]}
    for path in paths:
        d = np.load(path)
        slices, aif, idx, valid = d["slices"], d["aif"], d["focus_index"], d["valid"]
        scores = [_range_psnr(s, aif) for s in slices]
        k = int(np.argmax(scores))
        out["best-slice"]["psnr"].append(scores[k])
        out["best-slice"]["ssim"].append(_ssim(slices[k], aif))
        fe = focus_error(np.full(idx.shape, float(k)), idx, valid)
        out["best-slice"]["mae"].append(fe["mae"])
        out["best-slice"]["w1"].append(fe["within1"])
        out["best-slice"]["s"].append(0.0)
        for name, kw in cands.items():
            t0 = time.perf_counter()
            if "baseline" in kw:
                img, fmap = getattr(bl, kw["baseline"])(slices), None
            else:
                r = fuse(slices, device="cpu", align=None, **kw)
                img, fmap = r.all_in_focus, r.focus_map
            out[name]["s"].append(time.perf_counter() - t0)
            out[name]["psnr"].append(_range_psnr(img, aif))
            out[name]["ssim"].append(_ssim(img, aif))
            if fmap is not None:
                fe = focus_error(fmap, idx, valid)
                out[name]["mae"].append(fe["mae"])
                out[name]["w1"].append(fe["within1"])
        print(f"  [{kind}] {Path(path).stem}: " + ", ".join(f"{m} {out[m]['psnr'][-1]:.2f}" for m in out), flush=True)
    return out


def table(kind: str, res: dict[str, dict[str, list[float]]], n: int, render_s: float) -> str:
    rows = [f"\n**{kind}** ({n} stacks, {SIZES[kind][0]} px, {SIZES[kind][1]} slices; rendering {render_s:.1f} s "
            "per stack on one core)\n", "| method | PSNR dB | SSIM | focus MAE (slices) | within ±1 | s per stack |",
            "|---|---|---|---|---|---|"]
    best = max(np.mean(v["psnr"]) for k, v in res.items() if k != "best-slice")
    for m, v in res.items():
        p = np.mean(v["psnr"])
        mae = f"{np.mean(v['mae']):.2f}" if v["mae"] else "—"
        w1 = f"{np.mean(v['w1']):.1%}" if v["w1"] else "—"
        ps = f"**{p:.2f}**" if p == best else f"{p:.2f}"
        rows.append(f"| {m} | {ps} | {np.mean(v['ssim']):.4f} | {mae} | {w1} | {np.mean(v['s']):.2f} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=6, help="stacks per kind")
    p.add_argument("--kinds", default="macro,fluorescence,brightfield")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="render processes")
    p.add_argument("--no-models", action="store_true")
    p.add_argument("--no-peers", action="store_true")
    p.add_argument("--decisions", action="store_true", help="also wavelet with decision='legacy' and 'halo' forced")
    p.add_argument("--weights", action="append", default=[], metavar="NAME=PATH", help="also these V2 weights")
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "results" / "physical")
    a = p.parse_args()
    a.cache.mkdir(parents=True, exist_ok=True)
    kinds = [k for k in a.kinds.split(",") if k]
    if "macro" in kinds:
        from napari_stackmff.core.render.macro import have_mitsuba

        if not have_mitsuba():
            print("mitsuba not installed (pip install 'napari-stackmff[render]'): no macro stacks", file=sys.stderr)
            kinds.remove("macro")
    jobs = [(k, SEED0 + i, str(a.cache / f"{k}_{SEED0 + i}.npz")) for k in kinds for i in range(a.count)]
    env_threads = os.environ.get("OMP_NUM_THREADS")
    with ProcessPoolExecutor(a.workers) as pool:
        list(pool.map(_render, jobs))
    # Each cached stack keeps the seconds its render took.
    render_s = {k: float(np.mean([float(np.load(j[2])["seconds"]) for j in jobs if j[0] == k])) for k in kinds}
    cands = contenders(not a.no_models, not a.no_peers, a.weights, a.decisions)
    print(f"held-out seeds {SEED0}..{SEED0 + a.count - 1}; methods: {', '.join(cands)}; OMP_NUM_THREADS={env_threads}")
    tables = []
    for k in kinds:
        res = run(k, [j[2] for j in jobs if j[0] == k], cands)
        tables.append(table(k, res, a.count, render_s[k]))
    print("\n".join(tables))


if __name__ == "__main__":
    main()
