"""The Retouch step of the fusion widget with a real viewer (issue 27): paint a region programmatically
through napari's own labels API, the result layer changes there only and takes the painted slice's
pixels, undo brings the automatic pixels back, pick takes the stack's current slice, the peek shows
the chosen slice, Save writes the set with its edit mask, and a re-fuse replays the painting."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fixtures import isolated_settings, stackmff_plugin, wait_idle  # noqa: E402,F401

from napari_stackmff._widgets import FusionWidget  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402

pytestmark = pytest.mark.usefixtures("stackmff_plugin")


@pytest.fixture(scope="module")
def sample():
    return synth.make_sample("cells", n=8, size=96, seed=3)


def _fused(make_napari_viewer, qtbot, data, name="cells", blend="hard", rgb=False):
    viewer = make_napari_viewer()
    stack = viewer.add_image(data, name=name, rgb=rgb)
    widget = FusionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="All-in-focus fusion")
    widget.select_method("variance")
    widget._select_data(widget.blend_combo, blend)
    widget._select_data(widget.align_combo, None)
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.last_result is not None
    return viewer, stack, widget


def test_paint_changes_only_the_painted_region_and_undo_restores(make_napari_viewer, qtbot, isolated_settings,
                                                                 sample):
    viewer, stack, widget = _fused(make_napari_viewer, qtbot, sample.slices)
    panel = widget.retouch
    assert panel.isVisibleTo(widget) and panel.start_button.isEnabled()
    auto = widget.last_result
    aif_layer = viewer.layers["cells all-in-focus"]
    before = np.array(aif_layer.data, copy=True)
    fmap_before = np.array(auto.focus_map, copy=True)
    labels = panel.start()
    assert labels is not None and labels.data.shape == (96, 96)
    # Pick the slice the automatic result used least in the box, so the edit must change pixels.
    box = (slice(20, 50), slice(30, 70))
    k = int(np.argmin(np.bincount(auto.index[box].ravel(), minlength=8)[:8]))
    panel.slice_spin.setValue(k)
    assert labels.selected_label == k + 1
    labels.paint((35, 50), k + 1)  # one brush dab through napari's own API (records undo history)
    painted = np.asarray(labels.data) == k + 1
    assert painted.sum() > 50
    now = np.asarray(viewer.layers["cells all-in-focus"].data)
    np.testing.assert_array_equal(now[painted], sample.slices[k][painted])  # the painted slice, exactly
    np.testing.assert_array_equal(now[~painted], before[~painted])  # nothing else moved
    assert (now[painted] != before[painted]).any()
    fmap = panel.out.focus_map
    assert np.all(fmap[painted] == k) and np.array_equal(fmap[~painted], fmap_before[~painted])
    assert np.all(panel.out.confidence[painted] == 1.0)
    assert panel.last_update_s > 0
    labels.undo()  # napari's history: the automatic pixels come back
    np.testing.assert_array_equal(np.asarray(viewer.layers["cells all-in-focus"].data), before)
    np.testing.assert_array_equal(panel.out.focus_map, fmap_before)
    labels.redo()
    np.testing.assert_array_equal(np.asarray(viewer.layers["cells all-in-focus"].data)[painted],
                                  sample.slices[k][painted])
    # Pick from here: the slice the stack layer shows now.
    viewer.dims.set_current_step(0, 5)
    assert panel.pick_slice() == 5 and labels.selected_label == 6
    # Peek: the chosen slice's pixels around the cursor.
    pixels, (y0, x0), _ = panel.peek_window((40.0, 40.0))
    h, w = pixels.shape
    np.testing.assert_array_equal(pixels, sample.slices[5][y0:y0 + h, x0:x0 + w])
    panel._show_peek(True)
    assert viewer.layers["retouch peek"].visible
    panel._show_peek(False)
    assert not viewer.layers["retouch peek"].visible


def test_save_writes_the_set_and_the_mask(make_napari_viewer, qtbot, isolated_settings, sample, tmp_path):
    viewer, stack, widget = _fused(make_napari_viewer, qtbot, sample.slices)
    panel = widget.retouch
    labels = panel.start()
    labels.paint((30, 30), 3)
    written = panel.save(tmp_path, "cells_retouched")
    import tifffile

    mask = tifffile.imread(written["edits"])
    np.testing.assert_array_equal(mask, np.asarray(labels.data))
    aif = tifffile.imread(written["all_in_focus"])
    np.testing.assert_array_equal(aif[mask == 3], sample.slices[2][mask == 3])
    info = json.loads(written["info"].read_text())
    assert info["retouched"]["edited_pixels"] == int((mask > 0).sum())
    assert info["retouched"]["edits"] == written["edits"].name
    with pytest.raises(Exception, match="already exist"):
        panel.save(tmp_path, "cells_retouched")  # never replaced without asking


def test_soft_result_feathers_and_a_refuse_replays_the_painting(make_napari_viewer, qtbot, isolated_settings, sample):
    rgb = np.stack([sample.slices, sample.slices // 2, sample.slices // 3], -1)
    viewer, stack, widget = _fused(make_napari_viewer, qtbot, rgb, name="rgb", blend="soft", rgb=True)
    panel = widget.retouch
    labels = panel.start()
    labels.brush_size = 30
    labels.paint((48, 48), 5)
    mask = np.asarray(labels.data) == 5
    now = np.asarray(viewer.layers["rgb all-in-focus"].data)
    from scipy import ndimage as ndi

    from napari_stackmff.core.retouch import FEATHER_PX

    deep = ndi.binary_erosion(mask, np.ones((3, 3), bool), iterations=FEATHER_PX)  # the feather's square reach
    np.testing.assert_array_equal(now[deep], rgb[4][deep])  # deep inside: the slice exactly
    rim = mask & ~deep
    assert (now[rim] != rgb[4][rim]).any()  # the edge is feathered on a soft result
    # Re-fuse with another measure: the painting is applied to the new result.
    widget.select_method("tenengrad")
    widget.run()
    wait_idle(qtbot, widget)
    now = np.asarray(viewer.layers["rgb all-in-focus"].data)
    np.testing.assert_array_equal(now[deep], rgb[4][deep])
    assert widget.last_result.method == "tenengrad" and panel.out.method == "tenengrad"
