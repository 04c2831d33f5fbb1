"""Retouch speed per brush stroke on 2k x 2k stacks, and before/after screenshots (issue 27).

Run:  xvfb-run -a python benchmarks/bench_retouch.py [--size 2048] [--slices 20] [--dabs 40] [--shots]

Per stack (gray uint16, RGB uint8; automatic result: variance, hard and soft blend), one run, side by side:

* ``core box``: :meth:`Retoucher.update` on the box one brush dab changed (what the widget does);
* ``core whole``: :func:`retouch` of the whole label image after each dab (the naive way, the baseline);
* ``napari dab``: ``Labels.paint`` in a real viewer with the Retouch panel listening: napari's own label
  update, our diff of the labels, the box update and the refresh of the result layers (the time a user
  waits per dab, less the GPU's draw of the next frame; under Xvfb with Mesa's software GL here);
* ``napari undo``: ``Labels.undo`` of one stroke of ``--dabs`` dabs (one history item), same path.

A stroke is ``--dabs`` dabs of napari's default-ish brush (20 px) along a line; times are the median and
the 90th percentile per dab. ``--shots`` also fuses the rpi pseudoscorpion (default settings), retouches
its leg from slice 3 through the panel and saves canvas screenshots before/after (docs/img).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SCORPION = ROOT.parent / "shared" / "data" / "real_stacks" / "pseudoscorpion_rpi_microscope"
BRUSH = 20


def make_stack(size: int, n: int, rgb: bool, seed: int = 0) -> np.ndarray:
    """A textured scene in focus at a different slice per region (band-limited noise, blurred per slice)."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    base = ndi.gaussian_filter(rng.random((size, size)).astype(np.float32), 1.5)
    depth = ndi.gaussian_filter(rng.random((size // 64, size // 64)), 1.0)
    depth = np.kron((depth - depth.min()) / np.ptp(depth) * (n - 1), np.ones((64, 64)))[:size, :size]
    out = []
    for z in range(n):
        blur = np.abs(depth - z)
        sharp, soft = base, ndi.uniform_filter(base, 9)
        w = np.clip(blur / 3, 0, 1).astype(np.float32)
        out.append(sharp * (1 - w) + soft * w)
    s = np.stack(out)
    s = (s - s.min()) / np.ptp(s)
    if rgb:
        s = np.stack([s, s ** 1.2, s ** 0.8], -1)
        return (s * 255).astype(np.uint8)
    return (s * 60000).astype(np.uint16)


def stroke(size: int, dabs: int, seed: int) -> list[tuple[int, int]]:
    rng = np.random.default_rng(seed)
    y0, x0 = rng.integers(200, size - 200, 2)
    ang = rng.uniform(0, np.pi)
    return [(int(y0 + 8 * i * np.sin(ang)), int(x0 + 8 * i * np.cos(ang))) for i in range(dabs)]


def disc_box(labels: np.ndarray, yx: tuple[int, int], k: int, r: int = BRUSH // 2) -> tuple[slice, slice]:
    y, x = yx
    ys, xs = slice(max(0, y - r), y + r + 1), slice(max(0, x - r), x + r + 1)
    yy, xx = np.ogrid[ys, xs]
    labels[ys, xs][(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    return ys, xs


def _process() -> None:
    """Let Qt deliver what the last call queued (napari's refresh, our listeners): part of the user's wait."""
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()


def stats(ts: list[float]) -> str:
    a = np.array(ts) * 1000
    return f"{np.median(a):7.1f} / {np.percentile(a, 90):7.1f}"


def core_rows(stack: np.ndarray, blend: str, dabs: int) -> dict[str, list[float]]:
    from napari_stackmff.core import fuse
    from napari_stackmff.core.retouch import Retoucher, retouch

    auto = fuse(stack, "variance", align=None, blend=blend)
    rt = Retoucher(stack, auto)
    out = rt.start()
    lab = np.zeros(auto.focus_map.shape, np.uint16)
    box_t, whole_t = [], []
    for i, yx in enumerate(stroke(stack.shape[1], dabs, 1)):
        ys, xs = disc_box(lab, yx, 3)
        t0 = time.perf_counter()
        rt.update(out, lab, 0, ys, xs)
        box_t.append(time.perf_counter() - t0)
        if i < 5:  # the naive way is slow: five dabs say enough
            t0 = time.perf_counter()
            retouch(stack, auto, lab)
            whole_t.append(time.perf_counter() - t0)
    return {"core box": box_t, "core whole": whole_t}


def napari_rows(stack: np.ndarray, blend: str, dabs: int, rgb: bool) -> dict[str, list[float]]:
    import napari

    from napari_stackmff._widgets._outputs import OutputOptions
    from napari_stackmff._widgets.retouch import RetouchPanel, RetouchSource
    from napari_stackmff._widgets._inputs import layer_stack, z_info
    from napari_stackmff.core import fuse

    viewer = napari.Viewer(show=True)
    try:
        layer = viewer.add_image(stack, name="stack", rgb=rgb)
        axes = "ZYXC" if rgb else "ZYX"
        z = z_info(layer, axes, 0.0, "µm")
        st = layer_stack(layer, axes, z)
        auto = fuse(st, "variance", align=None, blend=blend)
        panel = RetouchPanel(viewer)
        panel.set_source(RetouchSource(layer=layer, source_id="bench", axes=axes, stack=st, result=auto,
                                       outputs=OutputOptions(), z_positions=z.positions), {})
        labels = panel.start()
        _process()
        paint_t, inner = [], []
        labels.brush_size = BRUSH
        labels._begin_stroke()
        for yx in stroke(stack.shape[1], dabs, 2):
            t0 = time.perf_counter()
            labels.paint(yx, 4)
            _process()
            paint_t.append(time.perf_counter() - t0)
            inner.append(panel.last_update_s)
        labels._commit_stroke()
        t0 = time.perf_counter()
        labels.undo()
        _process()
        undo_t = [time.perf_counter() - t0]
        return {"napari dab": paint_t, "  of which ours": inner, "napari undo": undo_t}
    finally:
        viewer.close()


def shots(out_dir: Path) -> None:
    """Pseudoscorpion: default fusion, the leg retouched from slice 3 through the panel, canvas before/after."""
    import napari
    from skimage.io import imread, imsave

    from napari_stackmff._widgets._inputs import layer_stack, z_info
    from napari_stackmff._widgets._outputs import OutputOptions
    from napari_stackmff._widgets.retouch import RetouchPanel, RetouchSource
    from napari_stackmff.core import fuse

    files = sorted(SCORPION.glob("scorpion_lapse_*.png"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    stack = np.stack([imread(f) for f in files])
    viewer = napari.Viewer(show=True)
    viewer.window.resize(1100, 900)
    try:
        layer = viewer.add_image(stack, name="pseudoscorpion", rgb=True)
        z = z_info(layer, "ZYXC", 0.0, "µm")
        st = layer_stack(layer, "ZYXC", z)
        t0 = time.perf_counter()
        auto = fuse(st, "auto", align="auto")
        print(f"pseudoscorpion {stack.shape}: fused (default settings) in {time.perf_counter() - t0:.1f} s; "
              f"decision {auto.decision}; aligned {bool(auto.alignment and auto.alignment[0].get('aligned'))}")
        panel = RetouchPanel(viewer)
        panel.set_source(RetouchSource(layer=layer, source_id="shots", axes="ZYXC", stack=st, result=auto,
                                       outputs=OutputOptions(), z_positions=z.positions), {})
        labels = panel.start()
        from napari_stackmff.core.fusion.align import crop_offset

        oy, ox = crop_offset(auto.alignment)
        leg = (slice(1100 - oy, 1700 - oy), slice(1300 - ox, 1900 - ox))  # issue 26's crop, on the result grid
        for lyr in viewer.layers:
            lyr.visible = lyr.name.endswith("all-in-focus")
        viewer.camera.center = (1400, 1600)
        viewer.camera.zoom = 1.3
        out_dir.mkdir(parents=True, exist_ok=True)
        before = viewer.screenshot(canvas_only=True)
        # Paint the leg from slice 3, where its outline and hairs are crisp (issue 26's slices PNG), as a user
        # would with a wide brush along the leg: here the leg's dark pixels in that slice, widened by 25 px,
        # written through the labels API as one edit (one undo item).
        from scipy import ndimage as ndi

        k = 3
        sl = panel.retoucher.stack.read_window(k, 0, leg).mean(-1)
        mask = np.zeros(labels.data.shape, bool)
        mask[leg] = ndi.binary_dilation(sl < 0.5 * np.percentile(sl, 95), iterations=25)
        idx = np.nonzero(mask)
        t0 = time.perf_counter()
        labels.data_setitem(idx, k + 1)
        _process()
        took = time.perf_counter() - t0
        labels.visible = True
        labels.opacity = 0.0
        after = viewer.screenshot(canvas_only=True)
        labels.opacity = 0.35
        outlined = viewer.screenshot(canvas_only=True)
        imsave(out_dir / "issue27_leg_painted.png", outlined[::2, ::2, :3], check_contrast=False)  # where painted
        side = np.concatenate([before[..., :3], np.full((before.shape[0], 8, 3), 255, np.uint8), after[..., :3]], 1)
        imsave(out_dir / "issue27_leg_before_after.png", side, check_contrast=False)
        print(f"leg painted from slice {k} ({idx[0].size:,} px, one edit) in {took * 1000:.0f} ms; screenshots in "
              f"{out_dir}")
    finally:
        viewer.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--slices", type=int, default=20)
    p.add_argument("--dabs", type=int, default=40)
    p.add_argument("--no-napari", action="store_true", help="core timings only (no display needed)")
    p.add_argument("--shots", action="store_true", help="also the pseudoscorpion screenshots (docs/img)")
    p.add_argument("--only-shots", action="store_true", help="only the pseudoscorpion screenshots")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    a = p.parse_args()
    if a.only_shots:
        shots(a.out)
        return
    print(f"{a.size}x{a.size}, {a.slices} slices, brush {BRUSH} px, {a.dabs} dabs per stroke; ms per dab: "
          "median / 90th percentile")
    print(f"| stack | blend | {' | '.join(['core box', 'core whole', 'napari dab', 'of which ours', 'napari undo (stroke)'])} |")
    print("|---|---|---|---|---|---|---|")
    for rgb in (False, True):
        stack = make_stack(a.size, a.slices, rgb)
        name = f"{'RGB uint8' if rgb else 'gray uint16'}"
        for blend in ("hard", "soft"):
            rows = core_rows(stack, blend, a.dabs)
            if not a.no_napari:
                rows.update(napari_rows(stack, blend, a.dabs, rgb))
            cells = [stats(rows[k]) if k in rows else "-" for k in
                     ("core box", "core whole", "napari dab", "  of which ours", "napari undo")]
            print(f"| {name} | {blend} | {' | '.join(cells)} |", flush=True)
    if a.shots:
        shots(a.out)


if __name__ == "__main__":
    main()
