"""The fusion widget: right layers (shape, dtype, scale), accuracy on a known stack, re-runs that
update instead of piling up, cancel without leftovers, results tied to their input layer; the
status names the method that runs, the canvas is fitted once, the 3-D surface opens tilted."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fixtures import isolated_settings, stackmff_plugin, wait_idle  # noqa: E402,F401

from napari_stackmff._widgets import FusionWidget  # noqa: E402
from napari_stackmff._widgets._layers import RESULT_KEY  # noqa: E402
from napari_stackmff.core.training import synth  # noqa: E402
from napari_stackmff.core.fusion.dispatch import fuse, resolve_method  # noqa: E402

pytestmark = pytest.mark.usefixtures("stackmff_plugin")


@pytest.fixture(scope="module")
def sample():
    return synth.make_sample("cells", n=10, size=128, seed=7)


def _widget(viewer, qtbot) -> FusionWidget:
    widget = FusionWidget(viewer)
    viewer.window.add_dock_widget(widget, name="All-in-focus fusion")
    return widget


def _results(viewer):
    return [layer for layer in viewer.layers if RESULT_KEY in layer.metadata]


def _focus_map(viewer, source_name):
    """The focus-map layer made from the layer named ``source_name`` (its name ends in its unit)."""
    (layer,) = [layer for layer in _results(viewer) if layer.metadata[RESULT_KEY]["kind"] == "focus_map"
                and layer.name.startswith(f"{source_name} focus map")]
    return layer


def test_fuse_synthetic_stack(make_napari_viewer, qtbot, isolated_settings, sample):
    viewer = make_napari_viewer()
    stack = viewer.add_image(sample.slices, name="cells", scale=(2.0, 0.5, 0.25), translate=(0, 10, 20),
                             contrast_limits=(100, 40000))
    widget = _widget(viewer, qtbot)
    assert widget.layer_combo.current_layer() is stack
    widget.select_method("wavelet")
    widget.z_step.setValue(2.0)
    widget.confidence_check.setChecked(True)
    widget.surface_check.setChecked(True)
    widget.run()
    assert widget.running and widget.run_button.text() == "Cancel"
    wait_idle(qtbot, widget)

    aif = viewer.layers["cells all-in-focus"]
    fmap = viewer.layers["cells focus map (µm)"]  # the unit in the name: it labels the colour bar
    assert aif.data.shape == (128, 128) and aif.data.dtype == np.uint16
    np.testing.assert_allclose(aif.scale, [0.5, 0.25])
    np.testing.assert_allclose(aif.translate, [10, 20])
    assert tuple(aif.contrast_limits) == (100, 40000)
    assert fmap.data.shape == (128, 128) and fmap.data.dtype == np.float32
    np.testing.assert_allclose(fmap.scale, [0.5, 0.25])
    assert fmap.colormap.name == "viridis"
    assert fmap.metadata["stackmff"]["units"] == "µm"  # z step known -> height in µm
    assert tuple(fmap.contrast_limits) == (0.0, 18.0)
    # Focus decided right on textured pixels (truth known from the renderer).
    result = widget.last_result
    mask = synth.texture_mask(sample.aif, quantile=0.5)
    within = np.abs(result.focus_map - sample.focus_index)[mask] <= 1
    assert within.mean() >= 0.85, within.mean()
    np.testing.assert_allclose(fmap.data, result.focus_map * 2.0, atol=1e-4)
    conf = viewer.layers["cells confidence"]
    assert conf.data.shape == (128, 128) and tuple(conf.contrast_limits) == (0.0, 1.0)
    surface = viewer.layers["cells height surface"]
    np.testing.assert_allclose(surface.scale, [2.0, 0.5, 0.25])
    assert surface.data[0].shape[1] == 3

    # Re-running updates the same layers instead of adding new ones.
    n_layers = len(viewer.layers)
    widget.confidence_check.setChecked(False)
    widget.select_method("laplacian")
    widget.run()
    wait_idle(qtbot, widget)
    assert viewer.layers["cells all-in-focus"] is aif
    assert len(viewer.layers) == n_layers - 1  # confidence unticked: its stale layer is removed
    assert len(_results(viewer)) == 3
    assert widget.last_result.method == "laplacian"


def test_rgb_and_timelapse(make_napari_viewer, qtbot, isolated_settings, sample):
    viewer = make_napari_viewer()
    rgb = np.stack([sample.slices[:, :64, :64] // 257] * 3, axis=-1).astype(np.uint8)
    viewer.add_image(rgb, name="colour", rgb=True)
    tl = np.stack([sample.slices[:, :48, :48]] * 2)  # (T, Z, Y, X)
    viewer.add_image(tl, name="timelapse")
    widget = _widget(viewer, qtbot)
    widget.select_method("variance")
    for name, shape in (("colour", (64, 64, 3)), ("timelapse", (2, 48, 48))):
        widget.layer_combo.set_current_layer(viewer.layers[name])
        if name == "timelapse":
            assert widget.axes_combo.currentData() == "TZYX"
        else:
            assert widget.channel_combo.count() == 4  # luma + R, G, B
        widget.run()
        wait_idle(qtbot, widget)
        aif = viewer.layers[f"{name} all-in-focus"]
        assert aif.data.shape == shape and aif.data.dtype == viewer.layers[name].data.dtype
        assert aif.rgb == (name == "colour")
        assert _focus_map(viewer, name).data.shape == shape[:3] if name == "timelapse" else (64, 64)


def test_multichannel_uses_chosen_channel(make_napari_viewer, qtbot, isolated_settings, sample):
    viewer = make_napari_viewer()
    data = np.stack([sample.slices[:, :64, :64], np.zeros_like(sample.slices[:, :64, :64])])  # (C, Z, Y, X)
    viewer.add_image(data, name="two channels", metadata={"stackmff": {"axes": "CZYX"}})
    widget = _widget(viewer, qtbot)
    widget.select_method("wavelet")
    assert widget.axes_combo.currentData() == "CZYX"
    widget.channel_combo.setCurrentIndex(1)  # channel 0
    widget.run()
    wait_idle(qtbot, widget)
    aif = viewer.layers["two channels all-in-focus"]
    assert aif.data.shape == (2, 64, 64) and (aif.data[1] == 0).all()


def test_cancel_leaves_no_layer(make_napari_viewer, qtbot, isolated_settings):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    big = rng.integers(0, 4000, (48, 512, 512), dtype=np.uint16)
    viewer.add_image(big, name="big")
    widget = _widget(viewer, qtbot)
    widget.select_method("wavelet")
    widget.run()
    qtbot.waitUntil(lambda: widget.progress_bar.value() >= 1, timeout=20_000)
    t0 = time.perf_counter()
    widget.cancel()
    wait_idle(qtbot, widget, timeout=10_000)
    assert time.perf_counter() - t0 < 2.0
    assert [layer.name for layer in viewer.layers] == ["big"]
    assert "Cancelled" in widget.status.text() and widget.run_button.text() == "Fuse"


def test_result_follows_input_not_selection(make_napari_viewer, qtbot, isolated_settings, sample):
    viewer = make_napari_viewer()
    a = viewer.add_image(sample.slices, name="A")
    viewer.add_image(sample.slices[:, :32, :32], name="B")
    widget = _widget(viewer, qtbot)
    widget.select_method("wavelet")
    widget.layer_combo.set_current_layer(a)
    widget.run()
    widget.layer_combo.set_current_layer(viewer.layers["B"])  # user moves on while it runs
    a.name = "A renamed"
    wait_idle(qtbot, widget)
    aif = [layer for layer in _results(viewer) if layer.metadata[RESULT_KEY]["kind"] == "all_in_focus"]
    assert len(aif) == 1 and aif[0].data.shape == (128, 128)
    assert aif[0].metadata[RESULT_KEY]["source"] == str(a.unique_id)
    assert aif[0].name.startswith("A renamed")


def test_bad_input_is_one_line(make_napari_viewer, qtbot, isolated_settings, sample, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(sample.slices[:, :32, :32], name="tiny")
    widget = _widget(viewer, qtbot)
    shown = []
    monkeypatch.setattr("napari_stackmff._widgets.fuse.show_error", shown.append)
    widget.channel_combo.addItem("bogus", 5)
    widget.channel_combo.setCurrentIndex(widget.channel_combo.count() - 1)
    widget.run()
    wait_idle(qtbot, widget)
    assert len(shown) == 1 and "channel 5" in shown[0] and "\n" not in shown[0]
    assert len(viewer.layers) == 1


def test_settings_persist(make_napari_viewer, qtbot, isolated_settings):
    viewer = make_napari_viewer()
    w1 = _widget(viewer, qtbot)
    w1.select_method("tenengrad")
    w1.window_spin.setValue(15)
    w1.confidence_check.setChecked(True)
    w2 = FusionWidget(viewer)
    qtbot.addWidget(w2)
    assert w2.method_combo.currentData() == "tenengrad"
    assert w2.window_spin.value() == 15 and w2.confidence_check.isChecked()


def _elevation_deg(viewer) -> float:
    """Angle between the 3-D camera's line of sight and the (y, x) image plane (90 = top-down)."""
    return float(np.degrees(np.arcsin(min(1.0, abs(viewer.scene.camera.view_direction[0])))))


