"""Screenshots of the docked widgets with results, for people to look at (screenshots/ is
git-ignored). Also checks that the widgets fit a normal dock without being cut off."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fixtures import SCREENSHOTS, isolated_settings, stackmff_plugin, wait_idle  # noqa: E402,F401

from napari_stackmff._widgets import FusionWidget, TrainingWidget  # noqa: E402

pytestmark = pytest.mark.usefixtures("stackmff_plugin")


def _save(widget_or_window, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    assert widget_or_window.grab().save(str(SCREENSHOTS / name))


def test_screenshots(make_napari_viewer, qtbot, isolated_settings, stackmff_plugin):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1500, 1000)
    (stack,) = viewer.open_sample("napari-stackmff", "cells")
    _, trainer = viewer.window.add_plugin_dock_widget("napari-stackmff", "Train a focus model")
    _, fusion = viewer.window.add_plugin_dock_widget("napari-stackmff", "All-in-focus fusion", tabify=True)
    assert isinstance(fusion, FusionWidget) and isinstance(trainer, TrainingWidget)
    fusion.select_method("wavelet")
    fusion.confidence_check.setChecked(True)
    fusion.surface_check.setChecked(True)
    fusion.run()
    qtbot.waitUntil(lambda: fusion.progress_bar.value() >= 2 or not fusion.running, timeout=20_000)
    _save(fusion, "fusion_widget_running.png")
    wait_idle(qtbot, fusion)
    assert fusion.minimumSizeHint().width() < 420  # fits a normal dock without horizontal scrolling

    fusion.parentWidget().raise_()
    viewer.layers.selection.active = viewer.layers[f"{stack.name} all-in-focus"]
    viewer.reset_view()
    qtbot.wait(200)
    _save(viewer.window._qt_window, "fusion_window.png")
    _save(fusion, "fusion_widget.png")

    viewer.layers[f"{stack.name} all-in-focus"].visible = False
    qtbot.wait(100)
    _save(viewer.window._qt_window, "fusion_focus_map.png")

    for layer in viewer.layers:
        layer.visible = layer.name in (stack.name, f"{stack.name} height surface")
    stack.opacity = 0.5
    viewer.dims.ndisplay = 3
    viewer.reset_view()
    viewer.scene.camera.angles = (-30, 30, 60)
    viewer.scene.camera.zoom *= 0.9
    qtbot.wait(200)
    SCREENSHOTS.mkdir(exist_ok=True)
    from skimage.io import imsave

    imsave(SCREENSHOTS / "fusion_3d_canvas.png", viewer.screenshot(canvas_only=True), check_contrast=False)

    # The training widget with a plausible loss history painted (a real run is tested elsewhere).
    steps = 100
    for i in range(1, 4 * steps + 1):
        trainer.plot.add_train(i, 0.08 * math.exp(-i / 120) + 0.01 + 0.01 * np.sin(i * 1.7) ** 2)
        if i % steps == 0:
            trainer.plot.add_val(i, 0.06 * math.exp(-i / 150) + 0.015)
    trainer.epoch_bar.setRange(0, 20)
    trainer.epoch_bar.setValue(4)
    trainer.batch_bar.setRange(0, steps)
    trainer.batch_bar.setValue(steps)
    trainer.status.setText("Epoch 4/20: loss 0.0213, validation loss 0.0251, 71% of pixels within ±1 slice.")
    trainer.parentWidget().raise_()
    qtbot.wait(100)
    _save(trainer, "training_widget.png")
    assert trainer.minimumSizeHint().width() < 420
