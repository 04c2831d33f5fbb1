"""PNG previews a person reads: one stretch per stack (methods compare), a focus map with a colour bar."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_stackmff import fuse, save_result
from napari_stackmff.core.io.preview import colorize, focus_map_picture, stack_display_range
from napari_stackmff.core.io.stack import FocalStack


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_previews_of_two_methods_share_the_stack_stretch(make_synth, tmp_path):
    s = make_synth(3, 8, 128, "natural", "objects", "uint16")
    data = (np.asarray(s.slices) // 32).astype(np.uint16)  # 11-bit camera data in a 16-bit file
    glare = np.full((2, *data.shape[1:]), 4095, np.uint16)  # two flat, saturated slices: never in focus
    data = np.concatenate([data, glare])
    runs = {m: fuse(data, method=m, device="cpu") for m in ("wavelet", "variance")}
    ranges = {m: r.display_range for m, r in runs.items()}
    assert ranges["wavelet"] == ranges["variance"] == stack_display_range(FocalStack(data))
    lo, hi = ranges["wavelet"]
    assert hi == 4095 and lo < hi  # the stack's range, not the all-in-focus image's (which has no glare)
    assert np.percentile(runs["wavelet"].all_in_focus, 99.9) < 0.8 * hi  # a per-image stretch would differ
    pngs = {}
    for m, r in runs.items():
        written = save_result(r, tmp_path, m)
        pngs[m] = _png(written["all_in_focus_png"])
        info = json.loads(written["info"].read_text())
        assert f"{lo:.6g}" in info["previews"]["all_in_focus_png"]
    a, b = runs["wavelet"].all_in_focus, runs["variance"].all_in_focus
    same = a == b
    assert 0.2 < same.mean() < 1.0  # the methods agree on part of the image and differ elsewhere
    np.testing.assert_array_equal(pngs["wavelet"][same], pngs["variance"][same])  # same pixel, same grey
    # and the grey is the stack's linear stretch
    expect = np.clip((a.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255 + 0.5
    np.testing.assert_array_equal(pngs["wavelet"], expect.astype(np.uint8))


def test_eight_bit_previews_are_the_pixels(make_synth, tmp_path):
    s = make_synth(4, 6, 96, "natural", "plane", "uint8")
    r = fuse(np.asarray(s.slices), method="variance", device="cpu")
    assert r.display_range is None
    np.testing.assert_array_equal(_png(save_result(r, tmp_path, "s")["all_in_focus_png"]), r.all_in_focus)


def test_focus_map_png_has_a_colour_bar_from_first_to_last_slice(make_synth, tmp_path):
    s = make_synth(5, 10, 160, "natural", "objects", "uint8")
    r = fuse(np.asarray(s.slices), method="wavelet", device="cpu", z_step=2.5)
    png = _png(save_result(r, tmp_path, "s")["focus_map_png"])
    h, w = r.focus_map.shape
    assert png.shape[0] == h and png.shape[1] > w + 20  # a legend panel on the right
    np.testing.assert_array_equal(png[:, :w], colorize(r.focus_map, 0, 9))  # the map itself unchanged
    panel = png[:, w:].astype(int)
    first, last = colorize(np.array([0.0]), 0, 9)[0], colorize(np.array([9.0]), 0, 9)[0]
    # the bar: a column whose colours run from the last slice's (top) to the first slice's (bottom)
    bar_cols = [x for x in range(panel.shape[1]) if (np.abs(panel[:, x] - first).sum(1) < 6).any()
                and (np.abs(panel[:, x] - last).sum(1) < 6).any()]
    assert bar_cols, "no colour bar spanning the first to the last slice's colour"
    col = panel[:, bar_cols[len(bar_cols) // 2]]
    y_last = np.flatnonzero(np.abs(col - last).sum(1) < 6).min()
    y_first = np.flatnonzero(np.abs(col - first).sum(1) < 6).max()
    assert y_last < y_first  # last slice on top
    dark = (panel.sum(-1) < 200).sum()
    assert dark > 50  # tick labels were drawn (black text on white)


def test_focus_map_picture_labels_physical_z_when_known():
    focus = np.tile(np.linspace(0, 4, 200, dtype=np.float32), (120, 1))
    plain = focus_map_picture(focus, 5)
    with_z = focus_map_picture(focus, 5, z_positions=[0, 1.5, 3, 4.5, 6], unit="um")
    assert with_z.shape[1] > plain.shape[1]  # "4 (6 um)" needs more room than "4"


@pytest.mark.parametrize("shape", [(12, 12), (8, 300)])
def test_focus_map_picture_on_tiny_images(shape):
    out = focus_map_picture(np.zeros(shape, np.float32), 3)
    assert out.shape[0] == shape[0] and out.dtype == np.uint8


def test_lazy_tiff_display_range_matches_in_memory(tmp_path, make_synth):
    s = make_synth(6, 6, 128, "natural", "objects", "uint16")
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.asarray(s.slices), photometric="minisblack")
    eager = fuse(path, method="variance", device="cpu", lazy=False)
    lazy = fuse(path, method="variance", device="cpu", lazy=True)
    assert eager.display_range == lazy.display_range
