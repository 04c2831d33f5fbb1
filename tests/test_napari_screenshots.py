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
from napari_stackmff._widgets._layout import is_collapsed_away  # noqa: E402

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
    _save(fusion, "side_by_side_fusion.png")
    trainer.more_section.expand(animate=False)  # the objective, schedule and file rows
    qtbot.wait(100)
    assert _cut_off(trainer) == []
    # The checkpoint path shows both ends (folder start and file name); the tooltip holds all of it.
    shown = QLineEdit.text(trainer.checkpoint_edit)
    assert shown != long_path and shown.startswith("/home") and shown.endswith("stackmff-v2-final.pt"), shown
    assert trainer.checkpoint_edit.toolTip() == long_path and trainer.checkpoint_edit.text() == long_path
    assert trainer.epoch_bar.text() == f"0 / {trainer.epochs_spin.value()}"

    SCREENSHOTS.mkdir(exist_ok=True)
    _save(window, "side_by_side_1280x800.png")
    scroll = trainer.findChild(QScrollArea)  # the opened section scrolls inside the dock where it must
    scroll.ensureWidgetVisible(trainer.checkpoint_edit)
    qtbot.wait(100)
    assert not trainer.checkpoint_edit.visibleRegion().isEmpty()
    _save(trainer, "side_by_side_training.png")


def _unscrolled(widget) -> bool:
    """No scroll area of ``widget`` is scrolled: what is seen is what shows without scrolling."""
    return all(a.verticalScrollBar().value() == 0 for a in widget.findChildren(QScrollArea))


def _not_fully_shown(window, controls: dict) -> list[str]:
    """Every control that is not whole on screen: hidden, in a collapsed section, clipped by a scroll
    area or a dock (its visible region is less than its rectangle), or outside the window."""
    bad = []
    for name, w in controls.items():
        if not w.isVisible() or is_collapsed_away(w):
            bad.append(f"{name}: not shown")
            continue
        seen = w.visibleRegion().boundingRect()
        top_left = w.mapTo(window, w.rect().topLeft())
        inside = window.rect().contains(top_left) and window.rect().contains(
            w.mapTo(window, w.rect().bottomRight()))
        if seen != w.rect() or not inside or w.height() < w.minimumSizeHint().height():
            bad.append(f"{name}: shows {seen.width()}x{seen.height()} of {w.width()}x{w.height()} at "
                       f"({top_left.x()}, {top_left.y()}) in a {window.width()}x{window.height()} window")
    return bad


def test_docked_pair_at_1280x800_shows_the_main_controls(make_napari_viewer, qtbot, isolated_settings):
    """Both widgets docked as napari docks them (one above the other, right of the canvas) on a
    1280×800 screen, with last session's settings restored (the line that says so takes room too):
    Method, Align, Blend and Fuse, and the training Start/Stop and loss plot, are whole on screen
    without scrolling; still so with every collapsed section opened (the sections scroll instead)."""
    from napari_stackmff._widgets import _settings

    _settings.save("fusion", {"method": "tenengrad", "align": "similarity"})  # a returning user
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(SCREEN)
    viewer.open_sample("napari-stackmff", "cells")
    fusion_dock, fusion = viewer.window.add_plugin_dock_widget("napari-stackmff", "All-in-focus fusion")
    train_dock, trainer = viewer.window.add_plugin_dock_widget("napari-stackmff", "Train a focus model")
    QApplication.processEvents()
    qtbot.wait(300)
    assert window.width() <= SCREEN.width() and window.height() <= SCREEN.height(), window.size()
    assert fusion.restored_row.isVisible()
    controls = {"fusion Layer": fusion.layer_combo, "fusion Method": fusion.method_combo,
                "fusion Align": fusion.align_combo, "fusion Blend": fusion.blend_combo,
                "fusion Fuse": fusion.run_button, "fusion Reset": fusion.reset_button,
                "training Start": trainer.start_button, "training Stop": trainer.stop_button,
                "training loss plot": trainer.plot}
    SCREENSHOTS.mkdir(exist_ok=True)
    _save(window, "docked_pair_1280x800.png")
    print(f"docks: fusion {fusion_dock.geometry().getRect()}, training {train_dock.geometry().getRect()}")
    assert _unscrolled(fusion) and _unscrolled(trainer)
    assert _not_fully_shown(window, controls) == []
    assert _cut_off(fusion) == [] and _cut_off(trainer) == []

    for box in (fusion.stack_section, fusion.more_section, trainer.more_section):
        box.expand(animate=False)
    QApplication.processEvents()
    qtbot.wait(300)
    _save(window, "docked_pair_1280x800_expanded.png")
    assert window.width() <= SCREEN.width() and window.height() <= SCREEN.height(), window.size()
    assert _not_fully_shown(window, controls) == []
    assert not is_collapsed_away(fusion.device_combo) and not is_collapsed_away(trainer.lr_spin)

    # For people to look at: the pair with a result (the focus map's colour bar) and a loss history.
    for box in (fusion.stack_section, fusion.more_section, trainer.more_section):
        box.collapse(animate=False)
    fusion.align_combo.setCurrentIndex(fusion.align_combo.findData(None))
    fusion.run()
    wait_idle(qtbot, fusion)
    for i in range(1, 301):
        trainer.plot.add_train(i, 0.08 * math.exp(-i / 120) + 0.01 + 0.01 * np.sin(i * 1.7) ** 2)
        if i % 100 == 0:
            trainer.plot.add_val(i, 0.06 * math.exp(-i / 150) + 0.015)
    viewer.layers[-1].visible = False  # the all-in-focus image: show the focus map under it
    QApplication.processEvents()
    qtbot.wait(300)
    _save(window, "docked_pair_1280x800_result.png")
    del controls["fusion Reset"]  # the "restored" line goes once a run accepts the settings
    assert _not_fully_shown(window, controls) == []
