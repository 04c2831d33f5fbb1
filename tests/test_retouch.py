"""Retouch in the core and the CLI (issue 27): painted pixels are the painted slice's exactly and nothing
else changes (uint16 RGB, a lazy stack, an aligned result, a time series); a soft result's painted edge is
feathered; bad labels and a wrong stack are one line; `stackmff retouch` replays a saved mask on a
re-fused result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_align import moved_stack  # noqa: E402

from napari_stackmff.cli import main  # noqa: E402
from napari_stackmff.core import fuse, load_stack  # noqa: E402
from napari_stackmff.core.errors import StackMFFError  # noqa: E402
from napari_stackmff.core.retouch import FEATHER_PX, retouch  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402


@pytest.fixture(scope="module")
def rgb16():
    s = synth.make_sample("cells", n=6, size=80, seed=11)
    slices = np.stack([s.slices, s.slices // 2 + 500, 65535 - s.slices], -1)  # uint16 RGB
    return s, slices


def _labels(shape, boxes):
    lab = np.zeros(shape, np.int32)
    for (ys, xs), k in boxes:
        lab[ys, xs] = k
    return lab


def _check_hard(stack, auto, out, lab):
    m = lab > 0
    for k in np.unique(lab[m]):
        sel = lab == k
        np.testing.assert_array_equal(out.all_in_focus[sel], stack[k - 1][sel])
        assert np.all(out.focus_map[sel] == k - 1)
    np.testing.assert_array_equal(out.all_in_focus[~m], auto.all_in_focus[~m])
    np.testing.assert_array_equal(out.focus_map[~m], auto.focus_map[~m])
    np.testing.assert_array_equal(out.confidence[~m], auto.confidence[~m])
    assert np.all(out.confidence[m] == 1.0)
    np.testing.assert_array_equal(out.edits, lab)


def test_painted_pixels_are_the_painted_slice_uint16_rgb(rgb16) -> None:
    _, slices = rgb16
    auto = fuse(slices, "wavelet", z_step=2.5)
    keep = auto.all_in_focus.copy()
    lab = _labels((80, 80), [((slice(5, 30), slice(10, 50)), 2), ((slice(40, 70), slice(30, 75)), 6)])
    out = retouch(slices, auto, lab, z_step=2.5)
    assert out.all_in_focus.dtype == np.uint16 and out.all_in_focus.shape == (80, 80, 3)
    _check_hard(slices, auto, out, lab)
    np.testing.assert_array_equal(auto.all_in_focus, keep)  # the automatic result is not touched
    np.testing.assert_allclose(out.height_map[lab == 6], 5 * 2.5)  # height follows: slice 5 at 12.5
    assert auto.edits is None and out.blend == "hard"
    # Painted twice in small tiles: the same as in one go.
    again = retouch(slices, auto, lab, tile=16, z_step=2.5)
    np.testing.assert_array_equal(again.all_in_focus, out.all_in_focus)


def test_soft_result_feathers_the_painted_edge_only(rgb16) -> None:
    _, slices = rgb16
    auto = fuse(slices, "wavelet", blend="soft")
    lab = _labels((80, 80), [((slice(20, 60), slice(20, 60)), 4)])
    out = retouch(slices, auto, lab)
    m = lab > 0
    square = np.ones((3, 3), bool)
    deep = ndi.binary_erosion(m, square, iterations=FEATHER_PX)
    far = ~ndi.binary_dilation(m, square, iterations=FEATHER_PX)
    np.testing.assert_array_equal(out.all_in_focus[deep], slices[3][deep])
    np.testing.assert_array_equal(out.all_in_focus[far], auto.all_in_focus[far])
    ring = ~deep & ~far
    mixed = (out.all_in_focus[ring] != slices[3][ring]).any(-1) & (out.all_in_focus[ring] != auto.all_in_focus[ring]).any(-1)
    assert mixed.mean() > 0.5  # a ramp between the two, not a hard cut
    assert np.all(out.focus_map[m] == 3)


def test_lazy_stack_is_read_in_windows(rgb16, tmp_path) -> None:
    _, slices = rgb16
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, slices, photometric="rgb")
    lazy = load_stack(path, lazy=True)
    assert not isinstance(lazy.data, np.ndarray) or isinstance(lazy.data, np.memmap)
    auto = fuse(lazy, "variance")
    lab = _labels((80, 80), [((slice(0, 80), slice(60, 80)), 1)])
    out = retouch(lazy, auto, lab, tile=32)
    _check_hard(slices, auto, out, lab)
    assert retouch(str(path), auto, lab).all_in_focus.tobytes() == out.all_in_focus.tobytes()  # a path too


def test_aligned_result_takes_the_aligned_slice(tmp_path) -> None:
    from napari_stackmff.core.fusion.align import align_stack
    from napari_stackmff.core.io.stack import FocalStack

    _, moved, _ = moved_stack(103, 192, "cells")
    auto = fuse(moved, "variance", align="similarity")
    crop = auto.alignment[0]["crop"]
    shape = auto.focus_map.shape
    assert shape != moved.shape[1:] and shape == (crop["y"][1] - crop["y"][0], crop["x"][1] - crop["x"][0])
    lab = _labels(shape, [((slice(10, 60), slice(20, 90)), 1), ((slice(70, 120), slice(5, 50)), moved.shape[0])])
    out = retouch(moved, auto, lab)
    warped, _ = align_stack(FocalStack(moved), "similarity")  # what fusion fused, on the cropped grid
    _check_hard(np.asarray(warped.data), auto, out, lab)
    # A lazy (memory-mapped) input is warped window by window: within one grey level (test_align).
    path = tmp_path / "moved.tif"
    tifffile.imwrite(path, moved)
    lazy = retouch(load_stack(path, lazy=True), auto, lab, tile=48)
    diff = np.abs(lazy.all_in_focus.astype(int) - out.all_in_focus.astype(int))
    assert diff.max() <= 1 and np.array_equal(lazy.focus_map, out.focus_map)
    with pytest.raises(StackMFFError, match="smaller than the alignment's crop"):
        retouch(moved[:, :50, :50], auto, lab)


def test_time_series_per_time_point(rgb16) -> None:
    s, _ = rgb16
    series = np.stack([s.slices, s.slices[::-1]])  # (T, Z, Y, X)
    auto = fuse(series, "variance", axes="TZYX")
    assert auto.focus_map.shape == (2, 80, 80)
    lab = np.zeros((2, 80, 80), np.int32)
    lab[0, 10:30, 10:30] = 2
    lab[1, 40:70, 20:50] = 5
    out = retouch(series, auto, lab, axes="TZYX")
    for t in range(2):
        m = lab[t] > 0
        k = int(lab[t][m][0])
        np.testing.assert_array_equal(out.all_in_focus[t][m], series[t, k - 1][m])
        np.testing.assert_array_equal(out.all_in_focus[t][~m], auto.all_in_focus[t][~m])
    with pytest.raises(StackMFFError, match="one label image per time point"):
        retouch(series, auto, lab[0], axes="TZYX")


def test_bad_labels_and_wrong_stack_are_one_line(rgb16) -> None:
    _, slices = rgb16
    auto = fuse(slices, "variance")
    for lab, match in [(np.zeros((80, 81), int), "do not match"), (np.full((80, 80), 7), "labels run 7..7"),
                       (np.full((80, 80), -1), "labels run -1..-1"), (np.full((80, 80), 0.5), "whole numbers")]:
        with pytest.raises(StackMFFError, match=match) as exc:
            retouch(slices, auto, lab)
        assert "\n" not in str(exc.value)
    with pytest.raises(StackMFFError, match="not the stack this result was fused from") as exc:
        retouch(slices[:5], auto, np.zeros((80, 80), int))
    assert "5 slices, the result 6" in str(exc.value)
    with pytest.raises(StackMFFError, match="uint8 pixels"):
        retouch((slices >> 8).astype(np.uint8), auto, np.zeros((80, 80), int))


def test_cli_replays_a_saved_mask_on_a_refused_result(rgb16, tmp_path, capsys) -> None:
    s, _ = rgb16
    stack_path = tmp_path / "cells.tif"
    tifffile.imwrite(stack_path, s.slices, imagej=True, metadata={"axes": "ZYX", "spacing": 1.5, "unit": "um"})
    out = tmp_path / "out"
    assert main(["-q", "fuse", str(stack_path), "-o", str(out), "--method", "variance"]) == 0
    lab = _labels((80, 80), [((slice(10, 40), slice(10, 70)), 3)])
    tifffile.imwrite(tmp_path / "mask.tif", lab.astype(np.uint16))
    assert main(["retouch", str(out), "--labels", str(tmp_path / "mask.tif")]) == 0
    aif = tifffile.imread(out / "cells_retouched_all_in_focus.tif")
    auto = tifffile.imread(out / "cells_all_in_focus.tif")
    m = lab > 0
    np.testing.assert_array_equal(aif[m], s.slices[2][m])
    np.testing.assert_array_equal(aif[~m], auto[~m])
    info = json.loads((out / "cells_retouched_fusion.json").read_text())
    assert info["retouched"]["pixels_per_slice"] == {"2": int(m.sum())}
    assert info["retouched_from"] == "cells_fusion.json"
    np.testing.assert_allclose(tifffile.imread(out / "cells_retouched_height_map.tif")[m], 3.0)
    # Re-fuse with other settings, then replay the saved mask (it lives in the set it replaces).
    assert main(["-q", "fuse", str(stack_path), "-o", str(out), "--method", "tenengrad", "--overwrite"]) == 0
    assert main(["retouch", str(out), "--labels", str(out / "cells_retouched_edits.tif")]) == 2
    assert "already exist" in capsys.readouterr().err
    assert main(["retouch", str(out), "--labels", str(out / "cells_retouched_edits.tif"), "--overwrite"]) == 0
    aif = tifffile.imread(out / "cells_retouched_all_in_focus.tif")
    auto = tifffile.imread(out / "cells_all_in_focus.tif")
    np.testing.assert_array_equal(aif[m], s.slices[2][m])
    np.testing.assert_array_equal(aif[~m], auto[~m])
    assert json.loads((out / "cells_retouched_fusion.json").read_text())["method"] == "tenengrad"
    # A mask of the wrong shape, or a missing record: one line each.
    tifffile.imwrite(tmp_path / "bad.tif", np.zeros((10, 10), np.uint16))
    assert main(["retouch", str(out), "--labels", str(tmp_path / "bad.tif")]) == 2
    assert main(["retouch", str(tmp_path / "nowhere"), "--labels", str(tmp_path / "mask.tif")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "bad.tif: labels of shape (10, 10)" in err[0] and "nowhere" in err[1]
