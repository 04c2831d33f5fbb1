"""Screenshots of the docked widgets with results, for people to look at (screenshots/ is
git-ignored). Also checks that both widgets fit a 1280×800 screen side by side, nothing cut off."""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_fixtures import SCREENSHOTS, isolated_settings, stackmff_plugin, wait_idle  # noqa: E402,F401

from qtpy.QtCore import QSize, Qt  # noqa: E402
from qtpy.QtWidgets import (QApplication, QCheckBox, QComboBox, QLineEdit, QPushButton, QScrollArea,  # noqa: E402
                            QStyle, QStyleOptionFrame)

from napari_stackmff._widgets import FusionWidget, TrainingWidget  # noqa: E402

pytestmark = pytest.mark.usefixtures("stackmff_plugin")

#: A common small laptop screen: both docks next to napari's layer list and canvas must fit it.
SCREEN = QSize(1280, 800)
#: QLineEdit's fixed inner margin on each side (qlineedit_p.h), on top of the style's padding.
LINE_EDIT_MARGIN = 2


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
    viewer.dims.ndisplay = 3  # the widget opens the 3-D camera tilted (its own view, not set here)
    assert abs(viewer.scene.camera.view_direction[0]) < 0.9  # not top-down
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


def _combo_needs(combo: QComboBox) -> int:
    """Width that shows every entry of ``combo`` whole: a probe sized to its contents, styled alike
    (same parent, so napari's style sheet and padding apply to it too)."""
    probe = QComboBox(combo.parentWidget())
    probe.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    probe.addItems([combo.itemText(i) for i in range(combo.count())])
    try:
        return probe.sizeHint().width()
    finally:
        probe.deleteLater()


def _text_room(edit: QLineEdit) -> int:
    """Pixels a line edit has for text (its style's contents rectangle, as QLineEdit paints it)."""
    opt = QStyleOptionFrame()  # as QLineEdit::initStyleOption fills it (protected: not callable on all)
    opt.initFrom(edit)
    opt.rect = edit.contentsRect()
    frame = edit.style().pixelMetric(QStyle.PixelMetric.PM_DefaultFrameWidth, opt, edit)
    opt.lineWidth = frame if edit.hasFrame() else 0
    rect = edit.style().subElementRect(QStyle.SubElement.SE_LineEditContents, opt, edit)
    return rect.width() - edit.textMargins().left() - edit.textMargins().right() - 2 * LINE_EDIT_MARGIN


def _cut_off(widget) -> list[str]:
    """Every visible control of ``widget`` narrower than its content needs, described."""
    bad = []
    for c in widget.findChildren(QComboBox):
        if c.isVisible() and c.width() < _combo_needs(c):
            bad.append(f"combo {c.currentText()!r}: {c.width()} < {_combo_needs(c)} px")
    for e in widget.findChildren(QLineEdit):  # also the text fields inside spin boxes
        if not e.isVisible():
            continue
        shown = QLineEdit.text(e) or e.placeholderText()  # what is painted (a PathEdit's elided path)
        if e.fontMetrics().horizontalAdvance(shown) > _text_room(e):
            bad.append(f"line edit {shown!r}: {e.fontMetrics().horizontalAdvance(shown)} > {_text_room(e)} px")
    for w in widget.findChildren((QCheckBox, QPushButton)):
        if w.isVisible() and w.width() < w.minimumSizeHint().width():
            bad.append(f"{type(w).__name__} {w.text() if hasattr(w, 'text') else ''!r}: "
                       f"{w.width()} < {w.minimumSizeHint().width()} px")
    return bad


def test_both_widgets_fit_1280x800_side_by_side(make_napari_viewer, qtbot, isolated_settings, stackmff_plugin):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(SCREEN)
    viewer.open_sample("napari-stackmff", "cells")
    fusion_dock, fusion = viewer.window.add_plugin_dock_widget("napari-stackmff", "All-in-focus fusion")
    train_dock, trainer = viewer.window.add_plugin_dock_widget("napari-stackmff", "Train a focus model")
    window.splitDockWidget(fusion_dock, train_dock, Qt.Orientation.Horizontal)
    long_path = "/home/someone/projects/focus-stacking/experiments/2026-spring/models/stackmff-v2-final.pt"
    trainer.checkpoint_edit.setText(long_path)
    QApplication.processEvents()
    qtbot.wait(300)

    size = window.size()
    print(f"window {size.width()}x{size.height()}; minimumSizeHint fusion "
          f"{fusion.minimumSizeHint().width()}x{fusion.minimumSizeHint().height()}, training "
          f"{trainer.minimumSizeHint().width()}x{trainer.minimumSizeHint().height()}")
    assert size.width() <= SCREEN.width() and size.height() <= SCREEN.height(), size
    assert not window.tabifiedDockWidgets(fusion_dock)
    assert fusion_dock.isVisible() and train_dock.isVisible()
    assert fusion_dock.x() + fusion_dock.width() <= train_dock.x()  # side by side, not stacked
    assert _cut_off(fusion) == [] and _cut_off(trainer) == []
    assert trainer.objective_combo.width() >= _combo_needs(trainer.objective_combo)
    # The checkpoint path shows both ends (folder start and file name); the tooltip holds all of it.
    shown = QLineEdit.text(trainer.checkpoint_edit)
    assert shown != long_path and shown.startswith("/home") and shown.endswith("stackmff-v2-final.pt"), shown
    assert trainer.checkpoint_edit.toolTip() == long_path and trainer.checkpoint_edit.text() == long_path
    assert trainer.epoch_bar.text() == f"0 / {trainer.epochs_spin.value()}"

    SCREENSHOTS.mkdir(exist_ok=True)
    _save(window, "side_by_side_1280x800.png")
    _save(fusion, "side_by_side_fusion.png")
    scroll = trainer.findChild(QScrollArea)  # the settings scroll: the checkpoint row is at its end
    scroll.ensureWidgetVisible(trainer.checkpoint_edit)
    qtbot.wait(100)
    assert scroll.verticalScrollBar().value() > 0  # it scrolled: the settings are taller than the room
    assert not trainer.checkpoint_edit.visibleRegion().isEmpty()
    _save(trainer, "side_by_side_training.png")