def test_status_names_resolved_method_and_shows_progress(make_napari_viewer, qtbot, isolated_settings, sample,
                                                           monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(sample.slices[:, :64, :64], name="cells")
    widget = _widget(viewer, qtbot)
    widget.select_method("auto")
    gate = threading.Event()

    def gated_fuse(*args, progress, **kwargs):
        """The real fuse, after one message such as the core sends (held until the test has looked)."""
        progress(0, 4, "measuring focus (about 3 s left)")
        gate.wait(20)
        return fuse(*args, progress=progress, **kwargs)

    monkeypatch.setattr("napari_stackmff._widgets.fuse.fuse", gated_fuse)
    widget.run()
    chosen = resolve_method("auto")
    assert widget.status.text() == f"Fusing cells with {chosen}…"
    assert "auto" not in widget.status.text()
    qtbot.waitUntil(lambda: "measuring" in widget.status.text(), timeout=10_000)
    assert widget.status.text() == f"Fusing cells with {chosen}: measuring focus (about 3 s left)"
    gate.set()
    wait_idle(qtbot, widget)
    assert widget.last_result.method == chosen and widget.status.text().startswith(f"Done: cells fused with {chosen}")


def test_canvas_fitted_on_first_result_only(make_napari_viewer, qtbot, isolated_settings, sample):
    viewer = make_napari_viewer()
    viewer.add_image(sample.slices, name="cells")
    widget = _widget(viewer, qtbot)
    widget.select_method("variance")
    widget.surface_check.setChecked(False)
    camera = viewer.scene.camera
    camera.zoom, camera.center = 0.05, (0.0, 500.0, 500.0)  # far off: as if the user had moved
    widget.run()
    wait_idle(qtbot, widget)
    fitted = (camera.zoom, tuple(camera.center))
    assert fitted[0] != pytest.approx(0.05) and fitted[1][1:] != pytest.approx((500.0, 500.0))
    viewer.reset_view()  # what the widget did: the same numbers again
    assert camera.zoom == pytest.approx(fitted[0])
    np.testing.assert_allclose(camera.center, fitted[1])

    camera.zoom, camera.center = 3.0, (0.0, 20.0, 30.0)  # the user zooms in on a detail
    widget.select_method("laplacian")
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.last_result.method == "laplacian"
    assert camera.zoom == pytest.approx(3.0)
    np.testing.assert_allclose(camera.center[1:], (20.0, 30.0))


def test_surface_opens_oblique_in_3d_once(make_napari_viewer, qtbot, isolated_settings, sample):
    viewer = make_napari_viewer()
    viewer.add_image(sample.slices[:, :64, :64], name="cells")
    widget = _widget(viewer, qtbot)
    widget.select_method("variance")
    widget.surface_check.setChecked(True)
    widget.run()
    wait_idle(qtbot, widget)
    assert "surface" in widget.result_layers
    viewer.dims.ndisplay = 3
    assert 25.0 <= _elevation_deg(viewer) <= 35.0  # oblique, not top-down (90°)

    viewer.scene.camera.angles = (0.0, 0.0, 90.0)  # the user's own choice is kept from now on
    chosen = tuple(viewer.scene.camera.angles)
    viewer.dims.ndisplay = 2
    viewer.dims.ndisplay = 3
    widget.run()
    wait_idle(qtbot, widget)
    np.testing.assert_allclose(viewer.scene.camera.angles, chosen, atol=1e-6)

    # Results arriving while the viewer is already in 3-D: tilted at once.
    viewer2 = make_napari_viewer()
    viewer2.add_image(sample.slices[:, :64, :64], name="cells")
    viewer2.dims.ndisplay = 3
    assert _elevation_deg(viewer2) > 80.0  # napari's own 3-D view: top-down
    widget2 = _widget(viewer2, qtbot)
    widget2.select_method("variance")
    widget2.surface_check.setChecked(True)
    widget2.run()
    wait_idle(qtbot, widget2)
    assert 25.0 <= _elevation_deg(viewer2) <= 35.0


def test_aligned_soft_fusion_overlays_the_input(make_napari_viewer, qtbot, isolated_settings):
    """Align + soft blend from the widget: the cropped result sits exactly over its place in the input
    (translate moved by the crop), the transforms are shown and kept in the layer metadata, and the
    pixels are those of core.fuse with the same settings."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from bench_align import moved_stack

    _, moved, _ = moved_stack(105, 160, "cells")
    viewer = make_napari_viewer()
    viewer.add_image(moved, name="moved", scale=(1.0, 0.5, 0.5), translate=(0, 3, 4))
    widget = _widget(viewer, qtbot)
    widget.select_method("wavelet")
    widget.align_combo.setCurrentIndex(widget.align_combo.findData("similarity"))
    widget.blend_combo.setCurrentIndex(widget.blend_combo.findData("soft"))
    widget.run()
    wait_idle(qtbot, widget)
    expected = fuse(moved, method="wavelet", align="similarity", blend="soft")
    crop = expected.alignment[0]["crop"]
    aif = viewer.layers["moved all-in-focus"]
    np.testing.assert_array_equal(aif.data, expected.all_in_focus)
    np.testing.assert_allclose(aif.translate, [3 + 0.5 * crop["y"][0], 4 + 0.5 * crop["x"][0]])
    np.testing.assert_allclose(_focus_map(viewer, "moved").translate, aif.translate)
    info = aif.metadata["stackmff"]
    assert info["blend"] == "soft" and info["alignment"][0]["aligned"]
    assert widget.align_info.isVisibleTo(widget) and "similarity onto slice 4" in widget.align_info.text()


def test_two_selected_images_fuse_as_a_pair(make_napari_viewer, qtbot, isolated_settings):
    """Two single photos (A focused near, B far) selected in the layer list fuse as a pair: stacked into a
    new layer in list order, and the all-in-focus result equals core.fuse on the same pair."""
    s = synth.make_sample("cells", n=2, size=96, seed=3, dtype="uint8")
    viewer = make_napari_viewer()
    a = viewer.add_image(s.slices[0], name="A")
    b = viewer.add_image(s.slices[1], name="B")
    widget = _widget(viewer, qtbot)
    widget.select_method("wavelet")
    viewer.layers.selection = {a}
    assert not widget.pair_button.isEnabled()  # one image is not a pair
    viewer.layers.selection = {a, b}
    assert widget.pair_button.isEnabled() and widget.pair_button.text() == "Fuse 2 selected images"
    widget.pair_button.click()
    wait_idle(qtbot, widget)
    pair = viewer.layers["A + B"]
    assert pair.data.shape == (2, 96, 96)
    expected = fuse(s.slices, method="wavelet")
    np.testing.assert_array_equal(viewer.layers["A + B all-in-focus"].data, expected.all_in_focus)
    fmap = viewer.layers["A + B focus map (slices)"].data  # no z step: slice numbers
    assert fmap.min() >= 0 and fmap.max() <= 1  # a pair has slices 0 and 1 only
    np.testing.assert_array_equal(fmap, expected.focus_map)


def test_focus_map_shows_a_colour_bar_labelled_with_its_unit(make_napari_viewer, qtbot, isolated_settings, sample):
    """The focus map gets napari's colour bar, and its name (drawn beside the bar) ends in the unit: µm
    with a z step, slices without. A re-run keeps a bar the user turned off."""
    viewer = make_napari_viewer(show=True)
    viewer.add_image(sample.slices[:, :96, :96], name="cells")
    widget = _widget(viewer, qtbot)
    widget.select_method("variance")
    widget.surface_check.setChecked(False)
    widget.run()
    wait_idle(qtbot, widget)
    fmap = widget.result_layers["focus_map"]
    assert fmap.name == "cells focus map (slices)" and fmap.metadata["stackmff"]["units"] == "slices"
    assert fmap.colorbar.visible and fmap.name_overlay.visible
    assert str(fmap.name_overlay.position) == str(fmap.colorbar.position) == "top_right"  # side by side

    # Drawn on the canvas: hiding the bar changes the top of the canvas (the bar at the right edge, the
    # name moving into its place), nothing else.
    viewer.layers["cells all-in-focus"].visible = False
    viewer.reset_view()
    qtbot.wait(200)
    with_bar = viewer.screenshot(canvas_only=True, flash=False)
    fmap.colorbar.visible = False
    qtbot.wait(200)
    changed = np.argwhere(np.any(viewer.screenshot(canvas_only=True, flash=False) != with_bar, axis=-1))
    h, w = with_bar.shape[:2]
    assert len(changed) > 500, len(changed)
    assert changed[:, 0].max() < h / 2 and changed[:, 1].max() > w - 40, (changed.min(0), changed.max(0), (h, w))

    widget.z_step.setValue(2.5)  # a z step: the map is in µm, the same layer renamed
    widget.run()
    wait_idle(qtbot, widget)
    assert widget.result_layers["focus_map"] is fmap and fmap.name == "cells focus map (µm)"
    assert not fmap.colorbar.visible  # the user's choice is kept
    assert tuple(fmap.contrast_limits) == (0.0, 2.5 * (sample.slices.shape[0] - 1))  # the bar's range, in µm


def test_restored_settings_are_said_and_can_be_reset(make_napari_viewer, qtbot, isolated_settings):
    viewer = make_napari_viewer()
    first = _widget(viewer, qtbot)
    assert not first.restored_row.isVisibleTo(first)  # a first session restores nothing
    defaults = (first.methods.key(), first.align_combo.currentData(), first.blend_combo.currentData())
    first.select_method("tenengrad")
    first.align_combo.setCurrentIndex(first.align_combo.findData("translation"))

    again = FusionWidget(viewer)  # the next session
    qtbot.addWidget(again)
    assert again.methods.key() == "tenengrad" and again.align_combo.currentData() == "translation"
    assert again.restored_row.isVisibleTo(again) and again.reset_button.isVisibleTo(again)
    tip = again.restored_label.toolTip()
    assert "method: tenengrad" in tip and f"align: {again.align_combo.currentText()}" in tip, tip

    again.reset_button.click()
    assert (again.methods.key(), again.align_combo.currentData(), again.blend_combo.currentData()) == defaults
    assert not again.restored_row.isVisibleTo(again) and "reset" in again.status.text()
    fresh = FusionWidget(viewer)  # and the session after starts from the defaults, saying nothing
    qtbot.addWidget(fresh)
    assert (fresh.methods.key(), fresh.align_combo.currentData()) == defaults[:2]
    assert not fresh.restored_row.isVisibleTo(fresh)

    fresh.select_method("laplacian")
    shown = FusionWidget(viewer)
    qtbot.addWidget(shown)
    viewer.add_image(np.zeros((3, 16, 16), np.uint8), name="tiny")
    shown.layer_combo.set_current_layer(viewer.layers["tiny"])
    assert shown.restored_row.isVisibleTo(shown)
    shown.run()  # running with them accepts them: the line goes
    assert not shown.restored_row.isVisibleTo(shown)
    wait_idle(qtbot, shown)


def test_halo_setting_reaches_the_core_and_auto_takes_it_on_a_bright_field(make_napari_viewer, qtbot,
                                                                          isolated_settings):
    """Issue 26 in napari: the "Halos" setting reaches the core. On a bright field "auto" (the default) and
    "brightfield" leave no rings beside the dark object; "plain" (the legacy decision) rings."""
    from scipy import ndimage as ndi
    from test_decision import brightfield_stack

    stack, obj = brightfield_stack(0)
    viewer = make_napari_viewer()
    viewer.add_image(stack.slices, name="bf")
    widget = _widget(viewer, qtbot)
    widget.select_method("wavelet")
    assert widget.decision_combo.currentData() == "auto"
    # Off: auto alignment reads this defocus-only silhouette as breathing (scale 1.05) and crops it; a
    # known gap of the probe on dark-on-bright stacks (issue 26 closing note), not what is tested here.
    widget.align_combo.setCurrentIndex(widget.align_combo.findText("off"))
    band = (ndi.distance_transform_edt(~obj) > 3) & (ndi.distance_transform_edt(~obj) < 25)
    rings = {}
    for choice in ("auto", "halo", "legacy"):
        widget.decision_combo.setCurrentIndex(widget.decision_combo.findData(choice))
        widget.run()
        wait_idle(qtbot, widget)
        focus = np.asarray(_focus_map(viewer, "bf").data)
        rings[choice] = float(np.mean(np.abs(np.round(focus) - stack.focus_index)[band] > 2))
        for layer in _results(viewer):
            viewer.layers.remove(layer)
    assert rings["auto"] < 0.05 and rings["halo"] < 0.05 and rings["legacy"] > 0.3, rings
    # bright marks on a dark ground: "auto" takes the glow decision ("darkfield"), no rings in their glow
    from test_decision import glyph_stack

    glyphs, marks = glyph_stack(0)
    widget.layer_combo.set_current_layer(viewer.add_image(glyphs.slices, name="pcb"))
    widget.decision_combo.setCurrentIndex(widget.decision_combo.findData("auto"))
    widget.run()
    wait_idle(qtbot, widget)
    focus = np.asarray(_focus_map(viewer, "pcb").data)
    band = (ndi.distance_transform_edt(~marks) > 3) & (ndi.distance_transform_edt(~marks) < 30)
    assert np.mean(np.abs(np.round(focus) - glyphs.focus_index)[band] > 2) < 0.12
    assert widget.decision_combo.findData("glow") >= 0


def test_runtime_setting_runs_a_network_on_onnxruntime_with_torchs_choices(make_napari_viewer, qtbot,
                                                                           isolated_settings, sample):
    """Issue 29 in napari: "Runtime" is for networks only; ONNX Runtime gives the slices torch gives."""
    from napari_stackmff.core.models import onnx_runtime

    if not onnx_runtime.available():
        pytest.skip("onnxruntime/onnx not installed (the onnx extra)")
    viewer = make_napari_viewer()
    viewer.add_image(sample.slices[:6, :96, :96], name="cells")
    widget = _widget(viewer, qtbot)
    widget.align_combo.setCurrentIndex(widget.align_combo.findText("off"))
    widget.select_method("wavelet")
    assert not widget.runtime_combo.isEnabled()
    widget.select_method("stackmff-v2")
    assert widget.runtime_combo.isEnabled()
    maps = {}
    for runtime in ("torch", "onnxruntime"):
        widget.runtime_combo.setCurrentIndex(widget.runtime_combo.findData(runtime))
        widget.run()
        wait_idle(qtbot, widget)
        assert widget.last_result.runtime == runtime
        maps[runtime] = np.round(np.asarray(_focus_map(viewer, "cells").data))
    assert np.mean(maps["torch"] == maps["onnxruntime"]) >= 0.999
