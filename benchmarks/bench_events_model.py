"""EventStackMFF against StackMFF-V2 on the images alone and classical fusion (issue 14).

Run:  OMP_NUM_THREADS=1 python benchmarks/bench_events_model.py [--stacks 16] [--size 128] [--weights PATH]

Held-out synthetic image + event stacks (seeds 88000+, never used in training or validation), rendered as
for training (core/train.py:render_event_item): N 6-12, blur up to 24 px, noise, and the events of the sweep
(ESIM-style, 4 sub-steps between slices). Two groups: all stacks, and the weakly textured ones (scene
contrast 5-30 %, about a third) where image focus cues fade. Scores against the all-in-focus truth on the
stack's own [0, 1] scale: PSNR, SSIM, focus MAE (slices) and the share within one slice, on textured pixels.

Every method here outputs a selection of slices (the published inference: round + gather), so the
frames' noise bounds the PSNR. The "selection ceiling" row picks, per pixel, the slice whose noise-free
render is closest to the truth (5x5 window) and gathers it from the noisy slices: no selection method
can score above it. `--noise off` renders the same scenes without sensor noise, where the choice of
slice, not the noise, sets the score; `--noise heavy` with fewer photons than any training stack. A third
group, "measure behind V2", takes the stacks where the wavelet measure (the prior's) scores below V2.

The event model's focus prior (models/event.py:FocusPrior) adds a classical measure's vote to the
network's. The row "stackmff-v2 + focus prior" adds the same vote, at a fixed weight (``--v2-prior``), to
V2's logits: the control that separates what the measure gives from what the events give.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_stackmff.core import fuse  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402
from napari_stackmff.core.fusion.metrics import focus_error, psnr, ssim  # noqa: E402
from napari_stackmff.core.training.data import EVENT_PHOTONS, render_event_item  # noqa: E402

CLASSICAL = ("variance", "laplacian", "tenengrad", "wavelet")
CEILING = "selection ceiling (truth-picked)"
V2_PRIOR = "stackmff-v2 + focus prior (images only)"


@contextmanager
def v2_with_prior(weight: float):
    """V2's logits plus the event model's focus-prior vote at a fixed weight, through the product path."""
    from napari_stackmff.core.models import inference
    from napari_stackmff.core.models.event import FocusPrior

    plain = inference.ModelRunner.logits

    def logits(self, x, *args):
        out = plain(self, x, *args)
        return out + weight * FocusPrior.log_energy(x[None].float())[0] if self.name == "stackmff-v2" else out

    inference.ModelRunner.logits = logits
    try:
        yield
    finally:
        inference.ModelRunner.logits = plain


#: Peak photon counts of ``--noise heavy``: around and below the training's lowest (30 until 2026-12-07, 10
#: since), where the measure's vote on detail energy follows the noise (11 of 12 stacks: wavelet behind V2).
HEAVY_PHOTONS = (6.0, 12.0)


def held_out(count: int, size: int, noise: str = "on", scene: str | None = None) -> list[tuple]:
    out = []
    photons = HEAVY_PHOTONS if noise == "heavy" else EVENT_PHOTONS
    for i in range(count):
        n = int(np.random.default_rng(88000 + i).integers(6, 13))
        img, ev, depth, f, aif, clean, clean_aif = render_event_item([88000, i], size, n, noise=noise != "off",
                                                                     with_clean=True, photons=photons, scene=scene)
        truth = np.interp(depth, f, np.arange(n, dtype=np.float32)).astype(np.float32)
        weak = weak_scene([88000, i], size, scene)
        out.append((img, ev, truth, aif, weak, ceiling_fusion(img, clean, clean_aif)))
    return out


def weak_scene(seed: list[int], size: int, scene: str | None = None) -> bool:
    """Whether render_event_item made this scene weakly textured (its first two draws, replayed): the
    frames are scaled to their own range, so their contrast cannot tell once the noise is off."""
    rng = np.random.default_rng(seed)
    synth.random_scene(rng, (size, size), scene)
    return bool(rng.random() < 1 / 3)


def ceiling_fusion(img: np.ndarray, clean: np.ndarray, clean_aif: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(image, index): the truth-picked selection (see the module docstring)."""
    from scipy.ndimage import uniform_filter

    err = uniform_filter((clean - clean_aif[None]) ** 2, size=(1, 5, 5))
    index = err.argmin(0)
    return np.take_along_axis(img, index[None], 0)[0], index.astype(np.float32)


