"""The fusion widget: pick a stack layer and a method, get an all-in-focus image and a focus map.

Thin over ``core.fuse``: the widget only gathers settings, runs fuse in a worker thread with a
progress bar and a Cancel button, and puts the result on layers tied to the input layer it was
computed from (captured at start, so changing the selection meanwhile is harmless). Nothing is
added or changed until the whole result is there, so a cancelled run leaves no trace.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import napari
import numpy as np
from napari.layers import Layer
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QCheckBox, QComboBox, QDoubleSpinBox, QFormLayout, QHBoxLayout, QLabel,
                            QProgressBar, QPushButton, QSpinBox, QVBoxLayout, QWidget)

from ..core.fusion.align import summary
from ..core.defaults import CLASSICAL_METHODS, DEFAULT_WINDOW
from ..core.devices import available_devices
from ..core.errors import StackMFFError
from ..core.tiles.pipeline import FusionCancelled
from ..core.io.result import FusionResult
from ..core.fusion.dispatch import fuse, resolve_method
from ..core.models import onnx_runtime, registry
from ..core.io.stack import FocalStack
from . import _settings
from ._inputs import AXES_TEXT, ZInfo, axes_choices, channel_choices, is_event_candidate, is_event_layer
from ._inputs import is_stack_layer, layer_stack, z_info
from ._layers import LayerCombo, connect_layer_list, is_result, source_key
from ._methods import MethodPicker
from ._layout import VerticalScroll, section
from ._outputs import OutputOptions, oblique_view, show_result
from ._worker import run_in_thread, user_message
from .retouch import RetouchPanel, RetouchSource

GROUP = "fusion"
#: (shown text, fuse(align=...)) and (shown text, fuse(blend=...)).
#: Short texts: the dock's width is shared with the training widget (tests/test_napari_screenshots.py);
#: the tooltips say more.
ALIGN_CHOICES = (("auto", "auto"), ("off", None), ("shift", "translation"), ("shift + scale", "similarity"),
                 ("homography", "homography"))
BLEND_CHOICES = (("hard", "hard"), ("exact pixels", "exact"), ("soft (fewer halos)", "soft"),
                 ("two-scale", "two-scale"))
DECISION_CHOICES = (("auto", "auto"), ("brightfield (no rings)", "halo"), ("darkfield (no rings)", "glow"),
                    ("plain", "legacy"))


def _choice_combo(choices: tuple[tuple[str, Any], ...], tooltip: str) -> QComboBox:
    """A combo box of (shown text, value) choices, sized to its texts."""
    combo = QComboBox()
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    for text, value in choices:
        combo.addItem(text, value)
    combo.setToolTip(tooltip)
    return combo


@dataclass
class FusionJob:
    """Everything one run needs, captured on the UI thread when Fuse is pressed."""

    layer: Layer
    source_id: str
    axes: str
    stack: FocalStack
    z: ZInfo
    method: str
    weights: str | None
    device: str
    channel: int | None
    window: int | None
    tile: int | None
    denoise: bool
    decision: str
    runtime: str
    align: str | None
    blend: str
    outputs: OutputOptions
    cancel: threading.Event


def run_job(job: FusionJob, emit: Any) -> FusionResult:
    """The worker body: core.fuse with progress relayed as (job, done, total, message) tuples."""
    # Each method gets only the settings it uses (fuse refuses the others): the window for classical
    # measures; weights and a tile side for networks.
    if resolve_method(job.method) in CLASSICAL_METHODS:
        options: dict[str, Any] = {"window": job.window, "decision": job.decision}
    else:
        options = {"weights": job.weights, "tile": job.tile}
        if job.runtime != "torch":  # ONNX Runtime runs on the CPU (the combo says so)
            options["runtime"] = job.runtime
    device = "cpu" if options.get("runtime") == "onnxruntime" else job.device
    return fuse(job.stack, job.method, device, channel=job.channel, denoise=job.denoise, align=job.align,
                blend=job.blend, progress=lambda done, total, msg: emit((job, done, total, msg)), cancel=job.cancel,
                **options)


class FusionWidget(QWidget):
    """Dock widget: all-in-focus fusion of the selected focal-stack layer."""

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.job: FusionJob | None = None
        self.last_result: FusionResult | None = None
        self.result_layers: dict[str, Layer] = {}
        self._pbar: napari_progress | None = None
        self._tilted = False  # the 3-D camera is tilted once, the first time our surface is seen in 3-D
        _settings.restore_user_weights()
        self._build()
        self._load_settings()
        self._disconnect = connect_layer_list(self.viewer, self._on_layers_changed)
        self.viewer.dims.events.ndisplay.connect(self._tilt_once)
        self.destroyed.connect(lambda *_: self._teardown())
        _settings.hub().weights_changed.connect(self.refresh_methods)
        self._on_layer_changed()
        self._on_method_changed()

    # ---------------------------------------------------------------------------- layout
    def _build(self) -> None:
        root = QVBoxLayout(self)
        root.setContentsMargins(6, 6, 6, 6)
        # The most used settings first, always in view (layer, method, align, blend); the rest in two
        # collapsed sections that scroll; Fuse, progress and status stay in view below them. At 1280×800
        # with the training widget docked too, this is what fits (tests/test_napari_screenshots.py).
        self.settings_panel = QWidget()
        panel = QVBoxLayout(self.settings_panel)
        panel.setContentsMargins(0, 0, 0, 0)
        root.addWidget(self.settings_panel)
        self._main_form = main = QFormLayout()
        main.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        panel.addLayout(main)
        stack_box = QWidget()
        form = QFormLayout(stack_box)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.layer_combo = LayerCombo(self.viewer, is_stack_layer)
        self.layer_combo.setToolTip("The focal stack (z-stack) to fuse: (z, y, x), RGB, time-lapse or channels.")
        self.axes_combo = QComboBox()
        self.axes_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.axes_combo.setToolTip("What the axes of the layer are. Set by our reader; check it for other layers.")
        self.channel_combo = QComboBox()
        self.channel_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.channel_combo.setMinimumContentsLength(12)  # channel names come from files: any length
        self.channel_combo.setToolTip("Judge focus on this channel only (e.g. nuclei); all channels are fused.")
        self.z_step = QDoubleSpinBox()
        self.z_step.setRange(0.0, 1e6)
        self.z_step.setDecimals(4)
        self.z_step.setSingleStep(0.1)
        self.z_step.setSpecialValueText("auto")  # short: "from layer" was cut off next to the unit box
        self.z_step.setToolTip("Distance between slices. auto: the file's z positions, else the layer scale.")
        self.z_unit = QComboBox()
        self.z_unit.addItems(["µm", "nm", "mm"])
        z_row = QHBoxLayout()
        z_row.addWidget(self.z_step, 1)
        z_row.addWidget(self.z_unit)
        self.z_hint = QLabel()
        self.z_hint.setWordWrap(True)
        self.z_hint.setStyleSheet("color: gray;")
        self.event_combo = LayerCombo(self.viewer, is_event_candidate, none_text="none", prefer=is_event_layer)
        self.event_combo.setToolTip("Focal-plane event frames (one per slice), used by event-based models only.")
        # Short row labels (the tooltips say more): the label column is part of the dock's width.
        self.layer_combo.setToolTip(self.layer_combo.toolTip() + "\nTwo or more single images (e.g. an A/B pair) "
                                    "selected in the layer list: a button beside Fuse fuses them.")
        form.addRow("Axes", self.axes_combo)
        form.addRow("Channel", self.channel_combo)
        form.addRow("Z step", z_row)
        form.addRow("", self.z_hint)
        # Shown beside Fuse while two or more single images are selected in the layer list.
        self.pair_button = QPushButton("Fuse selected images")
        self.pair_button.setToolTip(
            "Select two or more single images of one size in the layer list (e.g. an A/B pair of photos "
            "focused near and far): they are stacked into a new layer, in the list's order, and fused.")
        self.pair_button.setEnabled(False)
        self.pair_button.setVisible(False)

        more_box = QWidget()
        more = QFormLayout(more_box)
        more.setContentsMargins(0, 0, 0, 0)
        more.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.methods = MethodPicker(self)
        self.method_combo = self.methods.combo
        self.device_combo = QComboBox()
        self.device_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.device_combo.addItems(["auto", *available_devices()])
        self.device_combo.setToolTip("auto: the first GPU if there is one, else the CPU.")
        self.runtime_combo = QComboBox()
        self.runtime_combo.addItem("torch", "torch")
        if onnx_runtime.available():
            self.runtime_combo.addItem("onnxruntime (CPU)", "onnxruntime")
        self.runtime_combo.setToolTip(
            "Networks: torch (default; GPU when present), or ONNX Runtime on the CPU (the onnx extra: pip install "
            "'napari-stackmff[onnx]'). The same slice choices; measured 0.9-1.0x torch's speed on an AVX2 CPU.")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(128)
        self.tile_spin.setSpecialValueText("auto (fit memory)")
        self.tile_spin.setToolTip("Networks process big images in overlapping tiles of this size (pixels).")
        self.window_spin = QSpinBox()
        self.window_spin.setRange(3, 63)
        self.window_spin.setSingleStep(2)
        self.window_spin.setSuffix(" px")
        self.window_spin.setToolTip("Classical methods: neighbourhood over which sharpness is averaged.")
        self.decision_combo = _choice_combo(
            DECISION_CHOICES,
            "Classical methods. brightfield: beside a sharp edge a pixel far weaker than the edge takes the edge's "
            "slice, so no rings of defocused slices form round a dark specimen on a bright field (still "
            "pixel-faithful). plain: the per-pixel choice as before; it can ring on a bright field, but keeps a dim "
            "object beside a much brighter one (fluorescence) in its own slice. darkfield: the same vote only where "
            "a defocused neighbour's glow lights the chosen slice and the pixel is weak in relative contrast too: "
            "no rings round bright marks or cells on a dark ground, dim cells kept. auto: brightfield when the "
            "stack's background is a bright field, else darkfield.")
        self.denoise_check = QCheckBox("Clean up focus map")
        self.denoise_check.setToolTip("Fill flat areas from their surroundings and smooth with a 3×3 median.")
        self.align_combo = _choice_combo(
            ALIGN_CHOICES,
            "Register the slices onto the middle one before fusing. auto: a quick probe measures how far the "
            "slices move and aligns them (shift + scale) only when they do. Or always: drift and shake (shift); "
            "focus breathing (shift + scale, with rotation); tilted views (homography). The result is cropped to "
            "the part every "
            "slice covers; the transforms are shown below and kept in the layers' metadata.")
        self.blend_combo = _choice_combo(
            BLEND_CHOICES,
            "hard: every pixel copied from one slice, except a few pixels of open field where a bright "
            "field's slice changes, cross-faded so that no seam shows. exact pixels: every pixel copied "
            "from one slice (for measurements). soft: slices mixed with weights that follow image edges: "
            "fewer seams and halos at depth edges, but values are mixes, not measurements. two-scale: the "
            "soft blend's detail over widely mixed base layers (as guided-filter fusion does): the cleanest "
            "picture, no rings, noise and JPEG grain averaged, but the furthest from any one slice.")
        main.addRow("Layer", self.layer_combo)
        main.addRow("Method", self.method_combo)
        main.addRow("Weights", self.methods.weights_row)  # networks only: shown when one is chosen
        main.addRow("Events", self.event_combo)  # event-based networks only
        main.addRow("Align", self.align_combo)
        main.addRow("Blend", self.blend_combo)
        self.weights_label = main.labelForField(self.methods.weights_row)
        self.event_label = main.labelForField(self.event_combo)
        more.addRow("Device", self.device_combo)
        more.addRow("Runtime", self.runtime_combo)
        more.addRow("Tile", self.tile_spin)
        more.addRow("Window", self.window_spin)
        more.addRow("Halos", self.decision_combo)
        more.addRow(self.denoise_check)
        box = QVBoxLayout()
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(QLabel("Also show"))
        self.confidence_check = QCheckBox("Confidence map")
        self.confidence_check.setToolTip("How clearly one slice wins at each pixel (0 to 1).")
        self.surface_check = QCheckBox("Height surface (3-D view)")
        self.surface_check.setToolTip("The focus map as a surface inside the stack: switch the viewer to 3-D.")
        self.surface_conf = QDoubleSpinBox()
        self.surface_conf.setRange(0.0, 0.95)
        self.surface_conf.setSingleStep(0.05)
        self.surface_conf.setDecimals(2)
        self.surface_conf.setToolTip("Leave holes in the surface where no slice is clearly sharp (flat background).")
        self.surface_conf_label = QLabel("holes below")
        self.surface_conf_label.setToolTip(self.surface_conf.toolTip())
        s_row = QHBoxLayout()
        s_row.setContentsMargins(24, 0, 0, 0)
        s_row.addWidget(self.surface_conf_label)
        s_row.addWidget(self.surface_conf)
        s_row.addStretch(1)
        box.addWidget(self.confidence_check)
        box.addWidget(self.surface_check)
        box.addLayout(s_row)
        more.addRow(box)

        # "Restored last session · Reset": remembered settings are said, and can be undone in one click.
        self.restored_label = QLabel("Restored last session's settings")
        self.restored_label.setStyleSheet("color: gray;")
        self.reset_button = QPushButton("Reset")
        self.reset_button.setFlat(True)
        self.reset_button.setToolTip("Back to the default settings (method auto, the default alignment and "
                                     "blend...); your trained models stay in the list.")
        self.restored_row = QWidget()
        r_row = QHBoxLayout(self.restored_row)
        r_row.setContentsMargins(0, 0, 0, 0)
        r_row.addWidget(self.restored_label, 1)
        r_row.addWidget(self.reset_button)
        self.restored_row.setVisible(False)
        panel.addWidget(self.restored_row)

        self.stack_section = section("Stack: axes, channel, z step", stack_box,
                                     expanded=_settings.load(GROUP, "open_stack", False))
        self.more_section = section("More: device, tiles, extra layers", more_box,
                                    expanded=_settings.load(GROUP, "open_more", False))
        sections = QWidget()
        s_box = QVBoxLayout(sections)
        s_box.setContentsMargins(0, 0, 0, 0)
        s_box.setSpacing(2)
        s_box.addWidget(self.stack_section)
        s_box.addWidget(self.more_section)
        panel.addWidget(VerticalScroll(sections))

        self.run_button = QPushButton("Fuse")
        self.run_button.setMinimumHeight(30)
        self.progress_bar = QProgressBar()
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setValue(0)
        self.status = QLabel("Choose a focal stack and press Fuse.")
        self.status.setWordWrap(True)
        self.align_info = QLabel()
        self.align_info.setWordWrap(True)
        self.align_info.setStyleSheet("color: gray;")
        self.align_info.setVisible(False)
        run_row = QHBoxLayout()
        run_row.addWidget(self.run_button, 1)
        run_row.addWidget(self.pair_button)
        root.addLayout(run_row)
        root.addWidget(self.progress_bar)
        root.addWidget(self.status)
        root.addWidget(self.align_info)
        self.retouch = RetouchPanel(self.viewer, status=self.status)  # shown once a result exists
        self.retouch.setVisible(False)
        root.addWidget(self.retouch)
        root.addStretch(1)

        self.layer_combo.currentIndexChanged.connect(self._on_layer_changed)
        self.axes_combo.currentIndexChanged.connect(self._on_axes_changed)
        self.methods.changed.connect(self._on_method_changed)
        self.z_step.valueChanged.connect(self._update_z_hint)
        self.z_unit.currentIndexChanged.connect(self._update_z_hint)
        self.run_button.clicked.connect(self._on_run_clicked)
        self.pair_button.clicked.connect(self.fuse_selected_images)
        self.reset_button.clicked.connect(self.reset_settings)
        self.stack_section.toggled.connect(lambda open_: _settings.save(GROUP, {"open_stack": open_}))
        self.more_section.toggled.connect(lambda open_: _settings.save(GROUP, {"open_more": open_}))
        self.viewer.layers.selection.events.changed.connect(self._on_selection_changed)
        for w in (self.device_combo, self.runtime_combo, self.z_unit, self.align_combo, self.blend_combo):
            w.currentIndexChanged.connect(self._save_settings)
        for w in (self.tile_spin, self.window_spin, self.surface_conf):
            w.valueChanged.connect(self._save_settings)
        self.surface_check.toggled.connect(self.surface_conf.setEnabled)
        self.surface_check.toggled.connect(self.surface_conf_label.setEnabled)
        self.decision_combo.currentIndexChanged.connect(self._save_settings)
        for c in (self.denoise_check, self.confidence_check, self.surface_check):
            c.toggled.connect(self._save_settings)

    # ---------------------------------------------------------------------------- settings
    def _load_settings(self) -> None:
        self._loading = True
        #: Settings that came back from an earlier session different from their defaults (said in the
        #: "Restored last session's settings · Reset" line).
        self.restored: dict[str, Any] = {}

        def load(group: str, key: str, default: Any) -> Any:
            value = _settings.load(group, key, default)
            if value != default:
                self.restored[key] = value
            return value

        self.methods.custom_weights = load(GROUP, "weights_file", "")
        self.methods.select(load(GROUP, "method", "auto"))
        self._select_text(self.device_combo, load(GROUP, "device", "auto"))
        self._select_text(self.z_unit, load(GROUP, "z_unit", "µm"))
        self.tile_spin.setValue(load(GROUP, "tile", 0))
        self.window_spin.setValue(load(GROUP, "window", DEFAULT_WINDOW))
        self.denoise_check.setChecked(load(GROUP, "denoise", True))
        self._select_data(self.decision_combo, load(GROUP, "decision", "auto"))
        self._select_data(self.runtime_combo, load(GROUP, "runtime", "torch"))
        self._select_data(self.align_combo, load(GROUP, "align", "auto"))
        self._select_data(self.blend_combo, load(GROUP, "blend", "hard"))
        self.confidence_check.setChecked(load(GROUP, "confidence", False))
        self.surface_check.setChecked(load(GROUP, "surface", True))
        self.surface_conf.setValue(load(GROUP, "surface_min_confidence", 0.3))
        self.surface_conf.setEnabled(self.surface_check.isChecked())
        self.surface_conf_label.setEnabled(self.surface_check.isChecked())
        self._show_restored()
        self._loading = False

    def _show_restored(self) -> None:
        """Say that settings came back from the last session (which ones, in the tooltip), or nothing."""
        if self.restored.get("method") not in (None, self.methods.key()):
            del self.restored["method"]  # remembered, but gone (e.g. a removed model): auto is shown
        shown = {"method": self.method_combo, "align": self.align_combo, "blend": self.blend_combo,
                 "device": self.device_combo}
        lines = [f"{key}: {shown[key].currentText() if key in shown else value}"
                 for key, value in self.restored.items()]
        self.restored_row.setVisible(bool(lines))
        self.restored_label.setToolTip("Restored from your last session:\n" + "\n".join(lines))

    def reset_settings(self) -> None:
        """Forget the remembered settings and go back to the defaults."""
        _settings.clear(GROUP)
        _settings.save(GROUP, {"open_stack": self.stack_section.isExpanded(),
                               "open_more": self.more_section.isExpanded()})  # layout, not settings
        self._load_settings()
        self._on_method_changed()
        self.restored_row.setVisible(False)
        self.status.setText("Settings reset to their defaults.")

    def _save_settings(self, *_: Any) -> None:
        if getattr(self, "_loading", True):
            return
        _settings.save(GROUP, {
            "method": self.method_combo.currentData() or "auto", "device": self.device_combo.currentText(),
            "z_unit": self.z_unit.currentText(), "tile": self.tile_spin.value(), "window": self.window_spin.value(),
            "denoise": self.denoise_check.isChecked(), "decision": self.decision_combo.currentData(),
            "runtime": self.runtime_combo.currentData(), "confidence": self.confidence_check.isChecked(),
            "surface": self.surface_check.isChecked(), "surface_min_confidence": self.surface_conf.value(),
            "weights_file": self.methods.custom_weights, "align": self.align_combo.currentData() or "off",
            "blend": self.blend_combo.currentData(),
        })

    @staticmethod
    def _select_text(combo: QComboBox, text: str) -> None:
        i = combo.findText(text)
        if i >= 0:
            combo.setCurrentIndex(i)

    @staticmethod
    def _select_data(combo: QComboBox, value: str) -> None:
        i = combo.findData(None if value == "off" else value)
        if i >= 0:
            combo.setCurrentIndex(i)

    # ---------------------------------------------------------------------------- methods
    def refresh_methods(self, *_: Any) -> None:
        """Re-list the methods (e.g. after a model was trained and registered)."""
        self.methods.refresh()

    def select_method(self, key: str) -> None:
        """Select a method by name, or a registered checkpoint by ``"user:<label>"``."""
        self.methods.select(key)

    def _on_method_changed(self, *_: Any) -> None:
        key, (method, _) = self.methods.key(), self.methods.selection()
        self.tile_spin.setEnabled(key == "auto" or self.methods.is_model())
        self.window_spin.setEnabled(key == "auto" or method in CLASSICAL_METHODS)
        self.decision_combo.setEnabled(key == "auto" or method in CLASSICAL_METHODS)
        self.runtime_combo.setEnabled(self.methods.is_model() and self.runtime_combo.count() > 1)
        self.event_combo.setEnabled(self.methods.uses_events())
        # Rows that only networks use are shown only for them (the main rows stay few).
        for w in (self.methods.weights_row, self.weights_label):
            w.setVisible(self.methods.is_model())
        for w in (self.event_combo, self.event_label):
            w.setVisible(self.methods.uses_events())
        if hasattr(self._main_form, "setRowVisible"):  # Qt >= 6.4: no spacing left for the hidden rows
            self._main_form.setRowVisible(self.weights_label, self.methods.is_model())
            self._main_form.setRowVisible(self.event_label, self.methods.uses_events())
        self._save_settings()

    # ---------------------------------------------------------------------------- input layer
    def _on_layers_changed(self, *_: Any) -> None:
        self.layer_combo.refresh()
        self.event_combo.refresh()

    def _on_layer_changed(self, *_: Any) -> None:
        layer = self.layer_combo.current_layer()
        self.axes_combo.blockSignals(True)
        self.axes_combo.clear()
        for axes in axes_choices(layer) if layer is not None else []:
            self.axes_combo.addItem(AXES_TEXT.get(axes, axes), axes)
        self.axes_combo.setEnabled(self.axes_combo.count() > 1)
        self.axes_combo.blockSignals(False)
        self._on_axes_changed()
        self.run_button.setEnabled(layer is not None or self.worker is not None)

    def _on_axes_changed(self, *_: Any) -> None:
        layer, axes = self.layer_combo.current_layer(), self.axes_combo.currentData()
        self.channel_combo.clear()
        if layer is not None and axes:
            for label, index in channel_choices(layer, axes):
                self.channel_combo.addItem(label, index)
        self.channel_combo.setEnabled(self.channel_combo.count() > 1)
        self._update_z_hint()

    def _z(self) -> ZInfo | None:
        layer, axes = self.layer_combo.current_layer(), self.axes_combo.currentData()
        if layer is None or not axes:
            return None
        return z_info(layer, axes, self.z_step.value(), self.z_unit.currentText())

    def _update_z_hint(self, *_: Any) -> None:
        self.z_unit.setEnabled(self.z_step.value() > 0)
        z = self._z()
        self.z_hint.setText("" if z is None else z.text)

    # ---------------------------------------------------------------------------- pairs
    def selected_images(self) -> list[Layer]:
        """The selected single images (2-D, gray or RGB) of one shape, in layer-list order; [] otherwise."""
        chosen = [layer for layer in self.viewer.layers if layer in self.viewer.layers.selection]
        images = [layer for layer in chosen if isinstance(layer, napari.layers.Image) and not is_result(layer)
                  and not layer.multiscale and layer.ndim == 2]
        if len(images) < 2 or len(images) != len(chosen):
            return []
        shapes = {(tuple(layer.data.shape), bool(layer.rgb)) for layer in images}
        return images if len(shapes) == 1 else []

    def _on_selection_changed(self, *_: Any) -> None:
        images = self.selected_images()
        self.pair_button.setEnabled(bool(images) and not self.running)
        self.pair_button.setVisible(bool(images))
        self.pair_button.setText(f"Fuse {len(images)} selected images" if images else "Fuse selected images")

    def fuse_selected_images(self) -> None:
        """Stack the selected images into a new layer (a pair or group of sources) and fuse it."""
        images = self.selected_images()
        if not images or self.running:
            return
        first = images[0]
        data = np.stack([np.asarray(layer.data) for layer in images])
        name = " + ".join(layer.name for layer in images)
        kwargs: dict[str, Any] = {"rgb": bool(first.rgb), "scale": [1.0, *first.scale],
                                  "translate": [0.0, *first.translate], "name": name}
        if not first.rgb:
            kwargs["contrast_limits"] = tuple(first.contrast_limits)
        stack_layer = self.viewer.add_image(data, **kwargs)
        self.layer_combo.refresh()
        self.layer_combo.set_current_layer(stack_layer)
        self.run()

    # ---------------------------------------------------------------------------- running
    @property
    def running(self) -> bool:
        return self.worker is not None

    def _on_run_clicked(self) -> None:
        if self.running:
            self.cancel()
        else:
            self.run()

    def make_job(self) -> FusionJob:
        """Capture the current settings and input (raises StackMFFError on bad input)."""
        layer, axes = self.layer_combo.current_layer(), self.axes_combo.currentData()
        if layer is None or not axes:
            raise StackMFFError("Open or choose a focal-stack layer first.")
        method, weights = self.methods.selection()
        method = resolve_method(method)  # "auto" -> the method that will run, so the status can name it
        if method in registry.model_names() and weights is None and registry.shipped_weights(method) is None:
            raise StackMFFError(
                f"{method} has no shipped weights yet: choose a weights file (…), pick a model you trained "
                "(Train a focus model), or use a classical method.")
        z = self._z()
        assert z is not None
        events = self.event_combo.current_layer() if self.event_combo.isEnabled() else None
        stack = layer_stack(layer, axes, z, events=None if events is None else events.data)
        return FusionJob(
            layer=layer, source_id=source_key(layer), axes=axes, stack=stack, z=z, method=method, weights=weights,
            device=self.device_combo.currentText(), channel=self.channel_combo.currentData(),
            window=self.window_spin.value(), tile=self.tile_spin.value() or None,
            denoise=self.denoise_check.isChecked(), decision=self.decision_combo.currentData(),
            runtime=self.runtime_combo.currentData() if self.runtime_combo.isEnabled() else "torch",
            align=self.align_combo.currentData(),
            blend=self.blend_combo.currentData(),
            outputs=OutputOptions(confidence=self.confidence_check.isChecked(), surface=self.surface_check.isChecked(),
                                  surface_min_confidence=self.surface_conf.value()),
            cancel=threading.Event())

    def run(self) -> None:
        """Start fusion of the current layer in a worker thread."""
        if self.running:
            return
        try:
            job = self.make_job()
        except StackMFFError as exc:
            self._fail(str(exc))
            return
        self._save_settings()
        self.restored_row.setVisible(False)  # said once; running with them accepts them
        self.run_button.setText("Cancel")
        self.progress_bar.setRange(0, 0)
        self.status.setText(f"{self._doing(job)}…")
        self.align_info.setVisible(False)
        self._pbar = napari_progress(total=0, desc=f"Fusing {job.layer.name}")
        self.job = job
        self.worker = run_in_thread(run_job, job, on_message=self._on_progress, on_returned=self._on_returned,
                                    on_errored=self._on_errored, on_finished=self._on_finished)

    def cancel(self) -> None:
        """Ask the running fusion to stop; it ends within one slice or tile, adding nothing."""
        if self.job is not None:
            self.job.cancel.set()
            self.status.setText("Cancelling…")
            self.run_button.setEnabled(False)

    @staticmethod
    def _doing(job: FusionJob) -> str:
        return f"Fusing {job.layer.name} with {job.method}"

    def _on_progress(self, message: tuple[FusionJob, int, int, str]) -> None:
        job, done, total, text = message
        if job is not self.job:
            return  # a late message from a run that has already ended
        self.progress_bar.setRange(0, max(total, 1))
        self.progress_bar.setValue(done)
        self.progress_bar.setFormat("%v / %m")  # the words go to the status line, which wraps
        if not job.cancel.is_set():
            self.status.setText(f"{self._doing(job)}: {text}")  # the core's latest message, as it is
        pbar = self._pbar  # napari's progress may process events: keep our own reference
        if pbar is not None:
            if pbar.total != total:
                pbar.total = total
            pbar.set_description(text)
            pbar.update(done - pbar.n)

    def _on_returned(self, result: FusionResult) -> None:
        job = self.job
        if job is None or job.cancel.is_set():
            return  # cancelled after the last check: drop the result, as promised
        self.last_result = result
        first = not any(is_result(layer) for layer in self.viewer.layers)
        self.result_layers = show_result(self.viewer, job.layer, job.source_id, job.axes, result, job.outputs,
                                         job.z.positions)
        if first:
            self.viewer.reset_view()  # fit the canvas once; later re-runs keep the user's zoom and pan
        self.retouch.set_source(RetouchSource(layer=job.layer, source_id=job.source_id, axes=job.axes, stack=job.stack,
                                              result=result, outputs=job.outputs, z_positions=job.z.positions),
                                self.result_layers)
        self.result_layers = self.retouch.layers
        self.retouch.setVisible(True)
        self._tilt_once()
        took = result.timings.get("total_s", 0.0)
        note = " (3-D surface: single time points only)" if job.outputs.surface and result.n_times > 1 else ""
        self.status.setText(f"Done: {job.layer.name} fused with {result.method} in {took:.1f} s{note}.")
        auto = bool(result.alignment) and "auto" in result.alignment[0]  # "auto: slices move up to ... -> ..."
        self.align_info.setText(("Align " if auto else "Aligned: ") + summary(result.alignment)
                                if result.alignment else "")
        self.align_info.setVisible(bool(result.alignment))
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        self.progress_bar.setFormat("done")

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, FusionCancelled):
            self.status.setText("Cancelled: no layers were added or changed.")
            show_info("Fusion cancelled.")
        else:
            self._fail(user_message(exc))
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("")

    def _fail(self, message: str) -> None:
        self.status.setText(message)
        show_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self.job = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.run_button.setText("Fuse")
        self.run_button.setEnabled(self.layer_combo.current_layer() is not None)

    def _tilt_once(self, *_: Any) -> None:
        """The first time our height surface is shown in 3-D, look at it obliquely (top-down hides the
        relief); once only, so the user's own camera is never taken away again."""
        surface = self.result_layers.get("surface")
        if (self._tilted or self.viewer.dims.ndisplay != 3 or surface is None or not surface.visible
                or surface not in self.viewer.layers):
            return
        self._tilted = True
        oblique_view(self.viewer.scene.camera)

    def _teardown(self) -> None:
        if self.job is not None:
            self.job.cancel.set()
        self.retouch.teardown()
        try:
            self._disconnect()
            self.viewer.dims.events.ndisplay.disconnect(self._tilt_once)
            self.viewer.layers.selection.events.changed.disconnect(self._on_selection_changed)
        except Exception:  # the viewer may be gone already
            pass