def save_montage(path: Path, panels: list[np.ndarray]) -> None:
    """Images (top row) over focus errors (bottom row, 0..3 slices), for looking at halos and seams."""
    from skimage.io import imsave

    top = [np.clip(p, 0, 1) for p in panels[0::2]]
    bottom = [np.clip(p / 3.0, 0, 1) for p in panels[1::2]]
    bottom = [np.zeros_like(top[0])] + bottom if len(bottom) < len(top) else bottom
    grid = np.vstack([np.hstack(top), np.hstack(bottom)])
    path.parent.mkdir(parents=True, exist_ok=True)
    imsave(path, (grid * 255).astype(np.uint8), check_contrast=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stacks", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--weights", nargs="*", default=[],
                    help="EventStackMFF checkpoints, a row each (default: the shipped one)")
    ap.add_argument("--png", default=None, metavar="DIR",
                    help="save, per stack, a montage to look at: truth (over the ceiling's focus error) | "
                         "each method's fused image over its focus error (white = 3+ slices off)")
    ap.add_argument("--noise", choices=("on", "off", "heavy"), default="on",
                    help="sensor noise in the frames: as in training, none, or heavier than any in training")
    ap.add_argument("--scene", choices=synth.SCENE_KINDS, default=None,
                    help="one scene kind for every stack (e.g. cells: bright objects of unequal brightness, "
                         "where a detail-energy measure moves dim cells to a bright neighbour's slice)")
    ap.add_argument("--v2-prior", type=float, default=2.0, metavar="W",
                    help="weight of the focus prior's vote in the V2 control row (0: no such row)")
    args = ap.parse_args()
    events = ({f"eventstackmff ({Path(w).parent.name}/{Path(w).name})": {"method": "eventstackmff", "weights": w}
               for w in args.weights} or {"eventstackmff": {"method": "eventstackmff"}})
    v2_prior = ({V2_PRIOR.replace("prior", f"prior x{args.v2_prior:g}"): {"method": "stackmff-v2"}}
                if args.v2_prior else {})
    methods = {**events, "stackmff-v2 (images only)": {"method": "stackmff-v2"}, **v2_prior,
               **{m: {"method": m} for m in CLASSICAL}}
    stacks = held_out(args.stacks, args.size, noise=args.noise, scene=args.scene)
    rows: dict[str, list[tuple]] = {}
    for k, (img, ev, truth, aif, weak, (ceil_img, ceil_index)) in enumerate(stacks):
        panels = [aif, np.abs(ceil_index - truth)]
        mask = synth.texture_mask(aif, quantile=0.4)
        fe = focus_error(ceil_index, truth, mask)
        rows.setdefault(CEILING, []).append((psnr(ceil_img, aif), ssim(ceil_img, aif), fe["mae"], fe["within1"], 0.0,
                                             weak))
        for label, kw in methods.items():
            extra = {"events": ev} if label in events else {}
            t0 = time.perf_counter()
            prior = v2_with_prior(args.v2_prior) if label in v2_prior else nullcontext()
            with warnings.catch_warnings(), prior:
                warnings.simplefilter("ignore")
                r = fuse(img, device="cpu", **kw, **extra)
            dt = time.perf_counter() - t0
            fe = focus_error(r.focus_map, truth, mask)
            rows.setdefault(label, []).append((psnr(r.all_in_focus, aif), ssim(r.all_in_focus, aif), fe["mae"],
                                               fe["within1"], dt, weak))
            if label in events or label.startswith("stackmff-v2") or label == "wavelet":
                panels += [r.all_in_focus, np.abs(r.focus_map - truth)]
        if args.png:
            save_montage(Path(args.png) / f"stack{k:02d}_noise-{args.noise}.png", panels)
    n_weak = sum(s[4] for s in stacks)
    print(f"\nHeld-out image + event stacks: {len(stacks)} ({n_weak} weakly textured), {args.size} px, N 6-12, "
          f"noise {args.noise}, scenes {args.scene or 'all kinds'}\n")
    v2 = [r[0] for r in rows["stackmff-v2 (images only)"]]
    weaker = [r[0] < v for r, v in zip(rows["wavelet"], v2)]  # the prior's own measure behind V2 on this stack
    for r in rows.values():
        r[:] = [(*x, w) for x, w in zip(r, weaker)]
    print(f"Stacks where the wavelet measure (the prior's) is behind V2: {sum(weaker)} of {len(weaker)}\n")
    print("| group | method | PSNR dB | SSIM | focus MAE | within ±1 | s/stack |\n|---|---|---|---|---|---|---|")
    for group, pick in (("all", lambda r: True), ("weak texture", lambda r: r[5]),
                        ("measure behind V2", lambda r: r[6])):
        if not any(pick(r) for r in rows["wavelet"]):
            continue
        classical = {m: np.mean([r[0] for r in rows[m] if pick(r)]) for m in CLASSICAL}
        best = max(classical, key=classical.get)
        for label, vals in rows.items():
            if label in CLASSICAL and label != best:
                continue
            sel = [r for r in vals if pick(r)]
            if not sel:
                continue
            a = np.asarray([r[:5] for r in sel], float).mean(0)
            name = f"{label} (best classical)" if label == best else label
            print(f"| {group} | {name} | {a[0]:.2f} | {a[1]:.4f} | {a[2]:.3f} | {a[3]:.3f} | {a[4]:.2f} |")
    paired(rows, events)


def paired(rows: dict[str, list[tuple]], events: dict[str, dict], draws: int = 10000) -> None:
    """Per stack, the event model's PSNR minus V2's on the same stack: the mean and a 95% bootstrap interval
    (stacks resampled), per group. A mean difference whose interval holds 0 is a tie on these stacks."""
    rng = np.random.default_rng(0)
    v2 = rows["stackmff-v2 (images only)"]
    print("\nPaired, per stack: event model PSNR - V2 PSNR (dB), mean [95% bootstrap interval], stacks ahead\n")
    print("| group | method | stacks | mean | interval | ahead / level / behind |\n|---|---|---|---|---|---|")
    for group, pick in (("all", lambda r: True), ("weak texture", lambda r: r[5]),
                        ("measure behind V2", lambda r: r[6])):
        for label in events:
            d = np.asarray([e[0] - b[0] for e, b in zip(rows[label], v2) if pick(b)])
            if not len(d):
                continue
            boot = d[rng.integers(0, len(d), (draws, len(d)))].mean(1)
            lo, hi = np.percentile(boot, [2.5, 97.5])
            print(f"| {group} | {label} | {len(d)} | {d.mean():+.3f} | [{lo:+.3f}, {hi:+.3f}] | "
                  f"{int((d > 0.005).sum())} / {int((np.abs(d) <= 0.005).sum())} / {int((d < -0.005).sum())} |")


if __name__ == "__main__":
    main()
